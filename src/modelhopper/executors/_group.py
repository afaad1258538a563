"""The collective a data-parallel group of workers sums its gradients through.

One ``torch.distributed`` process group (gloo: CPU tensors) per group visit, made from
the visit's rendezvous file and gone when the visit ends, so workers need no process
group of their own between visits and a group may be any set of workers.

A member that dies or fails mid-epoch closes its connections: the others' next
all-reduce fails at once. One that dies or fails before it joins would leave the others
waiting: they first check in through the file and wait, polling, until every member
has, or until the driver, told of the loss, writes the group's abort file (``abort``).
Either wait ends at ``timeout_seconds``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["GroupAbortedError", "GroupSpec", "abort", "group_channel"]

_POLL_SECONDS = 0.005


class GroupAbortedError(RuntimeError):
    """A member of the group was lost before every member had joined."""


def abort(rendezvous: str) -> None:
    """Tell the members still waiting to join a group that it will not form."""
    with open(f"{rendezvous}.abort", "w"):
        pass


@dataclass(frozen=True)
class GroupSpec:
    """A visit's place in a data-parallel group: the members (workers, leader first), this
    member's rank among them, and the file the members meet through."""

    members: tuple[int, ...]
    rank: int
    rendezvous: str
    timeout_seconds: float = 300.0

    @property
    def size(self) -> int:
        return len(self.members)


class _Channel:
    def __init__(self, group: Any) -> None:
        self._group: Any = group  # a gloo backend; its stubs do not name allreduce
        self.seconds = 0.0  # spent in all-reduce, waits for slower members included

    def all_reduce(self, tensor: torch.Tensor) -> None:
        if self._group is None:
            raise RuntimeError("the group's visit has ended")
        started = time.perf_counter()
        self._group.allreduce([tensor]).wait()
        self.seconds += time.perf_counter() - started


@contextlib.contextmanager
def group_channel(spec: GroupSpec) -> Iterator[_Channel]:
    """Join the group (every member must, within the timeout) for the block's duration."""
    timeout = datetime.timedelta(seconds=spec.timeout_seconds)
    store = dist.FileStore(spec.rendezvous, spec.size)
    _check_in(store, spec)
    group = dist.ProcessGroupGloo(store, spec.rank, spec.size, timeout)
    channel = _Channel(group)
    del group
    try:
        yield channel
    finally:
        channel._group = None  # its last reference: closes its connections, so members
        # still waiting on this one fail at once rather than at the timeout


def _check_in(store: dist.Store, spec: GroupSpec) -> None:
    """Wait until every member has arrived, unless the group is aborted first."""
    store.add("arrived", 1)
    deadline = time.monotonic() + spec.timeout_seconds
    while store.add("arrived", 0) < spec.size:
        if os.path.exists(f"{spec.rendezvous}.abort"):
            raise GroupAbortedError("a member of the data-parallel group was lost before it joined")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the data-parallel group's members did not all join within "
                f"{spec.timeout_seconds} s"
            )
        time.sleep(_POLL_SECONDS)
