"""The outcome of a run: every MST with its metrics, history and trained state."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from torch import nn

from modelhopper._pareto import Constraint, pareto_front
from modelhopper._ranking import best_epoch, ranked
from modelhopper._vocabulary import MSTStatus, RunStats
from modelhopper.errors import ModelHopperError
from modelhopper.estimator import build_estimator, state_from_bytes

if TYPE_CHECKING:
    from modelhopper.store import BaseStore

__all__ = ["MSTStatus", "MSTResult", "RunStats", "Result"]


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
        estimator.start_from(state_from_bytes(path.read_bytes()))  # weights, no optimizer
        model = estimator.model
        if hasattr(model, "eval"):
            model.eval()
        return model


# train_seconds is a metric (a cost objective); eval_seconds only a record.
_NOT_METRICS = {"mst_id", "epoch", "train_order", "eval_order", "eval_seconds"}


def _metrics_of(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in _NOT_METRICS}


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
    # metric -> "maximize"/"minimize"; empty: the one objective is ``metric``
    objectives: dict[str, str] = field(default_factory=dict)
    constraints: list[str] = field(default_factory=list)  # "metric <= number", ...

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def pareto_front(self) -> list[MSTResult]:
        """The MSTs no other MST beats on every objective (the run's ``objectives``, or its
        one ``metric``), among those meeting every constraint; metrics at each MST's last
        epoch, as ``best`` ranks. In the order of ``modelhopper._pareto`` (spread-out
        trade-offs first, then lower id). With one objective: the best MST and its ties.
        """
        return pareto_front(
            self.msts, lambda m: m.metrics, lambda m: m.id,
            self.objectives or {self.metric: self.direction},
            [Constraint.parse(c) for c in self.constraints],
        )  # fmt: skip

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
