"""The executor interface: owns workers and their shards, runs visits, moves state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelhopper._vocabulary import Step
from modelhopper.data._sharding import ShardInfo
from modelhopper.estimator import PassResult

__all__ = [
    "BaseExecutor",
    "State",
    "StateRef",
    "StepOutcome",
    "VisitResult",
    "VisitTask",
    "state_bytes",
    "state_nbytes",
]


class StateRef(ABC):
    """An MST's serialised state held by the executor, not by the driver.

    Executors whose workers pass state to each other directly (Ray's object
    store, files in shared memory) hand the driver this reference instead of
    the bytes: the next visit gets the reference, and the bytes go worker to
    worker. The driver fetches them only to write a checkpoint.
    """

    nbytes: int
    lost_with_worker: bool = True  # a Ray object dies with its node: record it at once

    @abstractmethod
    def fetch(self) -> bytes:
        """The state's bytes, copied to the caller."""


State = bytes | StateRef


def state_nbytes(state: State) -> int:
    return state.nbytes if isinstance(state, StateRef) else len(state)


def state_bytes(state: State) -> bytes:
    return state.fetch() if isinstance(state, StateRef) else state


@dataclass(frozen=True)
class VisitTask:
    """One MST's visit to one worker.

    ``state`` is the MST's serialised state, or None when the worker must build
    the MST fresh (``fresh``) or already holds its latest state (no hop needed).
    """

    mst_id: int
    params: dict[str, Any]
    seed: int
    steps: tuple[Step, ...]
    state: State | None
    fresh: bool
    init_state: State | None = None  # a fresh MST's starting weights (a warm-started clone)


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    result: PassResult


@dataclass(frozen=True)
class VisitResult:
    worker: int
    mst_id: int
    outcomes: tuple[StepOutcome, ...] = ()
    state: State | None = None
    error: str | None = None  # set when the MST failed during this visit
    crashed: bool = False  # the worker died mid-visit (it was replaced); re-run the visit
    state_lost: bool = False  # with crashed: the state this visit got is gone; reload it
    traceback: str | None = None
    state_seconds: float = 0.0  # time spent (de)serialising state on the worker
    busy_seconds: float = 0.0  # the whole visit on the worker, state handling included
    extra: dict[str, Any] = field(default_factory=dict)


class BaseExecutor(ABC):
    """Runs visits on ``n_workers`` workers, worker ``w`` owning shard ``w``."""

    def prepare(self, n_workers: int) -> None:  # noqa: B027 - optional, most need nothing
        """Called before the data is sharded: begin slow start-up work (no shard exists yet)."""

    def build_shards(self, builds: Sequence[Callable[[], Any]]) -> list[Any] | None:
        """Run shard builds (one per shard, each writes its shard's files) in parallel
        where the workers can read what they write; None leaves them to the driver,
        which runs them in threads (a local executor shares the driver's disk)."""
        return None

    @abstractmethod
    def start(self, shards: Sequence[ShardInfo], factory: Callable[..., Any]) -> None:
        """Start one worker per shard; each opens only its own shard."""

    @abstractmethod
    def submit(self, worker: int, task: VisitTask) -> None:
        """Hand a visit to an idle worker."""

    @abstractmethod
    def wait(self) -> list[VisitResult]:
        """Block until at least one submitted visit finishes; return all that have."""

    def poll(self) -> list[VisitResult]:
        """The visits finished by now, without waiting (none if the executor cannot tell
        cheaply): the driver hands those workers their next visit while it records."""
        return []

    @abstractmethod
    def shutdown(self) -> None:
        """Stop the workers; idempotent."""

    @property
    @abstractmethod
    def resident_shard_bytes(self) -> list[int]:
        """Bytes of shard data each worker holds."""

    def __enter__(self) -> BaseExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
