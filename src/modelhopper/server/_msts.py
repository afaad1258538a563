"""MST summaries for the dashboard: best and last metric, choosing, filtering, sorting.

Plain functions over plain data (no store), so they are tested without a database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from modelhopper._pareto import Constraint, pareto_front
from modelhopper._ranking import best_epoch, ranked

__all__ = [
    "MST_SORT_KEYS",
    "MSTSummary",
    "choose",
    "finite",
    "mark_pareto_front",
    "page_msts",
    "spread",
    "summarise",
]

MST_SORT_KEYS = ("mst_id", "status", "epochs", "last", "best", "priority", "parent")


@dataclass
class MSTSummary:
    mst_id: int
    params: dict[str, Any]
    status: str
    parent: int | None
    warm_start: bool
    priority: int
    n_epochs: int
    epochs_done: int = 0
    last: float | None = None  # the run's metric at the last epoch
    best: float | None = None  # the run's metric at the best epoch
    best_epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # every metric, last epoch
    error: str | None = None
    pareto: bool = False  # on the run's Pareto front (runs with several objectives)


def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def summarise(
    summary: MSTSummary, epochs: dict[int, dict[str, float]], metric: str, maximize: bool
) -> None:
    if not epochs:
        return
    summary.epochs_done = len(epochs)
    last = max(epochs)
    summary.metrics = {k: v for k, v in epochs[last].items() if finite(v) is not None}
    summary.last = finite(epochs[last].get(metric))
    order = sorted(epochs)
    position = best_epoch([epochs[e] for e in order], metric, maximize)
    if position is not None:
        summary.best_epoch = order[position]
        summary.best = finite(epochs[summary.best_epoch].get(metric))


def mark_pareto_front(
    summaries: list[MSTSummary], objectives: dict[str, str], constraints: list[str]
) -> None:
    """Flag the MSTs of the run's Pareto front, as ``Result.pareto_front`` finds it: the
    feasible MSTs with an epoch that no other beats on every objective (last epoch)."""
    for summary in summaries:
        summary.pareto = False
    if len(objectives) < 2:
        return
    bounds = [Constraint.parse(c) for c in constraints]
    for summary in pareto_front(summaries, lambda s: s.metrics, lambda s: s.mst_id,
                                objectives, bounds):  # fmt: skip
        summary.pareto = True


def choose(
    summaries: list[MSTSummary], mst_ids: list[int] | None, top: int, maximize: bool
) -> list[MSTSummary]:
    if mst_ids is not None:
        wanted = set(mst_ids)
        return [s for s in summaries if s.mst_id in wanted][:top]
    # By the value at the last epoch, as Result.best ranks: the same MSTs come first.
    best_first = ranked(summaries, lambda s: s.last, lambda s: s.mst_id, maximize)
    return sorted(best_first[:top], key=lambda s: s.mst_id)


def spread(n: int, max_points: int) -> list[int]:
    """At most ``max_points`` of range(n), evenly spread, with the first and the last."""
    if n <= max_points:
        return list(range(n))
    if max_points == 1:
        return [n - 1]
    step = (n - 1) / (max_points - 1)
    return sorted({round(i * step) for i in range(max_points)})


def page_msts(
    summaries: list[MSTSummary],
    *,
    status: str | None,
    query: str | None,
    sort: str,
    descending: bool,
    offset: int,
    limit: int,
) -> tuple[int, list[MSTSummary]]:
    """Filter (status, and words each found in "name=value" text), sort, then slice.

    ``sort`` is one of ``MST_SORT_KEYS`` or ``param:<name>``; MSTs without a value
    (no epoch yet, no such param) come last in either order.
    """
    chosen = [s for s in summaries if status is None or s.status == status]
    words = (query or "").lower().split()
    if words:
        chosen = [s for s in chosen if all(w in _search_text(s) for w in words)]
    keyed = [(_sort_value(s, sort), s) for s in chosen]
    present = [(_sortable(v), s.mst_id, s) for v, s in keyed if v is not None]
    present.sort(key=lambda t: t[:2], reverse=descending)
    ordered = [s for *_, s in present] + [s for v, s in keyed if v is None]
    return len(ordered), ordered[offset : offset + limit]


def _search_text(summary: MSTSummary) -> str:
    parts = [f"mst_id={summary.mst_id}", f"status={summary.status}"]
    parts += [f"{k}={v}" for k, v in summary.params.items()]
    return " ".join(parts).lower()


_ATTRIBUTES = {"epochs": "epochs_done"}  # sort keys that are not the field's name


def _sort_value(summary: MSTSummary, sort: str) -> Any:
    if sort.startswith("param:"):
        return summary.params.get(sort.removeprefix("param:"))
    return getattr(summary, _ATTRIBUTES.get(sort, sort))


def _sortable(value: Any) -> tuple[int, Any]:
    """Numbers before text, so params of mixed types still sort."""
    if isinstance(value, bool | int | float):
        return (0, float(value))
    return (1, str(value))
