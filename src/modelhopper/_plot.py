"""``Result.plot``: learning curves and the workers' timeline as a matplotlib figure (PNG).

matplotlib is imported here, lazily: the rest of modelhopper does not need it.
The object-oriented API (``Figure``) is used, not pyplot, so no backend or global
state is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from modelhopper._checks import check_int
from modelhopper._ranking import ranked
from modelhopper.errors import ConfigError, ModelHopperError
from modelhopper.store import DEFAULT_ROOT, BaseStore, EventKind, open_store
from modelhopper.store._timeline import derive_hops, visits_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_result"]


class _Run(Protocol):
    """What is drawn of a ``Result`` (this module sits below ``result``)."""

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def metric(self) -> str: ...

    @property
    def direction(self) -> str: ...

    @property
    def msts(self) -> Sequence[Any]:
        """MSTResults: id, params, history, metrics."""


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ConfigError(
            "Result.plot needs matplotlib, which is not installed; install it with: "
            "pip install matplotlib"
        ) from e
    return Figure


def plot_result(
    result: _Run,
    path: str | os.PathLike[str] | None = None,
    *,
    metric: str | None = None,
    top: int = 20,
    store: str | BaseStore | None = None,
) -> Figure:
    """Curves of ``metric`` for the ``top`` best MSTs, above the workers' timeline."""
    check_int("top", top, example="top=20")
    metric = metric or result.metric
    known = {k for m in result.msts for row in m.history for k in row}
    if result.msts and any(m.history for m in result.msts) and metric not in known:
        names = sorted(k for k in known if k.startswith(("train_", "val_")))
        raise ConfigError(f"metric {metric!r} is not recorded for this run; it has {names}")
    figure = _figure_class()(figsize=(11, 7.5), layout="constrained")
    curves, timeline = figure.subplots(2, 1, height_ratios=(3, 2))
    _draw_curves(curves, result, metric, top)
    _draw_timeline(timeline, result, store)
    figure.suptitle(f"run {result.name or '?'} ({result.status})")
    if path is not None:
        figure.savefig(Path(path), dpi=110, format="png")
    return figure


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _draw_curves(ax: Any, result: _Run, metric: str, top: int) -> None:
    # Ranked as Result.best ranks (the metric at the last epoch), so the top curves are
    # the MSTs the result and the dashboard call best.
    drawn = [m for m in result.msts if any(_finite(r.get(metric)) for r in m.history)]
    best_first = ranked(drawn, lambda m: m.metrics.get(metric), lambda m: m.id, result.direction)
    for mst in best_first[:top]:
        rows = [r for r in mst.history if _finite(r.get(metric))]
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in mst.params.items())  # fmt: skip
        ax.plot([r["epoch"] + 1 for r in rows], [r[metric] for r in rows],
                marker="o" if len(rows) < 30 else None, markersize=3, linewidth=1.3,
                label=f"MST {mst.id}: {params}")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    shown = min(top, len(drawn))
    ax.set_title(f"{metric}: the best {shown} of {len(result.msts)} MSTs")
    ax.grid(alpha=0.3)
    if 0 < shown <= 12:
        ax.legend(fontsize=7, loc="best")


def _draw_timeline(ax: Any, result: _Run, store: str | BaseStore | None) -> None:
    try:
        steps, hops = _load_steps(result.name, store)
    except ModelHopperError as e:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"no timeline: {e}", ha="center", va="center", wrap=True, fontsize=8)
        return
    visits = visits_of(sorted(steps, key=lambda s: s.finished_at))
    for visit in visits:
        visit["hop"] = hops.get((visit["mst_id"], visit["end"]))
    derive_hops(visits)  # runs recorded before visits' events said whether they hopped
    if not visits:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no sub-epoch recorded yet", ha="center", va="center")
        return
    origin = min(v["end"].timestamp() - v["seconds"] for v in visits)
    end = max(v["end"].timestamp() for v in visits) - origin
    workers = sorted({v["worker"] for v in visits})
    busy = {w: 0.0 for w in workers}
    for visit in visits:
        stop = visit["end"].timestamp() - origin
        start = max(0.0, stop - visit["seconds"])
        busy[visit["worker"]] += visit["seconds"]
        hue = (visit["mst_id"] * 0.618034) % 1.0
        ax.broken_barh([(start, max(stop - start, 1e-9))], (visit["worker"] - 0.4, 0.8),
                       facecolors=_hsv(hue))  # fmt: skip
        if visit["hop"]:
            ax.plot([start], [visit["worker"] + 0.4], marker="v", color="black", markersize=3)
    labels = [f"worker {w}\n{100 * busy[w] / end:.0f}% busy" if end else f"worker {w}"
              for w in workers]  # fmt: skip
    ax.set_yticks(workers, labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first sub-epoch started")
    n_hops = sum(v["hop"] for v in visits)
    ax.set_title(f"workers' timeline: {len(visits)} visits, {n_hops} hops (v), gaps = idle")


def _load_steps(name: str, store: str | BaseStore | None) -> tuple[list[Any], dict[Any, bool]]:
    """The run's steps, and whether each visit hopped (its event has the visit's time)."""
    db = store if isinstance(store, BaseStore) else open_store(store, root=DEFAULT_ROOT)
    try:
        hops = {
            (e.mst_id, e.time): bool(e.detail["hop"])
            for e in db.list_events(name)
            if e.kind is EventKind.HOPPED and "hop" in e.detail
        }
        return db.list_steps(name), hops
    finally:
        if db is not store:
            db.close()


def _hsv(hue: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(hue, 0.65, 0.8)
