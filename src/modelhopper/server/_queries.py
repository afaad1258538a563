"""What the dashboard reads from the store, fast enough for 5,000 MSTs and 100,000 epochs.

The store's own methods return whole tables as records; a page needs a slice of
them, summaries and aggregates. ``RunReader`` reads the SQL tables directly
(read-only) and keeps, per run, an incremental cache of epoch metrics and of
step and visit aggregates: each request reads only the rows added since the
previous one (rows are found by their increasing ids and finish times), so a
live run's page refreshes cheaply however long the run has gone on.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelhopper._ranking import Direction, direction_of
from modelhopper.errors import ConfigError
from modelhopper.server._cache import Pick, RunCache
from modelhopper.server._msts import (
    MSTSummary,
    choose,
    finite,
    spread,
)
from modelhopper.store import EventKind, RunStatus, SQLStore
from modelhopper.store._schema import (
    CommandRow,
    EpochRow,
    EventRow,
    ExperimentRow,
    MSTRow,
    StepRow,
)
from modelhopper.store._timeline import derive_hops, relative, seconds_between, visits_of

__all__ = ["NotFoundError", "RunReader"]

_ROUTINE = (  # one per visit, per epoch
    EventKind.HOPPED.value,
    EventKind.EPOCH_END.value,
    EventKind.EPOCH_DECIDED.value,
)
_NEWEST_SCAN = 20_000  # events searched for the newest non-routine ones


class NotFoundError(ConfigError):
    """A run or MST the request names does not exist (HTTP 404)."""


class RunReader:
    """Read-only views of the runs in a ``SQLStore``, shared by the API and the pages."""

    def __init__(self, store: SQLStore) -> None:
        if not isinstance(store, SQLStore):
            raise ConfigError(
                f"the dashboard reads a SQLStore, got {type(store).__name__}; open one with "
                "modelhopper.store.open_store(url)"
            )
        self.store = store
        self._caches: dict[str, RunCache] = {}
        self._caches_lock = threading.Lock()

    def _session(self) -> Session:
        return self.store._read()

    # -- runs --------------------------------------------------------------------
    def list_runs(self) -> list[dict[str, Any]]:
        with self._session() as session:
            runs = session.scalars(
                select(ExperimentRow).order_by(ExperimentRow.created_at.desc(), ExperimentRow.id)
            ).all()
            counts = dict(
                session.execute(
                    select(MSTRow.experiment_id, func.count()).group_by(MSTRow.experiment_id)
                ).all()
            )
            return [_run_dict(row, counts.get(row.id, 0)) for row in runs]

    def run(self, name: str) -> dict[str, Any]:
        with self._session() as session:
            row = self._experiment(session, name)
            n_msts = session.scalar(select(func.count()).where(MSTRow.experiment_id == row.id))
            return {
                **_run_dict(row, n_msts or 0),
                "spec": row.spec,
                "space": row.space,
                "seed": row.seed,
                "run_dir": row.run_dir,
            }

    def provenance(self, name: str) -> dict[str, Any]:
        with self._session() as session:
            return dict(self._experiment(session, name).provenance)

    def _experiment(self, session: Session, name: str) -> ExperimentRow:
        row = session.scalars(select(ExperimentRow).where(ExperimentRow.name == name)).first()
        if row is None:
            raise NotFoundError(
                f"no run named {name!r} in the store at {self.store.url}; "
                "GET /api/runs lists the runs"
            )
        return row

    # -- MSTs --------------------------------------------------------------------
    def msts(
        self, name: str, pick: Pick | None = None
    ) -> tuple[dict[str, Any], int, list[MSTSummary]]:
        """The run's record, its number of MSTs, and the summaries (params, status, epochs,
        metrics) of those ``pick`` takes from the list of all, by id [default: all]."""
        cache = self._refresh(name)
        return (self.run(name), *cache.summaries(pick))

    def mst(self, name: str, mst_id: int) -> MSTSummary:
        _, _, found = self.msts(name, lambda every: [s for s in every if s.mst_id == mst_id])
        if found:
            return found[0]
        raise NotFoundError(
            f"run {name!r} has no MST {mst_id}; GET /api/runs/{name}/msts lists its MSTs"
        )

    def metric_names(self, name: str) -> list[str]:
        return self._refresh(name).metric_names()

    def curves(
        self,
        name: str,
        *,
        metric: str | None,
        mst_ids: list[int] | None,
        top: int,
        max_points: int,
    ) -> dict[str, Any]:
        """One metric's curve per MST, aligned on epochs, for at most ``top`` MSTs.

        Without ``mst_ids`` the ``top`` MSTs by best value of the run's metric are shown
        (then those without an epoch). At most ``max_points`` epochs are kept, evenly
        spread, always with the first and the last. A metric the run does not report
        raises ``NotFoundError``, naming those it does.
        """
        cache = self._refresh(name)
        maximize = cache.maximize
        run, n_msts, chosen = self.msts(name, lambda every: choose(every, mst_ids, top, maximize))
        metric = metric or run["metric"]
        known = cache.metric_names()
        if metric != run["metric"] and metric not in known:
            raise NotFoundError(
                f"run {name!r} has no metric {metric!r}; its metrics are {known or [run['metric']]}"
            )
        ids = [s.mst_id for s in chosen]
        epochs = spread(cache.n_epochs(ids), max_points)
        series = []
        for summary, raw in zip(chosen, cache.series(ids, epochs, metric), strict=True):
            values = [finite(v) for v in raw]
            series.append(
                {"mst_id": summary.mst_id, "params": summary.params, "status": summary.status,
                 "values": values}
            )  # fmt: skip
        return {
            "run": name,
            "metric": metric,
            "direction": run["direction"],
            "n_msts": n_msts,
            "epochs": epochs,
            "series": series,
        }

    def epochs(
        self, name: str, *, mst_id: int | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """Per-epoch rows, ordered by (mst_id, epoch), one page of them and the total."""
        with self._session() as session:
            experiment = self._experiment(session, name)
            where = [EpochRow.experiment_id == experiment.id]
            if mst_id is not None:
                where.append(EpochRow.mst_id == mst_id)
            total = session.scalar(select(func.count()).select_from(EpochRow).where(*where)) or 0
            rows = session.scalars(
                select(EpochRow)
                .where(*where)
                .order_by(EpochRow.mst_id, EpochRow.epoch)
                .offset(offset)
                .limit(limit)
            ).all()
            return total, [_epoch_dict(row) for row in rows]

    # -- events and commands -----------------------------------------------------
    def events(
        self,
        name: str,
        *,
        after_id: int,
        limit: int,
        newest: bool = False,
        skip_visits: bool = False,
    ) -> list[dict[str, Any]]:
        """Events with id > after_id, oldest first: the first ``limit``, or the last.

        ``skip_visits`` leaves out the events of each visit and epoch (the timeline and
        the curves show them), keeping those about the run, commands and MSTs' ends;
        with ``newest``, among the run's last 20,000 events.
        """
        with self._session() as session:
            experiment = self._experiment(session, name)
            where = [EventRow.experiment_id == experiment.id, EventRow.id > after_id]
            if skip_visits:
                where.append(EventRow.kind.not_in(_ROUTINE))
            if skip_visits and newest:  # bounded: the newest few hundred thousand are routine
                latest = session.scalar(
                    select(func.max(EventRow.id)).where(EventRow.experiment_id == experiment.id)
                )
                where.append(EventRow.id > (latest or 0) - _NEWEST_SCAN)
            order = EventRow.id.desc() if newest else EventRow.id
            rows = session.scalars(
                select(EventRow).where(*where).order_by(order).limit(limit)
            ).all()
            rows = sorted(rows, key=lambda r: r.id)
            return [
                {"id": r.id, "time": r.time, "kind": r.kind, "mst_id": r.mst_id,
                 "worker": r.worker, "detail": _jsonable(r.detail)}
                for r in rows
            ]  # fmt: skip

    def commands(self, name: str, *, limit: int) -> list[dict[str, Any]]:
        with self._session() as session:
            experiment = self._experiment(session, name)
            rows = session.scalars(
                select(CommandRow)
                .where(CommandRow.experiment_id == experiment.id)
                .order_by(CommandRow.id.desc())
                .limit(limit)
            ).all()
            return [_command_dict(r) for r in rows]

    def command(self, name: str, command_id: int) -> dict[str, Any]:
        with self._session() as session:
            experiment = self._experiment(session, name)
            row = session.get(CommandRow, command_id)
            if row is None or row.experiment_id != experiment.id:
                raise NotFoundError(f"run {name!r} has no command {command_id}")
            return _command_dict(row)

    # -- workers: timeline and resources -------------------------------------------
    def timeline(self, name: str, *, last: int) -> dict[str, Any]:
        """The last ``last`` visits per worker with their start, end, MST and whether they
        hopped, plus each worker's utilisation over the whole run."""
        cache = self._refresh(name)
        with self._session() as session:
            n_workers = self._experiment(session, name).n_workers
            visits = _recent_visits(session, cache, last)
        with cache.lock:
            for visit in visits:
                visit["hop"] = cache.hops.get((visit["mst_id"], visit["end"]))
        derive_hops(visits)  # runs recorded before visits' events said whether they hopped
        origin = cache.first_start
        wall = seconds_between(cache.first_start, cache.last_finish)
        with cache.lock:  # workers that joined the run later are numbered after the first
            n_workers = max(n_workers, max(cache.busy, default=-1) + 1)
        return {
            "run": name,
            "n_workers": n_workers,
            "origin": origin,
            "wall_seconds": wall,
            "visits": [relative(v, origin) for v in visits],
            "workers": [
                {
                    "worker": w,
                    "busy_seconds": cache.busy.get(w, 0.0),
                    "utilisation": cache.busy.get(w, 0.0) / wall if wall else 0.0,
                }
                for w in range(n_workers)
            ],
        }

    def resources(self, name: str) -> dict[str, Any]:
        """Compute seconds, wall, efficiency, visits, hops, bytes moved, resident shard bytes."""
        cache = self._refresh(name)
        with self._session() as session:
            experiment = self._experiment(session, name)
            n_workers, status = experiment.n_workers, experiment.status
        compute = sum(cache.busy.values())
        wall = seconds_between(cache.first_start, cache.last_finish)
        shard_bytes = cache.shard_bytes
        figures: dict[str, Any] = {
            "run": name,
            "status": status,
            "source": "measured so far",
            "n_workers": n_workers,
            "compute_seconds": compute,
            "wall_seconds": wall,
            "efficiency": compute / n_workers / wall if wall else 0.0,
            "n_steps": cache.n_steps,
            "n_visits": cache.n_visits,
            "n_hops": cache.n_hops,
            "hop_bytes": cache.hop_bytes,
            "resident_shard_bytes": shard_bytes,
            "dataset_bytes": sum(shard_bytes) if shard_bytes else None,
        }
        if cache.stats is not None:  # a completed run: the driver's exact figures
            stats = cache.stats
            figures.update(
                source="completed run",
                compute_seconds=stats["compute_seconds"],
                wall_seconds=stats["wall_seconds"],
                efficiency=stats["compute_seconds"] / n_workers / stats["wall_seconds"]
                if stats["wall_seconds"]
                else 0.0,
                n_visits=stats["n_visits"],
                n_hops=stats["n_hops"],
                hop_bytes=stats["hop_bytes"],
                resident_shard_bytes=list(stats["resident_shard_bytes"]),
                dataset_bytes=stats["dataset_bytes"],
                lower_bound_seconds=stats.get("lower_bound_seconds"),
            )
        resident = figures["resident_shard_bytes"]
        dataset = figures["dataset_bytes"]
        figures["data_copies"] = sum(resident) / dataset if resident and dataset else None
        return figures

    # -- the incremental cache -------------------------------------------------------
    def _refresh(self, name: str) -> RunCache:
        with self._session() as session:
            experiment = self._experiment(session, name)
            with self._caches_lock:
                cache = self._caches.get(name)
                if cache is None or cache.experiment_id != experiment.id:
                    spec = experiment.spec
                    cache = self._caches[name] = RunCache(
                        experiment.id, spec.get("metric", ""),
                        direction_of(spec.get("direction")) is Direction.MAXIMIZE,
                        objectives=dict(spec.get("objectives") or {}),
                        constraints=list(spec.get("constraints") or []),
                    )  # fmt: skip
            cache.refresh(session)
        return cache


def _recent_visits(session: Session, cache: RunCache, last: int) -> list[dict[str, Any]]:
    """The run's last ``last`` visits, from its newest steps (a visit has 1-4 steps)."""
    columns = (StepRow.id, StepRow.mst_id, StepRow.worker, StepRow.seconds,
               StepRow.finished_at, StepRow.epoch)  # fmt: skip
    # Usually a range scan of the newest ids ("+ 0" keeps the index on the run out of it) ...
    steps = session.execute(
        select(*columns)
        .where(
            StepRow.id > cache.step_id - 4 * last, StepRow.experiment_id + 0 == cache.experiment_id
        )
        .order_by(StepRow.id)
    ).all()
    visits = visits_of(steps)
    if len(visits) <= last and cache.step_id - 4 * last > 0:
        # ... unless other runs wrote in between: then the run's own newest steps.
        steps = session.execute(
            select(*columns)
            .where(StepRow.experiment_id == cache.experiment_id)
            .order_by(StepRow.id.desc())
            .limit(4 * last)
        ).all()
        visits = visits_of(reversed(steps))
    return visits[-last:]


# -- plain helpers -------------------------------------------------------------------
def _run_dict(row: ExperimentRow, n_msts: int) -> dict[str, Any]:
    return {
        "name": row.name,
        "status": RunStatus(row.status).value,
        "procedure": row.procedure,
        "metric": row.spec.get("metric", ""),
        "direction": direction_of(row.spec.get("direction")).value,
        "n_msts": n_msts,
        "n_workers": row.n_workers,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _jsonable(value: Any) -> Any:
    """Non-finite floats become null: JSON has no literal for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _epoch_dict(row: EpochRow) -> dict[str, Any]:
    return {
        "mst_id": row.mst_id,
        "epoch": row.epoch,
        "metrics": _jsonable(row.metrics),
        "train_order": row.train_order,
        "eval_order": row.eval_order,
        "train_seconds": finite(row.train_seconds),
        "eval_seconds": finite(row.eval_seconds),
        "finished_at": row.finished_at,
    }


def _command_dict(row: CommandRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "payload": _jsonable(row.payload),
        "status": row.status,
        "created_at": row.created_at,
        "applied_at": row.applied_at,
        "message": row.message,
    }
