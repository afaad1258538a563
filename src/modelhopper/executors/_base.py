"""The executor interface: owns workers and their shards, runs visits, moves state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelhopper.data._sharding import ShardInfo
from modelhopper.estimator import PassResult
from modelhopper.scheduling import Step

__all__ = ["BaseExecutor", "VisitTask", "StepOutcome", "VisitResult"]


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
    state: bytes | None
    fresh: bool
    init_state: bytes | None = None  # a fresh MST's starting weights (a warm-started clone)


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    result: PassResult


@dataclass(frozen=True)
class VisitResult:
    worker: int
    mst_id: int
    outcomes: tuple[StepOutcome, ...] = ()
    state: bytes | None = None
    error: str | None = None  # set when the MST failed during this visit
    crashed: bool = False  # the worker died mid-visit (it was replaced); re-run the visit
    traceback: str | None = None
    state_seconds: float = 0.0  # time spent (de)serialising state on the worker
    busy_seconds: float = 0.0  # the whole visit on the worker, state handling included
    extra: dict[str, Any] = field(default_factory=dict)


class BaseExecutor(ABC):
    """Runs visits on ``n_workers`` workers, worker ``w`` owning shard ``w``."""

    @abstractmethod
    def start(self, shards: Sequence[ShardInfo], factory: Callable[..., Any]) -> None:
        """Start one worker per shard; each opens only its own shard."""

    @abstractmethod
    def submit(self, worker: int, task: VisitTask) -> None:
        """Hand a visit to an idle worker."""

    @abstractmethod
    def wait(self) -> list[VisitResult]:
        """Block until at least one submitted visit finishes; return all that have."""

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
