"""The dashboard's per-run cache, grown from the rows added since the previous request.

A page of a live run asks for MSTs, curves, the timeline and the totals every two
seconds; reading 100,000 epochs and 400,000 steps each time would take seconds.
Each refresh reads only what is new: epochs and MSTs by their finish / update
times (a resumed run re-records an epoch with a new time), steps and events by
their increasing ids. One driver writes a run, one transaction after the other,
each with its own time and ids, so nothing newer can appear behind what was
read. Summaries are recomputed only for the MSTs whose rows changed.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text, case, func, select, type_coerce
from sqlalchemy.orm import Session

from modelhopper.server._msts import MSTSummary, mark_pareto_front, summarise
from modelhopper.store import EventKind
from modelhopper.store._schema import (
    _NON_FINITE,
    EpochRow,
    EventRow,
    MSTRow,
    StepRow,
    _decode_json,
    as_utc,
)

__all__ = ["Pick", "RunCache"]

Pick = Callable[[list[MSTSummary]], list[MSTSummary]]

_RECENT_HOPS = 20_000  # visits whose hop flag is kept for the timeline (its maximum)


@dataclass
class RunCache:
    """What the dashboard knows of one run; ``refresh`` brings it up to date."""

    experiment_id: int
    metric: str
    maximize: bool
    objectives: dict[str, str] = field(default_factory=dict)  # several: MSTs get .pareto
    constraints: list[str] = field(default_factory=list)
    epochs: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    epochs_seen: datetime | None = None
    msts: dict[int, MSTSummary] = field(default_factory=dict)
    msts_seen: datetime | None = None
    step_id: int = 0  # this run's steps with larger ids are not aggregated yet
    busy: dict[int, float] = field(default_factory=dict)  # worker -> compute seconds
    n_steps: int = 0
    first_start: datetime | None = None
    last_finish: datetime | None = None
    event_id: int = 0
    latest_event: int | None = None  # the newest event when the epochs were last read
    n_visits: int = 0
    n_hops: int = 0
    hop_bytes: int = 0
    hops: dict[tuple[int, datetime], bool] = field(default_factory=dict)  # recent visits
    shard_bytes: list[int] | None = None
    stats: dict[str, Any] | None = None  # RunStats of the completed run
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self, session: Session) -> None:
        with self.lock:
            # Epochs are recorded with a visit's events, in one transaction: no new event,
            # no new epoch, and the scan of the epochs (no index on their time) is skipped.
            latest = session.scalar(
                select(func.max(EventRow.id)).where(EventRow.experiment_id == self.experiment_id)
            )
            changed = self._refresh_msts(session)
            if latest != self.latest_event:
                changed |= self._refresh_epochs(session)
                self.latest_event = latest
            for mst_id in changed:
                if mst_id in self.msts:
                    summarise(self.msts[mst_id], self.epochs.get(mst_id, {}), self.metric,
                              self.maximize)  # fmt: skip
            if changed:  # a new epoch can move the front anywhere
                mark_pareto_front(list(self.msts.values()), self.objectives, self.constraints)
            self._refresh_steps(session)
            self._refresh_events(session)

    def summaries(self, pick: Pick | None = None) -> tuple[int, list[MSTSummary]]:
        """The number of MSTs, and copies of the summaries ``pick`` takes from all of them
        (by id): picked under the lock, copied so they can be read while it refreshes."""
        with self.lock:
            everything = sorted(self.msts.values(), key=lambda s: s.mst_id)
            chosen = everything if pick is None else pick(everything)
            return len(everything), [dataclasses.replace(s) for s in chosen]

    def series(self, mst_ids: list[int], epochs: list[int], metric: str) -> list[list[Any]]:
        with self.lock:
            rows = [self.epochs.get(i, {}) for i in mst_ids]
            return [[r[e].get(metric) if e in r else None for e in epochs] for r in rows]

    def n_epochs(self, mst_ids: list[int]) -> int:
        with self.lock:
            return max((max(self.epochs.get(i, {-1: {}})) + 1 for i in mst_ids), default=0)

    def metric_names(self) -> list[str]:
        with self.lock:
            names: dict[str, None] = {}
            for epochs in self.epochs.values():
                for metrics in epochs.values():
                    names.update(dict.fromkeys(metrics))
                break  # every epoch of a run reports the same metrics
            return sorted(names)

    # -- one table each ------------------------------------------------------------------
    def _refresh_epochs(self, session: Session) -> set[int]:
        # The metrics as the database's text, decoded here: the column type's decoding
        # (non-finite floats written as objects) costs ~10x more and is rarely needed.
        metrics = type_coerce(EpochRow.metrics, Text)
        finished = type_coerce(EpochRow.finished_at, Text)  # only the newest is converted
        query = select(EpochRow.mst_id, EpochRow.epoch, metrics, finished)
        query = query.where(EpochRow.experiment_id == self.experiment_id)
        if self.epochs_seen is not None:
            query = query.where(EpochRow.finished_at > self.epochs_seen)
        changed = set()
        newest = None
        for mst_id, epoch, text, time in session.execute(query):
            epochs = self.epochs.setdefault(mst_id, {})
            values = _metrics(text)
            if epochs.get(epoch) != values:
                epochs[epoch] = values
                changed.add(mst_id)
            newest = time if newest is None or time > newest else newest
        if newest is not None:
            self.epochs_seen = as_utc(_as_datetime(newest))
        return changed

    def _refresh_msts(self, session: Session) -> set[int]:
        query = select(
            MSTRow.mst_id, MSTRow.params, MSTRow.status, MSTRow.parent, MSTRow.warm_start,
            MSTRow.priority, MSTRow.n_epochs, MSTRow.error, MSTRow.updated_at,
        ).where(MSTRow.experiment_id == self.experiment_id)  # fmt: skip
        if self.msts_seen is not None:
            query = query.where(MSTRow.updated_at > self.msts_seen)
        changed = set()
        for row in session.execute(query):
            fields = {
                "params": row.params, "status": row.status, "parent": row.parent,
                "warm_start": bool(row.warm_start), "priority": row.priority,
                "n_epochs": row.n_epochs, "error": row.error,
            }  # fmt: skip
            summary = self.msts.get(row.mst_id)
            if summary is None:
                self.msts[row.mst_id] = MSTSummary(mst_id=row.mst_id, **fields)
                changed.add(row.mst_id)
            else:
                for name, value in fields.items():
                    setattr(summary, name, value)
            updated = as_utc(row.updated_at)
            if self.msts_seen is None or updated > self.msts_seen:
                self.msts_seen = updated
        return changed

    def _refresh_steps(self, session: Session) -> None:
        # "+ 0": a range scan of the ids, not of the (experiment, mst, ...) index.
        where = (StepRow.id > self.step_id, StepRow.experiment_id + 0 == self.experiment_id)
        rows = session.execute(
            select(StepRow.worker, func.sum(StepRow.seconds), func.count(), func.max(StepRow.id),
                   func.min(StepRow.id), func.max(StepRow.finished_at))
            .where(*where)
            .group_by(StepRow.worker)
        ).all()  # fmt: skip
        if rows and self.first_start is None:
            first_id = min(row[4] for row in rows)
            first = session.scalars(select(StepRow.finished_at).where(StepRow.id == first_id)).one()
            # The first visit's steps share their finish time: it started that much earlier.
            seconds = session.scalar(
                select(func.sum(StepRow.seconds)).where(*where, StepRow.finished_at == first)
            )
            self.first_start = as_utc(first) - timedelta(seconds=float(seconds or 0.0))
        for worker, seconds, count, max_id, _, max_finish in rows:
            self.busy[worker] = self.busy.get(worker, 0.0) + float(seconds or 0.0)
            self.n_steps += count
            self.step_id = max(self.step_id, max_id)
            finish = as_utc(_as_datetime(max_finish))
            if self.last_finish is None or finish > self.last_finish:
                self.last_finish = finish

    def _refresh_events(self, session: Session) -> None:
        """Visits (one event each) are counted in SQL: a big run has hundreds of thousands."""
        run = (EventRow.experiment_id == self.experiment_id, EventRow.id > self.event_id)
        visit = (*run, EventRow.kind == EventKind.HOPPED.value)
        moved = EventRow.detail["bytes"].as_integer()
        n, total, hops, newest = session.execute(
            select(func.count(), func.sum(moved), func.sum(case((moved > 0, 1), else_=0)),
                   func.max(EventRow.id)).where(*visit)
        ).one()  # fmt: skip
        recent = session.execute(
            select(EventRow.mst_id, EventRow.time, EventRow.detail["hop"].as_boolean())
            .where(*visit)
            .order_by(EventRow.id.desc())
            .limit(_RECENT_HOPS)
        ).all()
        others = session.execute(
            select(EventRow.id, EventRow.kind, EventRow.detail)
            .where(*run, EventRow.kind.in_((EventKind.STARTED.value, EventKind.COMPLETED.value)))
            .order_by(EventRow.id)
        ).all()
        self.n_visits += n
        self.hop_bytes += int(total or 0)
        self.n_hops += int(hops or 0)
        for mst_id, time, hop in reversed(recent):
            if hop is not None:
                self.hops[(mst_id, as_utc(time))] = bool(hop)
        if len(self.hops) > 2 * _RECENT_HOPS:  # keep the newest (dicts keep insertion order)
            self.hops = dict(list(self.hops.items())[-_RECENT_HOPS:])
        for row in others:
            if row.kind == EventKind.STARTED.value and "shard_bytes" in row.detail:
                self.shard_bytes = [int(b) for b in row.detail["shard_bytes"]]
            elif row.kind == EventKind.COMPLETED.value:
                self.stats = row.detail
        self.event_id = max(self.event_id, newest or 0, *(row.id for row in others))


def _metrics(value: Any) -> dict[str, Any]:
    """Decode a metrics column read as text (SQLite) or as JSON (PostgreSQL's driver)."""
    if isinstance(value, str):
        if _NON_FINITE not in value:
            return json.loads(value)
        value = json.loads(value)
    return _decode_json(value)


def _as_datetime(value: Any) -> datetime:
    """``max()`` over a datetime column comes back as text on SQLite."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
