"""The outcome of a run: every MST with its metrics, history and trained state."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from torch import nn

from modelhopper._ranking import best_epoch, ranked
from modelhopper.errors import ModelHopperError
from modelhopper.estimator import build_estimator, state_from_bytes

if TYPE_CHECKING:
    from modelhopper.store import BaseStore

__all__ = ["MSTStatus", "MSTResult", "RunStats", "Result"]


class MSTStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class MSTResult:
    id: int
    params: dict[str, Any]
    seed: int
    status: MSTStatus
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    error: str | None = None
    traceback: str | None = None
    checkpoint: Path | None = None  # state after its last recorded visit
    best_checkpoint: Path | None = None  # state evaluated at its best epoch
    _factory: Callable[..., Any] | None = field(default=None, repr=False)

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    @property
    def metrics(self) -> dict[str, float]:
        """Metrics of the last evaluated epoch (empty if none)."""
        return _metrics_of(self.history[-1]) if self.history else {}

    def best_metrics(self, metric: str, maximize: bool) -> dict[str, float]:
        """Metrics of the epoch where ``metric`` was best (earliest of equals; a missing or
        NaN value is never best)."""
        position = best_epoch(self.history, metric, maximize)
        return {} if position is None else _metrics_of(self.history[position])

    def load_model(self, *, best: bool = False) -> nn.Module:
        """The MST's trained model: its latest state, or (``best=True``) its best epoch's."""
        path = self.best_checkpoint if best else self.checkpoint
        if path is None or not path.exists():
            which = "best-epoch" if best else "latest"
            raise ModelHopperError(
                f"MST {self.id} has no {which} checkpoint (status {self.status.value}); "
                "only MSTs that finished a visit (best: an epoch) have one, and "
                "checkpoints='latest' keeps no best one"
            )
        if self._factory is None:
            raise ModelHopperError(f"MST {self.id}: the estimator factory is not available")
        estimator = build_estimator(self._factory, self.params, self.seed)
        state = state_from_bytes(path.read_bytes())
        estimator.model.load_state_dict(state["model"])
        estimator.model.eval()
        return estimator.model


_NOT_METRICS = {"mst_id", "epoch", "train_order", "eval_order", "train_seconds", "eval_seconds"}


def _metrics_of(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in _NOT_METRICS}


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
    def data_copies(self) -> float:
        return sum(self.resident_shard_bytes) / self.dataset_bytes if self.dataset_bytes else 0.0


@dataclass
class Result:
    msts: list[MSTResult]
    metric: str
    direction: str
    run_dir: Path
    stats: RunStats | None  # None while the run has not completed
    name: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    status: str = "completed"

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def best(self) -> MSTResult:
        """The MST with the best value of the metric at its last epoch (ties: lower id).

        The one ranking rule of ``modelhopper._ranking``: the dashboard, ``plot`` and
        ``to_dataframe`` order MSTs the same way. ``best.load_model()`` is the state it
        was ranked by; ``load_model(best=True)``, its best epoch's.
        """
        scored = [m for m in self.msts if m.history]
        if not scored:
            raise ModelHopperError("no MST finished an epoch, so there is no best MST")
        return ranked(scored, lambda m: m.metrics.get(self.metric), lambda m: m.id,
                      self.direction)[0]  # fmt: skip

    def to_dataframe(self) -> pd.DataFrame:
        """One row per MST, best first (as ``best``): params, status, epochs, final metrics
        and the metrics of its best epoch (``best_*``)."""
        rows = []
        order = ranked(self.msts, lambda m: m.metrics.get(self.metric), lambda m: m.id,
                       self.direction)  # fmt: skip
        for mst in order:
            row: dict[str, Any] = {"mst_id": mst.id, "status": mst.status.value}
            row.update({f"param_{k}": v for k, v in mst.params.items()})
            row["epochs"] = mst.epochs_done
            row.update(mst.metrics)
            best = mst.best_metrics(self.metric, self.maximize)
            row.update({f"best_{k}": v for k, v in best.items()})
            row["error"] = mst.error
            rows.append(row)
        return pd.DataFrame(rows)

    def history(self) -> pd.DataFrame:
        """One row per (MST, epoch): metrics, shard orders and seconds."""
        rows = [row for mst in self.msts for row in mst.history]
        return pd.DataFrame(rows)

    def plot(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        metric: str | None = None,
        top: int = 20,
        store: str | BaseStore | None = None,
    ) -> Any:
        """Learning curves of ``metric`` (default: the run's) for the ``top`` best MSTs, and
        the workers' timeline read from ``store`` (default: the default store), as a
        matplotlib ``Figure``; written as a PNG to ``path`` if given. Needs matplotlib."""
        from modelhopper._plot import plot_result

        return plot_result(self, path, metric=metric, top=top, store=store)
