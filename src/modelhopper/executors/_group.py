"""The collective a data-parallel group of workers sums its gradients through.

One channel per group visit, made from the visit's rendezvous file and gone when the
visit ends, so workers need no process group of their own between visits and a group
may be any set of workers. Members on one host (``shared_memory``) sum through shared
memory: each writes its tensor to its own slot and adds everyone's, in rank order, so
every member gets the same bits (0.1 ms for 100,000 floats between two busy processes,
where gloo's loopback TCP takes 1.3 ms: measured, 2 cores). Otherwise a
``torch.distributed`` gloo process group.

The rendezvous is a file every member can reach (LocalExecutor: ``torch.distributed``'s
FileStore), or ``tcp://host:port``, a TCPStore the driver serves (``GroupHost``; Ray,
whose members may be on other machines). A member that dies or fails mid-epoch closes
its connections (gloo): the others' next all-reduce fails at once. One that dies or
fails before it joins, or while others wait on its slot in shared memory, would leave
them waiting: they poll until every member has arrived, or until the driver, told of
the loss, aborts the group (``abort``: a file beside the rendezvous, or a key in the
served store). Any wait ends at ``timeout_seconds``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from modelhopper.errors import MSTFailedError

__all__ = [
    "GROUP_UNSUPPORTED",
    "GroupAbortedError",
    "GroupHost",
    "GroupSpec",
    "GroupUnsupportedError",
    "abort",
    "group_channel",
]

# A failed visit's ``extra`` key: its MST's estimator cannot train in a group at all.
GROUP_UNSUPPORTED = "group_unsupported"

_POLL_SECONDS = 0.005
_TCP = "tcp://"
_ABORT = "abort"


class GroupAbortedError(RuntimeError):
    """A member of the group was lost before every member had joined."""


class GroupUnsupportedError(MSTFailedError):
    """The MST's estimator cannot train in a data-parallel group (not a PyTorch Estimator)."""


def abort(rendezvous: str) -> None:
    """Tell the members of a group meeting through a file that it will not go on."""
    with open(f"{rendezvous}.abort", "w"):
        pass


class GroupHost:
    """The store a group's members meet through over TCP, served by the driver."""

    def __init__(self, host: str, timeout_seconds: float = 300.0) -> None:
        timeout = datetime.timedelta(seconds=timeout_seconds)
        self._store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                                    timeout=timeout)  # fmt: skip
        self.rendezvous = f"{_TCP}{host}:{self._store.port}"

    def abort(self) -> None:
        self._store.set(_ABORT, "1")


@dataclass(frozen=True)
class GroupSpec:
    """A visit's place in a data-parallel group: the members (workers, leader first), this
    member's rank among them, and the file the members meet through."""

    members: tuple[int, ...]
    rank: int
    rendezvous: str
    timeout_seconds: float = 300.0
    shared_memory: bool = False  # every member on this host, the rendezvous in memory

    @property
    def size(self) -> int:
        return len(self.members)


class _GlooChannel:
    def __init__(self, group: Any) -> None:
        self._group: Any = group  # a gloo backend; its stubs do not name allreduce
        self.seconds = 0.0  # spent in all-reduce, waits for slower members included

    def all_reduce(self, tensor: torch.Tensor) -> None:
        if self._group is None:
            raise RuntimeError("the group's visit has ended")
        started = time.perf_counter()
        self._group.allreduce([tensor]).wait()
        self.seconds += time.perf_counter() - started


class _SharedMemoryChannel:
    """All-reduce through files in shared memory (``/dev/shm``), members on one x86 host
    (whose stores other cores see in program order: a slot is written before its flag).

    Member ``r`` owns a flag (the number of its last call whose tensor is written) and,
    per tensor shape, a slot of two halves used by alternate calls: a member may write
    call ``i + 2``'s tensor only once every member has written call ``i + 1``'s, so
    after each has read call ``i``'s. One wait per call."""

    def __init__(self, store: dist.Store, spec: GroupSpec) -> None:
        self.seconds = 0.0
        self._store, self._spec = store, spec
        self._calls = 0
        self._files: list[str] = []
        flag = self._create("flag", 8)
        self._flag = np.memmap(flag, dtype=np.int64, mode="r+", shape=(1,))
        self._others = [np.memmap(self._published("flag", r), dtype=np.int64, mode="r",
                                  shape=(1,)) for r in self._other_ranks()]  # fmt: skip
        self._slots: dict[tuple[torch.dtype, int], list[list[torch.Tensor]]] = {}

    def all_reduce(self, tensor: torch.Tensor) -> None:
        started = time.perf_counter()
        slots = self._slots_for(tensor)
        self._calls += 1
        half = self._calls % 2
        slots[self._spec.rank][half].copy_(tensor.reshape(-1))
        self._flag[0] = self._calls
        self._wait(lambda: all(int(f[0]) >= self._calls for f in self._others))
        flat = tensor.view(-1)
        # A GPU tensor is summed on the host, where the slots are, and copied back once.
        total = flat if flat.device.type == "cpu" else torch.empty_like(flat, device="cpu")
        total.copy_(slots[0][half])
        for rank in range(1, self._spec.size):
            total.add_(slots[rank][half])
        if total is not flat:
            flat.copy_(total)
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        for path in self._files:  # mapped by the others already: unlinking keeps them valid
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _slots_for(self, tensor: torch.Tensor) -> list[list[torch.Tensor]]:
        key = (tensor.dtype, tensor.numel())
        if key not in self._slots:
            tag = f"slot-{len(self._slots)}"
            nbytes = 2 * tensor.numel() * tensor.element_size()
            paths = [self._create(tag, nbytes) if r == self._spec.rank else self._published(tag, r)
                     for r in range(self._spec.size)]  # fmt: skip
            self._slots[key] = [_halves(path, tensor) for path in paths]
        return self._slots[key]

    def _create(self, tag: str, nbytes: int) -> str:
        """This member's file for ``tag``, made and announced to the others."""
        path = f"{self._spec.rendezvous}.{tag}.{self._spec.rank}"
        with open(path, "wb") as f:
            f.truncate(nbytes)
        self._files.append(path)
        self._store.set(f"{tag}.{self._spec.rank}", "1")
        return path

    def _published(self, tag: str, rank: int) -> str:
        """Member ``rank``'s file for ``tag``, once it has made it."""
        key = f"{tag}.{rank}"
        self._wait(lambda: self._store.check([key]))
        return f"{self._spec.rendezvous}.{tag}.{rank}"

    def _other_ranks(self) -> list[int]:
        return [r for r in range(self._spec.size) if r != self._spec.rank]

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Spin (yielding the core) until ``ready``; fail if aborted or past the timeout."""
        deadline = time.monotonic() + self._spec.timeout_seconds
        spins = 0
        while not ready():
            spins += 1
            if spins % 1024 == 0:
                _check_not_aborted(self._store, self._spec, deadline)
            os.sched_yield()


def _halves(path: str, like: torch.Tensor) -> list[torch.Tensor]:
    """The two halves of a slot file, as flat tensors of ``like``'s dtype."""
    raw = np.memmap(path, dtype=np.uint8, mode="r+")
    flat = torch.frombuffer(raw, dtype=like.dtype)
    return [flat[: like.numel()], flat[like.numel() :]]


@contextlib.contextmanager
def group_channel(spec: GroupSpec) -> Iterator[_GlooChannel | _SharedMemoryChannel]:
    """Join the group (every member must, within the timeout) for the block's duration."""
    store = _open_store(spec)
    _check_in(store, spec)
    if spec.shared_memory:
        local = _SharedMemoryChannel(store, spec)
        try:
            yield local
        finally:
            local.close()
        return
    timeout = datetime.timedelta(seconds=spec.timeout_seconds)
    channel = _GlooChannel(dist.ProcessGroupGloo(store, spec.rank, spec.size, timeout))
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
        _check_not_aborted(store, spec, deadline)
        time.sleep(_POLL_SECONDS)


def _open_store(spec: GroupSpec) -> dist.Store:
    if not spec.rendezvous.startswith(_TCP):
        return dist.FileStore(spec.rendezvous, spec.size)
    host, port = spec.rendezvous.removeprefix(_TCP).rsplit(":", 1)
    timeout = datetime.timedelta(seconds=spec.timeout_seconds)
    return dist.TCPStore(host, int(port), is_master=False, timeout=timeout)


def _aborted(store: dist.Store, spec: GroupSpec) -> bool:
    if spec.rendezvous.startswith(_TCP):
        return store.check([_ABORT])
    return os.path.exists(f"{spec.rendezvous}.abort")


def _check_not_aborted(store: dist.Store, spec: GroupSpec, deadline: float) -> None:
    if _aborted(store, spec):
        raise GroupAbortedError("a member of the data-parallel group was lost")
    if time.monotonic() > deadline:
        raise TimeoutError(
            f"the data-parallel group's members did not all answer within {spec.timeout_seconds} s"
        )
