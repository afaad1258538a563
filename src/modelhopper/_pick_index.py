"""One worker's waiting MSTs, indexed so that a scheduling policy's pick costs
O(groups x log n), not a pass over all n (``MOPScheduler``: longest remaining work
first, its default, and oldest first).

A pick takes the MST with the largest (priority, value, -id). MSTs are filed in
*groups* with a *measured part*; within a group the value must not decrease as the
measured part grows, so the group's best is at the top of a heap ordered by
(measured part descending, id ascending).

- Longest remaining work: the value is an MST's remaining work
  (``scheduling._work_left``), a sum over step kinds: a kind it has measured
  contributes its pending steps times its own mean, which stays put while it waits
  (only its own visits change it); a kind it has not measured, its pending steps
  times the mean over all MSTs, which changes at every visit. The group is the
  priority and the pending counts of the unmeasured kinds; the measured part, the
  sum of the measured terms. Rounding can make two different measured parts give the
  same work; for groups where that can happen (``ties``), the pick walks on from the
  top while the work stays equal and keeps the lowest id, as the pass does.
- Oldest first: the value is 1 for an MST whose next step evaluates, else 0; the
  group is the priority and that value, the measured part 0, so each group's top is
  its oldest (lowest id).

Entries are removed lazily: a discarded MST's entry stays in its heap until it
reaches the top or the heaps are compacted; an entry is live while it is the very
object the index holds for its MST.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable

__all__ = ["PickIndex", "file_in"]

_Entry = tuple[float, int]  # (-measured part, mst_id)


def file_in(
    indexes: Iterable[PickIndex], mst_id: int, group: Hashable, measured: float, *, ties: bool
) -> None:
    """File ``mst_id`` in each of ``indexes`` (an MST that waits on several workers: one
    entry, filed in each), replacing any entry it had there. ``ties``: whether an equal
    value can come from different measured parts in this group (see the module)."""
    entry = (-measured, mst_id)
    for index in indexes:
        index._file(entry, group, ties)


class PickIndex:
    """The index of one worker's waiting set (``file_in`` / ``discard`` as it changes)."""

    def __init__(self) -> None:
        self._heaps: dict[Hashable, list[_Entry]] = {}
        self._ties: dict[Hashable, bool] = {}
        self._live: dict[int, _Entry] = {}  # mst_id -> its current entry
        self._n_entries = 0

    def __len__(self) -> int:
        return len(self._live)

    def discard(self, mst_id: int) -> None:
        self._live.pop(mst_id, None)

    def pick(self, value: Callable[[int], float], priority: Callable[[int], int]) -> int | None:
        """The waiting MST with the largest (priority, value, -id), as a pass over all of
        them would choose; ``value`` and ``priority`` give an MST's current ones."""
        best: tuple[int, float, int] | None = None
        for group in list(self._heaps):
            top = self._top(group)
            if top is None:
                continue
            key = (priority(top), value(top), -top)
            if self._ties[group]:
                key = self._walk_ties(group, key, value)
            if best is None or key > best:
                best = key
        return None if best is None else -best[2]

    def _file(self, entry: _Entry, group: Hashable, ties: bool) -> None:
        self._live[entry[1]] = entry
        heapq.heappush(self._heaps.setdefault(group, []), entry)
        self._ties[group] = ties
        self._n_entries += 1
        if self._n_entries > 2 * len(self._live) + 64:
            self._compact()

    def _top(self, group: Hashable) -> int | None:
        """The group's first live MST, dropping discarded entries (and the group, empty)."""
        heap = self._heaps[group]
        while heap and self._live.get(heap[0][1]) is not heap[0]:
            heapq.heappop(heap)
            self._n_entries -= 1
        if heap:
            return heap[0][1]
        del self._heaps[group], self._ties[group]
        return None

    def _walk_ties(
        self, group: Hashable, key: tuple[int, float, int], value: Callable[[int], float]
    ) -> tuple[int, float, int]:
        """From the top down, the lowest id among the entries whose value rounds to the
        top's (the heap is put back as it was, less discarded entries)."""
        heap = self._heaps[group]
        kept = [heapq.heappop(heap)]
        while heap:
            entry = heap[0]
            if self._live.get(entry[1]) is not entry:
                heapq.heappop(heap)
                self._n_entries -= 1
                continue
            if value(entry[1]) != key[1]:
                break
            kept.append(heapq.heappop(heap))
            key = max(key, (key[0], key[1], -entry[1]))
        for entry in kept:
            heapq.heappush(heap, entry)
        return key

    def _compact(self) -> None:
        """Drop every discarded entry (amortised: when they outnumber the live ones)."""
        for group in list(self._heaps):
            heap = [e for e in self._heaps[group] if self._live.get(e[1]) is e]
            if heap:
                heapq.heapify(heap)
                self._heaps[group] = heap
            else:
                del self._heaps[group], self._ties[group]
        self._n_entries = sum(len(h) for h in self._heaps.values())
