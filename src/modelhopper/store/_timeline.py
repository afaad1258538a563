"""Visits from steps: the workers' timeline, shared by the dashboard and ``Result.plot``.


A visit is one MST on one worker: its steps are recorded together, so they share
their finish time. Plain functions over records, no store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from modelhopper.store._schema import as_utc

__all__ = ["derive_hops", "relative", "seconds_between", "visits_of"]


def visits_of(steps: Iterable[Any]) -> list[dict[str, Any]]:
    """Steps (oldest first) grouped into visits: one MST on one worker, recorded at once.
    A group epoch (hybrid mode) is one visit per member: its steps, recorded together,
    name the member that ran each."""
    found: dict[tuple[int, int, datetime], dict[str, Any]] = {}
    for step in steps:
        end = as_utc(step.finished_at)
        seconds = step.seconds if math.isfinite(step.seconds) else 0.0
        key = (step.mst_id, step.worker, end)
        if (current := found.get(key)) is not None:
            current["seconds"] += seconds
            current["steps"] += 1
            continue
        found[key] = {"mst_id": step.mst_id, "worker": step.worker, "end": end,
                      "seconds": seconds, "steps": 1, "epoch": step.epoch, "hop": None}  # fmt: skip
    return list(found.values())


def derive_hops(visits: list[dict[str, Any]]) -> None:
    """For visits whose event does not say (older runs): the state moved if the MST's
    previous visit was on another worker and this worker last ran another MST."""
    last_worker_of: dict[int, int] = {}
    last_mst_on: dict[int, int] = {}
    for visit in visits:
        mst, worker = visit["mst_id"], visit["worker"]
        if visit["hop"] is None:
            before = last_worker_of.get(mst)
            visit["hop"] = before is not None and last_mst_on.get(worker) != mst
        last_worker_of[mst], last_mst_on[worker] = worker, mst


def relative(visit: dict[str, Any], origin: datetime | None) -> dict[str, Any]:
    end = seconds_between(origin, visit["end"])
    return {
        "mst_id": visit["mst_id"],
        "worker": visit["worker"],
        "epoch": visit["epoch"],
        "start": max(0.0, end - visit["seconds"]),
        "end": end,
        "steps": visit["steps"],
        "hop": bool(visit["hop"]),
    }


def seconds_between(start: datetime | None, end: datetime | None) -> float:
    if start is None or end is None:
        return 0.0
    return max(0.0, (end - start).total_seconds())
