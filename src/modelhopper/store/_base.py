"""The store interface: every experiment, MST, step, epoch, event and command, recorded.

The driver writes each visit's step results, the epochs it completed and the
MST's checkpoint reference in one transaction (``record_visits``, for all the
visits that finished together) before any decision that depends on them, so a
crash loses at most the visits in flight and those not yet committed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from modelhopper._vocabulary import MSTStatus, StepKind

__all__ = [
    "RunStatus",
    "EventKind",
    "CommandStatus",
    "ExperimentRecord",
    "MSTRecord",
    "StepRecord",
    "EpochRecord",
    "EventRecord",
    "CommandRecord",
    "VisitRecord",
    "BaseStore",
]


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"  # the run itself failed (e.g. every MST failed, a worker kept dying)


class EventKind(StrEnum):
    STARTED = "started"
    RESUMED = "resumed"
    HOPPED = "hopped"
    EPOCH_END = "epoch_end"
    MST_COMPLETED = "mst_completed"
    MST_FAILED = "mst_failed"
    MST_STOPPED = "mst_stopped"
    WORKER_RESTARTED = "worker_restarted"
    # Its newest state was lost (with a node) before it was saved: it trains again from
    # its last checkpoint (detail: why, the steps kept).
    MST_ROLLED_BACK = "mst_rolled_back"
    WORKERS_CHANGED = "workers_changed"  # workers joined or left; shards were re-homed
    EPOCH_DECIDED = "epoch_decided"  # the procedure's decision on an epoch is committed
    GROUP_EPOCH = "group_epoch"  # an epoch trained data-parallel by a group (hybrid mode)
    COMMAND = "command"
    COMPLETED = "completed"
    FAILED = "failed"


class CommandStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    REJECTED = "rejected"


@dataclass
class ExperimentRecord:
    name: str
    status: RunStatus
    procedure: str  # class name, e.g. "RandomSearch"
    spec: dict[str, Any]  # the procedure's settings (epochs, metric, direction, n_msts, ...)
    space: dict[str, Any]  # Space.to_dict()
    seed: int
    n_workers: int
    run_dir: str
    provenance: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass
class MSTRecord:
    mst_id: int  # unique within its experiment
    params: dict[str, Any]
    seed: int
    status: MSTStatus  # a plain str is converted
    parent: int | None = None  # the MST this one was cloned from
    warm_start: bool = False  # starts from the parent's latest weights (fresh optimizer)
    priority: int = 0  # higher runs first when several MSTs could use a worker
    n_epochs: int = 0  # the epoch budget currently planned
    checkpoint: str | None = None  # path of the state after its last recorded visit
    best_checkpoint: str | None = None
    error: str | None = None
    traceback: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass
class StepRecord:
    """One sub-epoch (train) or one validation-shard evaluation of one MST."""

    mst_id: int
    epoch: int
    kind: StepKind  # a plain str is converted
    shard: int
    position: int  # index in the epoch's train or eval order
    worker: int
    n: int
    loss_sum: float
    metric_sums: dict[str, float]
    seconds: float
    finished_at: datetime | None = None


@dataclass
class EpochRecord:
    mst_id: int
    epoch: int
    metrics: dict[str, float]  # train_loss, val_loss, train_/val_ + each metric
    train_order: list[int]
    eval_order: list[int]
    train_seconds: float
    eval_seconds: float
    finished_at: datetime | None = None


@dataclass
class VisitRecord:
    """What one finished visit writes: its steps, the epochs it completed, the MST's new
    fields (checkpoint, status...) and events (kind, detail) about this MST."""

    mst_id: int
    steps: list[StepRecord]
    epochs: list[EpochRecord]
    mst_fields: dict[str, Any]
    events: Sequence[tuple[EventKind, dict[str, Any]]] = ()


@dataclass
class EventRecord:
    id: int
    time: datetime
    kind: EventKind
    mst_id: int | None = None
    worker: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CommandRecord:
    id: int
    kind: str  # stop, resume, clone, add, priority (a later issue's CommandKind)
    payload: dict[str, Any]
    status: CommandStatus
    created_at: datetime
    applied_at: datetime | None = None
    message: str | None = None
    new_mst_id: int | None = None  # the MST an applied add or clone command created


class BaseStore(ABC):
    """Metadata of runs. Implementations: ``SQLStore`` (SQLite file, PostgreSQL, ...)."""

    @abstractmethod
    def batch(self) -> AbstractContextManager[None]:
        """``with store.batch():`` the writes inside commit together when it exits, or none
        of them do (an error inside, a crash); a nested batch joins the outer one. The
        driver commits a decision on an epoch and all its effects (MSTs added, budgets,
        statuses) this way, so a resumed run neither loses nor repeats a decision."""

    # -- experiments ---------------------------------------------------------
    @abstractmethod
    def create_experiment(self, record: ExperimentRecord) -> ExperimentRecord:
        """Insert a new experiment; ``StoreError`` if the name is taken."""

    @abstractmethod
    def get_experiment(self, name: str) -> ExperimentRecord:
        """``StoreError`` naming the known runs if there is none by that name."""

    @abstractmethod
    def list_experiments(self) -> list[ExperimentRecord]:
        """Newest first."""

    @abstractmethod
    def set_experiment_status(self, name: str, status: RunStatus) -> None: ...

    # -- MSTs ----------------------------------------------------------------
    @abstractmethod
    def add_msts(self, name: str, msts: list[MSTRecord]) -> None:
        """Insert MSTs; ``StoreError`` if an id already exists in this experiment."""

    @abstractmethod
    def update_mst(self, name: str, mst_id: int, **fields: Any) -> None:
        """Set some of an MST's fields (status, n_epochs, checkpoint, error, ...)."""

    @abstractmethod
    def list_msts(self, name: str) -> list[MSTRecord]:
        """Ordered by mst_id."""

    # -- results -------------------------------------------------------------
    def record_visit(
        self,
        name: str,
        mst_id: int,
        steps: list[StepRecord],
        epochs: list[EpochRecord],
        mst_fields: dict[str, Any],
        events: Sequence[tuple[EventKind, dict[str, Any]]] = (),
    ) -> None:
        """One transaction: a visit's steps, the epochs it completed, the MST's new fields
        (checkpoint, status...) and events (kind, detail) about this MST."""
        self.record_visits(name, [VisitRecord(mst_id, steps, epochs, mst_fields, events)])

    @abstractmethod
    def record_visits(self, name: str, visits: Sequence[VisitRecord]) -> None:
        """One transaction for several visits, in order: all of them are written or none."""

    @abstractmethod
    def list_steps(self, name: str, mst_id: int | None = None) -> list[StepRecord]:
        """Ordered by (mst_id, finish order)."""

    @abstractmethod
    def list_epochs(self, name: str, mst_id: int | None = None) -> list[EpochRecord]:
        """Ordered by (mst_id, epoch)."""

    # -- events and commands -------------------------------------------------
    @abstractmethod
    def add_event(
        self,
        name: str,
        kind: EventKind,
        *,
        mst_id: int | None = None,
        worker: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None: ...

    def add_events(
        self, name: str, events: Sequence[tuple[EventKind, int | None, dict[str, Any]]]
    ) -> None:
        """Several (kind, mst_id, detail) events, in this order, in one transaction."""
        with self.batch():
            for kind, mst_id, detail in events:
                self.add_event(name, kind, mst_id=mst_id, detail=detail)

    @abstractmethod
    def list_events(self, name: str, *, after_id: int = 0) -> list[EventRecord]:
        """Events with id > after_id, oldest first."""

    @abstractmethod
    def add_command(self, name: str, kind: str, payload: dict[str, Any]) -> CommandRecord: ...

    @abstractmethod
    def pending_commands(self, name: str) -> list[CommandRecord]:
        """Oldest first."""

    @abstractmethod
    def list_commands(self, name: str) -> list[CommandRecord]:
        """Every command of the run, with its status and message, oldest first."""

    @abstractmethod
    def set_command_status(
        self,
        command_id: int,
        status: CommandStatus,
        message: str | None = None,
        *,
        new_mst_id: int | None = None,
    ) -> None: ...

    @abstractmethod
    def row_counts(self, name: str) -> dict[str, int]:
        """Rows per table for one experiment (msts, steps, epochs, events, commands)."""

    def close(self) -> None:  # noqa: B027 - a store without connections has nothing to do
        """Release connections; idempotent."""
