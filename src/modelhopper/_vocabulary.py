"""The shared vocabulary: the words every layer speaks, on the ground floor.

An MST and its status, an epoch's result, a procedure's decision, the
direction of a metric, one step of a visit, a run's resource figures, and the
two protocols that join the layers: ``Trainer`` (what a procedure sees of a
running experiment) and ``Procedure`` (what the driver and the runner see of a
procedure). The store, the scheduler, the executors, the driver and the
procedures all import these from here, and this module imports nothing from
modelhopper, so no layer needs one above it. The public names stay where users
know them (``modelhopper.MST``, ``modelhopper.procedures.Decision``,
``modelhopper.result.MSTStatus``, ``modelhopper.scheduling.Step``...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

__all__ = [
    "MST",
    "Decision",
    "Direction",
    "EpochResult",
    "MSTStatus",
    "Procedure",
    "RunStats",
    "SearchSpace",
    "Step",
    "StepKind",
    "Trainer",
]


class Direction(StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


class MSTStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"  # its epoch budget is done; a raised budget revives it
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        """Pending or running: it will train further unless stopped."""
        return self in (MSTStatus.PENDING, MSTStatus.RUNNING)

    @property
    def ended(self) -> bool:
        """Stopped or failed: it trains no further unless resumed."""
        return self in (MSTStatus.STOPPED, MSTStatus.FAILED)


class Decision(StrEnum):
    """What ``on_epoch_end`` may return about the MST that reported."""

    CONTINUE = "continue"  # keep to its epoch budget
    STOP = "stop"  # no more epochs for it


@dataclass(frozen=True)
class MST:
    """A model selection triple: one concrete point of the space, with its id and seed."""

    id: int
    params: dict[str, Any] = field(hash=False)
    seed: int
    parent: int | None = None


@dataclass(frozen=True)
class EpochResult:
    mst_id: int
    epoch: int  # 0-based: the MST has now trained epoch + 1 epochs
    metrics: Mapping[str, float]


class StepKind(StrEnum):
    TRAIN = "train"
    EVAL = "eval"


@dataclass(frozen=True)
class Step:
    """One pass of one MST over one shard: train on it, or evaluate on its validation part."""

    kind: StepKind
    epoch: int
    shard: int
    position: int  # index of this shard in the epoch's train (or eval) order

    def is_last(self, kind: StepKind, n_shards: int) -> bool:
        """Whether this is the epoch's last step of ``kind``: the last training step ends
        the epoch's training (its state is what the epoch evaluates), the last
        evaluation ends the epoch."""
        return self.kind is kind and self.position == n_shards - 1


@dataclass(frozen=True)
class RunStats:
    """Resource figures of a run, measured, not estimated."""

    n_workers: int
    wall_seconds: float  # from the first visit dispatched to the last result
    total_seconds: float  # including sharding and worker start-up
    compute_seconds: float  # sum of train + eval step seconds measured on the workers
    n_visits: int
    n_hops: int  # visits that needed an MST's state moved to another worker
    hop_bytes: int  # bytes of MST state delivered to workers by those hops
    resident_shard_bytes: tuple[int, ...]  # shard bytes held by each worker
    dataset_bytes: int  # training + validation bytes of the dataset
    lower_bound_seconds: float  # makespan lower bound from the measured work
    n_steps: int = 0  # train and eval steps run (sub-epochs and validation-shard passes)
    record_seconds: float = 0.0  # driver time checkpointing and writing the store
    # Driver time from results arriving to the freed workers' next visits being sent: the
    # only driver work a worker waits for (records are written after that).
    dispatch_seconds: float = 0.0
    startup_seconds: float = 0.0  # starting the workers until each had opened its shard
    # Shard bytes sent to the workers' machines (RayExecutor: shipped by the driver or
    # copied between actors, validation parts included); 0 where they read them in place.
    shard_bytes_moved: int = 0
    # The workers' seconds in visits: compute plus each visit's fixed costs (building
    # the model, loading and encoding its state). workers x wall - busy is time workers
    # waited for a visit (the holder of an MST's next shard busy, the driver deciding).
    busy_seconds: float = 0.0

    @property
    def dispatch_seconds_per_visit(self) -> float:
        return self.dispatch_seconds / self.n_visits if self.n_visits else 0.0

    @property
    def record_seconds_per_step(self) -> float:
        return self.record_seconds / self.n_steps if self.n_steps else 0.0

    @property
    def ideal_seconds(self) -> float:
        return self.compute_seconds / self.n_workers

    @property
    def efficiency(self) -> float:
        return self.ideal_seconds / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def busy_share(self) -> float:
        """The share of the workers' time (workers x wall) spent in visits; efficiency is
        the share spent computing, so busy_share - efficiency is the visits' fixed costs."""
        available = self.n_workers * self.wall_seconds
        return self.busy_seconds / available if available else 0.0

    @property
    def data_copies(self) -> float:
        return sum(self.resident_shard_bytes) / self.dataset_bytes if self.dataset_bytes else 0.0


class Trainer(Protocol):
    """What a procedure can see and do in a running experiment."""

    @property
    def n_workers(self) -> int: ...

    def add(
        self,
        params: Mapping[str, Any],
        *,
        epochs: int,
        parent: int | None = None,
        warm_start: bool = False,
    ) -> MST:
        """Start a new MST with this epoch budget. ``warm_start`` initialises its model
        weights from ``parent``'s latest state (its optimizer starts afresh)."""

    def extend(self, mst_id: int, epochs: int) -> None:
        """Raise an MST's epoch budget to ``epochs`` (a promotion); it continues at once."""

    def stop(self, mst_id: int) -> None:
        """Give the MST no more epochs."""

    def msts(self) -> list[MST]:
        """Every MST of the run, in id order."""

    def status(self, mst_id: int) -> MSTStatus:
        """Pending, running, completed (its budget is done; ``extend`` revives it),
        stopped or failed."""

    def active(self) -> list[int]:
        """Ids of the pending and running MSTs (``status(i).active`` for each of
        ``msts()``, without asking MST by MST)."""

    def budget(self, mst_id: int) -> int:
        """The MST's current epoch budget."""

    def results(self, mst_id: int | None = None) -> list[EpochResult]:
        """Evaluated epochs, of one MST or all, in the order they were evaluated."""


class SearchSpace(Protocol):
    """What the runner needs of a procedure's space (``modelhopper.Space`` is one)."""

    def validate_point(self, params: Mapping[str, Any]) -> dict[str, Any]: ...

    def sample(self, rng: np.random.Generator) -> dict[str, Any]: ...

    def to_dict(self) -> dict[str, Any]: ...


class Procedure(Protocol):
    """What the driver and the runner see of a procedure (``BaseProcedure`` is one)."""

    @property
    def make_estimator(self) -> Callable[[dict[str, Any]], Any]: ...

    @property
    def space(self) -> SearchSpace: ...

    @property
    def epochs(self) -> int: ...

    @property
    def metric(self) -> str: ...

    @property
    def direction(self) -> Direction: ...

    @property
    def seed(self) -> int: ...

    @property
    def policy(self) -> str:
        """A SchedulingPolicy value."""

    def settings(self) -> dict[str, Any]: ...

    def required_metrics(self) -> list[str]:
        """Every metric the procedure ranks or constrains by (each run must report it)."""

    def on_start(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> Decision: ...

    def on_idle(self, trainer: Trainer, n_idle: int) -> None: ...

    def decides_on_epochs(self) -> bool: ...

    def make_mst(
        self, mst_id: int, params: Mapping[str, Any], parent: int | None = None
    ) -> MST: ...
