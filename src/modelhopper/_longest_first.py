"""One worker's waiting MSTs, indexed so that picking the one with the longest remaining
work first costs O(groups x log n), not O(n) (``MOPScheduler``'s default policy).

An MST's remaining work (``scheduling._work_left``) is a sum over step kinds: a kind
it has measured contributes its pending steps times its own mean, which stays put
while it waits (only its own visits change it); a kind it has not measured, its
pending steps times the mean over all MSTs, which changes at every visit. The caller
therefore files each MST under a *group* (its priority and the pending counts of its
unmeasured kinds) with its *measured part*: within a group the unmeasured terms are
equal, so the work is a non-decreasing function of the measured part, and the group's
longest is at the top of a heap ordered by (measured part descending, id ascending).
Rounding can make two different measured parts give the same work; for groups where
that can happen (``ties``), the pick walks on from the top while the work stays equal
and keeps the lowest id, which is what the plain pick over all waiting MSTs takes.

Entries are removed lazily: a discarded MST's entry stays in its heap until it
reaches the top or the heaps are compacted.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable

__all__ = ["LongestFirst", "file_in"]

_Entry = tuple[float, int, int]  # (-measured part, mst_id, token)
_tokens = itertools.count(1)


def file_in(
    indexes: Iterable[LongestFirst], mst_id: int, group: Hashable, measured: float, *, ties: bool
) -> None:
    """File ``mst_id`` in each of ``indexes`` (an MST that waits on several workers: one
    entry, one token, filed in each)."""
    entry = (-measured, mst_id, next(_tokens))
    for index in indexes:
        index._file(entry, group, ties)


class LongestFirst:
    """The index of one worker's waiting set (``add`` / ``discard`` as it changes)."""

    def __init__(self) -> None:
        self._heaps: dict[Hashable, list[_Entry]] = {}
        self._ties: dict[Hashable, bool] = {}
        self._live: dict[int, int] = {}  # mst_id -> the token of its current entry
        self._n_entries = 0

    def __len__(self) -> int:
        return len(self._live)

    def add(self, mst_id: int, group: Hashable, measured: float, *, ties: bool) -> None:
        """File ``mst_id`` (replacing any entry it had). ``ties``: whether equal work can
        come from different measured parts in this group (see the module)."""
        file_in((self,), mst_id, group, measured, ties=ties)

    def discard(self, mst_id: int) -> None:
        self._live.pop(mst_id, None)

    def pick(self, work: Callable[[int], float], priority: Callable[[int], int]) -> int | None:
        """The waiting MST with the largest (priority, work, -id), as a pass over all of
        them would choose; ``work`` and ``priority`` give an MST's current values."""
        best: tuple[int, float, int] | None = None
        for group in list(self._heaps):
            top = self._top(group)
            if top is None:
                continue
            key = (priority(top), work(top), -top)
            if self._ties[group]:
                key = self._walk_ties(group, key, work)
            if best is None or key > best:
                best = key
        return None if best is None else -best[2]

    def _file(self, entry: _Entry, group: Hashable, ties: bool) -> None:
        self._live[entry[1]] = entry[2]
        heapq.heappush(self._heaps.setdefault(group, []), entry)
        self._ties[group] = ties
        self._n_entries += 1
        if self._n_entries > 2 * len(self._live) + 64:
            self._compact()

    def _top(self, group: Hashable) -> int | None:
        """The group's first live MST, dropping discarded entries (and the group, empty)."""
        heap = self._heaps[group]
        while heap and self._live.get(heap[0][1]) != heap[0][2]:
            heapq.heappop(heap)
            self._n_entries -= 1
        if heap:
            return heap[0][1]
        del self._heaps[group], self._ties[group]
        return None

    def _walk_ties(
        self, group: Hashable, key: tuple[int, float, int], work: Callable[[int], float]
    ) -> tuple[int, float, int]:
        """From the top down, the lowest id among the entries whose work rounds to the
        top's (the heap is put back as it was, less discarded entries)."""
        heap = self._heaps[group]
        kept = [heapq.heappop(heap)]
        while heap:
            entry = heap[0]
            if self._live.get(entry[1]) != entry[2]:
                heapq.heappop(heap)
                self._n_entries -= 1
                continue
            if work(entry[1]) != key[1]:
                break
            kept.append(heapq.heappop(heap))
            key = max(key, (key[0], key[1], -entry[1]))
        for entry in kept:
            heapq.heappush(heap, entry)
        return key

    def _compact(self) -> None:
        """Drop every discarded entry (amortised: when they outnumber the live ones)."""
        for group in list(self._heaps):
            heap = [e for e in self._heaps[group] if self._live.get(e[1]) == e[2]]
            if heap:
                heapq.heapify(heap)
                self._heaps[group] = heap
            else:
                del self._heaps[group], self._ties[group]
        self._n_entries = sum(len(h) for h in self._heaps.values())
