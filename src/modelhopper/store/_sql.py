"""SQLStore: the store on a SQLAlchemy database, a SQLite file by default or PostgreSQL by URL.

Every public method is one transaction. The schema is created and upgraded by
the Alembic migrations in ``migrations/`` when the store opens. Timestamps come
back as aware UTC datetimes on every backend.

SQLite is for one driver process: readers (dashboard, CLI) and processes that
only send commands may share the file, but each driver's write registers its
process in the ``writers`` table, and a store that finds another live driver
there warns once (``_note_writer``); several drivers should share PostgreSQL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, inspect, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from modelhopper.errors import StoreError
from modelhopper.store._base import (
    BaseStore,
    CommandRecord,
    CommandStatus,
    EpochRecord,
    EventKind,
    EventRecord,
    ExperimentRecord,
    MSTRecord,
    RunStatus,
    StepRecord,
    VisitRecord,
)
from modelhopper.store._engine import (
    _IMMEDIATE,
    DEFAULT_FILE,
    DEFAULT_ROOT,
    _create_engine,
    _is_alive,
    _process_started,
    _resolve_url,
    _sqlite_file,
)
from modelhopper.store._rows import (
    _check_mst_fields,
    _check_same_mst,
    _columns,
    _command_record,
    _enum,
    _experiment_record,
    _finished,
    _int64,
    _mst_record,
    _mst_values,
    _newest_first,
    _reason,
    _step_record,
    _text,
    _to_record,
)
from modelhopper.store._schema import (
    Base,
    CommandRow,
    EpochRow,
    EventRow,
    ExperimentRow,
    MSTRow,
    StepRow,
    WriterRow,
    as_utc,
    utcnow,
)

__all__ = ["SQLStore", "open_store", "DEFAULT_FILE"]

_N_NAMES_SHOWN = 10
_MIGRATION_LOCK = 0x6D6F64656C686F70  # "modelhop": any constant that other apps are unlikely to use
_WRITER_CHECK_SECONDS = 2.0
_POSTGRES_EXAMPLE = 'store="postgresql://user@host/db"'


def open_store(url: str | None = None, *, root: str | os.PathLike[str] = DEFAULT_ROOT) -> SQLStore:
    """The store at ``url``; with None, the SQLite file ``<root>/modelhopper.db``.

    The folder ``root`` is created if needed. ``url`` is any URL ``SQLStore`` takes.
    """
    if url is None:
        return SQLStore(path=Path(root) / DEFAULT_FILE)
    return SQLStore(url)


def _table(row: type[Any]) -> Table:
    """A row class's table, for Core inserts (executemany without the ORM's bulk path)."""
    return cast(Table, row.__table__)


# Ids per "IN (...)" lookup: well under SQLite's limit on bound parameters.
_IDS_PER_QUERY = 500


def _known_mst_ids(session: Session, experiment_id: int, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` the experiment has: only those are looked up (a long run's adds and
    events must not read every id it has)."""
    mine = MSTRow.experiment_id == experiment_id
    return {
        known
        for at in range(0, len(ids), _IDS_PER_QUERY)
        for known in session.scalars(
            select(MSTRow.mst_id).where(mine, MSTRow.mst_id.in_(ids[at : at + _IDS_PER_QUERY]))
        )
    }


def _update_msts(keys: tuple[str, ...]) -> Any:
    """An executemany UPDATE of the MST fields ``keys`` (and ``updated_at``), each row's
    values bound by name: ``m_experiment``, ``m_id``, ``m_now`` and ``v_<field>``."""
    return (
        update(MSTRow)
        .where(
            MSTRow.experiment_id == bindparam("m_experiment"),
            MSTRow.mst_id == bindparam("m_id"),
        )
        .values(updated_at=bindparam("m_now"), **{key: bindparam(f"v_{key}") for key in keys})
    )


def _upsert_epochs(dialect: str, columns: tuple[str, ...]) -> Any:
    """An insert of epoch rows that replaces one already recorded (SQLite, PostgreSQL)."""
    upsert: Callable[..., Any] = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = upsert(EpochRow)
    key = ("experiment_id", "mst_id", "epoch")
    return statement.on_conflict_do_update(
        index_elements=list(key),
        set_={column: statement.excluded[column] for column in columns if column not in key},
    )


def _event_row(
    experiment_id: int, now: datetime, kind: EventKind, mst_id: int | None, detail: Any
) -> dict[str, Any]:
    """An event's columns for a Core insert (a driver's events carry no worker)."""
    return {"experiment_id": experiment_id, "time": now, "kind": kind.value,
            "mst_id": mst_id, "worker": None, "detail": detail or {}}  # fmt: skip


class SQLStore(BaseStore):
    """Run metadata in a SQL database through SQLAlchemy.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/file.db``, ``postgresql://user@host/db``
            (psycopg 3 is used; ``pip install 'modelhopper[postgres]'``), ``sqlite://``
            for an in-memory database.
        path: a SQLite file to use instead of a URL; its folder is created.

    With neither, the SQLite file ``modelhopper-runs/modelhopper.db`` is used.
    Re-recording an epoch (``record_visit`` after a resume) replaces the stored
    row: an upsert on (experiment, mst_id, epoch). A step is recorded once.
    """

    def __init__(
        self, url: str | None = None, *, path: str | os.PathLike[str] | None = None
    ) -> None:
        self._url = _resolve_url(url, path)
        self.url = self._url.render_as_string(hide_password=True)
        self._engine = _create_engine(self._url, self.url)
        self._read = sessionmaker(self._engine, expire_on_commit=False)
        self._write = sessionmaker(
            self._engine.execution_options(**{_IMMEDIATE: True}), expire_on_commit=False
        )
        self._sqlite_file = _sqlite_file(self._url)
        self._warned_other_writer = False
        self._last_writer_check = -float("inf")
        self._closed = False
        self._local = threading.local()  # .batch: this thread's open batch() session
        # Experiment name -> row id, as read from the store: a run's id never changes
        # (experiments are neither renamed nor deleted), and the hot paths ask per visit.
        # Cleared when a transaction fails: an id read inside it may have rolled back.
        self._ids: dict[str, int] = {}
        # Experiment row id -> MST ids known to exist (MSTs are never deleted): a driver
        # adds events for the same MSTs at every decision. Cleared with ``_ids``.
        self._mst_ids: dict[int, set[int]] = {}
        # The per-visit writes' statements, built once per shape: building one (its
        # ``excluded`` columns, its cache key) cost more than executing it.
        self._statements: dict[tuple[str, ...], Any] = {}
        self._open()

    def __repr__(self) -> str:
        return f"SQLStore({self.url!r})"

    def __enter__(self) -> SQLStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening and migrating ---------------------------------------------
    def _open(self) -> None:
        try:
            with self._write.begin() as session:
                self._migrate(session.connection())
        except StoreError:
            raise
        except SQLAlchemyError as e:
            raise StoreError(
                f"cannot open the store at {self.url}: {_reason(e)}; {self._how_to_fix()}"
            ) from e

    def _how_to_fix(self) -> str:
        if self._url.get_backend_name() == "sqlite":
            return "check that the file's folder exists and is writable (path= creates it)"
        return (
            "check that the server is running and reachable, and that the user, password, "
            "host, port and database in the URL are right (create the database first)"
        )

    def _migrate(self, connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Two processes opening a fresh database: one migrates, the other waits for it.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        # Importing Alembic costs ~0.5 s: not needed for a database at head or an empty one.
        tables = set(inspect(connection).get_table_names())
        if not tables:
            _create_at_head(connection)
            return
        if _stored_revision(connection, tables) == HEAD_REVISION:
            return  # at head: not touched
        from modelhopper.store import migrations

        current = migrations.current_revision(connection)
        head = migrations.head_revision()
        if current == head:
            return  # at head: not touched
        if current is not None and current not in migrations.known_revisions():
            raise StoreError(
                f"the database at {self.url} has schema revision {current!r}, which this "
                f"version of modelhopper does not know (its newest is {head!r}); upgrade "
                "modelhopper (pip install -U modelhopper) or use another database"
            )
        migrations.upgrade_to_head(connection)

    def schema_version(self) -> str | None:
        """The Alembic revision the database is at (the newest one after opening)."""
        from modelhopper.store import migrations

        with self._transaction("reading the schema version") as session:
            return migrations.current_revision(session.connection())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sqlite_file is not None:
            self._forget_writer()
        self._engine.dispose()

    # -- transactions ---------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        if getattr(self._local, "batch", None) is not None:  # nested: the outer one commits
            yield
            return
        with self._transaction("a batch of writes", write=True, driver=True) as session:
            self._local.batch = session  # per thread: a RunHandle's caller writes alongside
            try:
                yield
            finally:
                self._local.batch = None

    @contextmanager
    def _transaction(
        self, what: str, *, write: bool = False, driver: bool = False, conflict: str = ""
    ) -> Iterator[Session]:
        """One transaction; backend errors become StoreError. ``driver``: a driver's write.

        Inside ``batch()`` a write joins the batch's transaction (flushed, so later
        statements of the batch see it) and commits with it."""
        batch: Session | None = getattr(self._local, "batch", None)
        if write and batch is not None:
            yield batch
            batch.flush()
            return
        other: WriterRow | None = None
        try:
            try:
                with (self._write if write else self._read).begin() as session:
                    if driver and self._sqlite_file is not None and self._writer_check_due():
                        other = self._note_writer(session)
                    yield session
            except BaseException:  # rolled back, or its commit failed
                self._ids.clear()
                self._mst_ids.clear()
                raise
        except IntegrityError as e:
            rule = conflict or "it breaks a uniqueness or reference rule of the store"
            raise StoreError(
                f"{what} failed and nothing of it was written: {rule} ({_reason(e)})"
            ) from e
        except SQLAlchemyError as e:
            hint = ""
            if isinstance(getattr(e, "orig", None), TypeError):
                hint = "; store only plain JSON values (convert numpy scalars with float()/int())"
            raise StoreError(
                f"{what} failed in the store at {self.url} and nothing of it was written: "
                f"{_reason(e)}{hint}"
            ) from e
        if other is not None:
            self._warn_other_writer(other)

    # -- one driver per SQLite file -------------------------------------------
    def _writer_check_due(self) -> bool:
        """At most one heartbeat per few seconds: it costs ~5 ms, a visit's record ~3 ms."""
        now = time.monotonic()
        if now - self._last_writer_check < _WRITER_CHECK_SECONDS:
            return False
        self._last_writer_check = now
        return True

    def _note_writer(self, session: Session) -> WriterRow | None:
        """Register this process as a driver; return another live one, if any (until warned)."""
        host, pid = socket.gethostname(), os.getpid()
        now = utcnow()
        session.merge(
            WriterRow(host=host, pid=pid, process_started=_process_started(pid), seen_at=now)
        )
        if self._warned_other_writer:
            return None
        others = session.scalars(
            select(WriterRow).where((WriterRow.host != host) | (WriterRow.pid != pid))
        ).all()
        live = None
        for row in others:
            if _is_alive(row, host, now):
                live = row
            else:
                session.delete(row)  # a driver that crashed: a resume is not a second driver
        return live

    def _warn_other_writer(self, other: WriterRow) -> None:
        if self._warned_other_writer:
            return
        self._warned_other_writer = True
        warnings.warn(
            f"SQLite is for one driver process, but process {other.pid} on {other.host!r} also "
            f"drives runs in {self._sqlite_file}; two drivers on one SQLite file block each "
            "other ('database is locked'). For several drivers use PostgreSQL: "
            f"{_POSTGRES_EXAMPLE} (pip install 'modelhopper[postgres]')",
            UserWarning,
            stacklevel=5,  # the caller of the store's method
        )

    def _forget_writer(self) -> None:
        # Best effort: a row left behind is ignored once this process has exited.
        with contextlib.suppress(SQLAlchemyError), self._write.begin() as session:
            row = session.get(WriterRow, (socket.gethostname(), os.getpid()))
            if row is not None:
                session.delete(row)

    # -- lookups ----------------------------------------------------------------
    def _experiment(self, session: Session, name: str) -> ExperimentRow:
        row = session.scalars(select(ExperimentRow).where(ExperimentRow.name == name)).first()
        if row is None:
            raise StoreError(self._unknown_experiment(session, name))
        return row

    def _unknown_experiment(self, session: Session, name: str) -> str:
        names = session.scalars(_newest_first(select(ExperimentRow.name))).all()
        if not names:
            return (
                f"no experiment named {name!r}: the store at {self.url} has no runs yet; "
                "check store= (the run may live in another database)"
            )
        shown = ", ".join(repr(n) for n in names[:_N_NAMES_SHOWN])
        more = f" and {len(names) - _N_NAMES_SHOWN} more" if len(names) > _N_NAMES_SHOWN else ""
        return (
            f"no experiment named {name!r} in the store at {self.url}; known runs, newest "
            f"first: {shown}{more}; check the run name (and store=)"
        )

    def _experiment_id(self, session: Session, name: str) -> int:
        """The experiment's row id, without loading its row (the hot paths need only this)."""
        if (known := self._ids.get(name)) is not None:
            return known
        found = session.scalar(select(ExperimentRow.id).where(ExperimentRow.name == name))
        if found is None:
            raise StoreError(self._unknown_experiment(session, name))
        self._ids[name] = int(found)
        return int(found)

    def _update_mst(
        self,
        session: Session,
        name: str,
        experiment_id: int,
        mst_id: int,
        fields: dict[str, Any],
        now: datetime,
    ) -> None:
        """Set an MST's fields (and ``updated_at``) with one UPDATE; the MST must exist."""
        keys = tuple(sorted(fields))
        row = {"m_experiment": experiment_id, "m_id": mst_id, "m_now": now,
               **{f"v_{key}": _text(value) for key, value in fields.items()}}  # fmt: skip
        statement = self._statement(("update_msts", *keys), _update_msts, keys)
        # Core: no ORM synchronisation to pay
        changed = session.connection().execute(statement, row).rowcount  # type: ignore[attr-defined]
        if not changed:
            self._mst(session, self._experiment(session, name), mst_id)  # raises, naming the ids

    def _update_msts(
        self,
        session: Session,
        name: str,
        experiment_id: int,
        visits: Sequence[VisitRecord],
        now: datetime,
    ) -> None:
        """Each MST's fields after its last visit of the batch: one executemany UPDATE per
        set of field names (a visit's fields overwrite its earlier visits')."""
        latest: dict[int, dict[str, Any]] = {}
        for visit in visits:
            latest.setdefault(visit.mst_id, {}).update(visit.mst_fields)
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for mst_id, fields in latest.items():
            values = {f"v_{key}": _text(value) for key, value in fields.items()}
            row = {"m_experiment": experiment_id, "m_id": mst_id, "m_now": now, **values}
            groups.setdefault(tuple(sorted(fields)), []).append(row)
        for keys, rows in groups.items():
            statement = self._statement(("update_msts", *keys), _update_msts, keys)
            changed = session.connection().execute(statement, rows).rowcount  # type: ignore[attr-defined]
            if changed != len(rows):  # an unknown MST: find it, and raise naming the ids
                experiment = self._experiment(session, name)
                for row in rows:
                    self._mst(session, experiment, row["m_id"])

    def _mst(self, session: Session, experiment: ExperimentRow, mst_id: int) -> MSTRow:
        row = session.get(MSTRow, (experiment.id, mst_id))
        if row is None:
            ids = session.scalars(
                select(MSTRow.mst_id).where(MSTRow.experiment_id == experiment.id)
            ).all()
            have = f"its {len(ids)} MSTs have ids {min(ids)}..{max(ids)}" if ids else "no MSTs"
            raise StoreError(
                f"experiment {experiment.name!r} has no MST with mst_id={mst_id} ({have}); "
                "add it with add_msts first"
            )
        return row

    # -- experiments ------------------------------------------------------------
    def create_experiment(self, record: ExperimentRecord) -> ExperimentRecord:
        status = _enum(RunStatus, record.status, "ExperimentRecord.status")
        created = as_utc(record.created_at) if record.created_at else utcnow()
        row = ExperimentRow(
            **_columns(
                record,
                status=status.value,
                seed=_int64("ExperimentRecord.seed", record.seed),
                created_at=created,
                updated_at=as_utc(record.updated_at or created),
            )
        )
        taken = (
            f"an experiment named {record.name!r} already exists in the store at {self.url}; "
            f"pick another run_name, or resume the run (modelhopper.resume({record.name!r}))"
        )
        with self._transaction(
            f"creating experiment {record.name!r}", write=True, driver=True, conflict=taken
        ) as session:
            exists = select(ExperimentRow.id).where(ExperimentRow.name == record.name)
            if session.scalar(exists) is not None:
                raise StoreError(taken)
            session.add(row)
        return dataclasses.replace(
            record, status=status, created_at=row.created_at, updated_at=row.updated_at
        )

    def get_experiment(self, name: str) -> ExperimentRecord:
        with self._transaction(f"reading experiment {name!r}") as session:
            return _experiment_record(self._experiment(session, name))

    def list_experiments(self) -> list[ExperimentRecord]:
        with self._transaction("listing experiments") as session:
            rows = session.scalars(_newest_first(select(ExperimentRow))).all()
            return [_experiment_record(row) for row in rows]

    def set_experiment_status(self, name: str, status: RunStatus) -> None:
        status = _enum(RunStatus, status, "status")
        what = f"setting the status of experiment {name!r}"
        with self._transaction(what, write=True, driver=True) as session:
            row = self._experiment(session, name)
            row.status, row.updated_at = status.value, utcnow()

    # -- MSTs ----------------------------------------------------------------------
    def add_msts(self, name: str, msts: list[MSTRecord]) -> None:
        twice = sorted(i for i, n in Counter(m.mst_id for m in msts).items() if n > 1)
        if twice:
            raise StoreError(
                f"add_msts got mst_id {twice} more than once; each MST of an experiment "
                "needs its own mst_id"
            )
        what = f"adding {len(msts)} MSTs to experiment {name!r}"
        with self._transaction(what, write=True, driver=True) as session:
            experiment_id = self._experiment_id(session, name)
            known = self._mst_ids.setdefault(experiment_id, set())
            ids = [m.mst_id for m in msts]
            clash = sorted(known.intersection(ids) or _known_mst_ids(session, experiment_id, ids))
            if clash:
                mine = MSTRow.experiment_id == experiment_id
                last = session.scalar(select(func.max(MSTRow.mst_id)).where(mine)) or 0
                raise StoreError(
                    f"experiment {name!r} already has MSTs with mst_id {clash}; an MST is "
                    f"added once: give new MSTs new ids (the next free one is {last + 1})"
                )
            now = utcnow()
            # Core, not the ORM's unit of work: the driver adds MSTs one at a time
            rows = [_mst_values(experiment_id, m, now) for m in msts]
            session.connection().execute(insert(_table(MSTRow)), rows)
            known.update(ids)

    def update_mst(self, name: str, mst_id: int, **fields: Any) -> None:
        _check_mst_fields(fields, "update_mst")
        what = f"updating MST {mst_id} of experiment {name!r}"
        with self._transaction(what, write=True, driver=True) as session:
            experiment_id = self._experiment_id(session, name)
            self._update_mst(session, name, experiment_id, mst_id, fields, utcnow())

    def list_msts(self, name: str) -> list[MSTRecord]:
        with self._transaction(f"listing the MSTs of experiment {name!r}") as session:
            experiment = self._experiment(session, name)
            rows = session.scalars(
                select(MSTRow).where(MSTRow.experiment_id == experiment.id).order_by(MSTRow.mst_id)
            ).all()
            return [_mst_record(row) for row in rows]

    # -- results ---------------------------------------------------------------------
    def record_visits(self, name: str, visits: Sequence[VisitRecord]) -> None:
        if not visits:
            return
        for visit in visits:
            _check_same_mst(visit.mst_id, visit.steps, visit.epochs)
            _check_mst_fields(visit.mst_fields, "record_visit's mst_fields")
        kinds = [[_enum(EventKind, kind, "event kind") for kind, _ in v.events] for v in visits]
        ids = sorted({v.mst_id for v in visits})
        what = f"recording {len(visits)} visit(s) of MSTs {ids} of experiment {name!r}"
        conflict = (
            "a step of it is already recorded (a sub-epoch, keyed by mst_id, epoch, kind and "
            "shard, is recorded once)"
        )
        now = utcnow()
        with self._transaction(what, write=True, driver=True, conflict=conflict) as session:
            experiment_id = self._experiment_id(session, name)
            # Written in this order, so a failure at any point undoes the earlier parts too;
            # UPDATEs and Core bulk inserts (executemany), not the ORM's unit of work or
            # its bulk path (~0.3 ms a call more): this runs for every visit. The MSTs
            # first: each must exist (else its steps would break a foreign key, reported
            # as something else).
            self._update_msts(session, name, experiment_id, visits, now)
            steps = [_finished(s, experiment_id, now) for v in visits for s in v.steps]
            if steps:
                session.connection().execute(insert(_table(StepRow)), steps)
            self._upsert_epochs(
                session, [_finished(e, experiment_id, now) for v in visits for e in v.epochs]
            )
            events = [
                _event_row(experiment_id, now, kind, visit.mst_id, detail)
                for visit, visit_kinds in zip(visits, kinds, strict=True)
                for kind, (_, detail) in zip(visit_kinds, visit.events, strict=True)
            ]  # fmt: skip
            if events:
                session.connection().execute(insert(_table(EventRow)), events)

    def _upsert_epochs(self, session: Session, values: list[dict[str, Any]]) -> None:
        """Insert epochs; one already recorded (a resumed visit) is replaced by the new one."""
        if not values:
            return
        dialect = self._engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            for value in values:  # other dialects: select-then-write, enough for one driver
                session.merge(EpochRow(**value))
            return
        columns = tuple(values[0])
        statement = self._statement(
            ("upsert_epochs", dialect, *columns), _upsert_epochs, dialect, columns
        )
        # executemany: the statement compiles once and is cached (a multi-row VALUES would
        # compile anew for every count of rows)
        session.connection().execute(statement, values)

    def _statement(self, shape: tuple[str, ...], build: Callable[..., Any], *args: Any) -> Any:
        """``build(*args)``, built once per ``shape`` for this store."""
        if (statement := self._statements.get(shape)) is None:
            statement = self._statements[shape] = build(*args)
        return statement

    def list_steps(self, name: str, mst_id: int | None = None) -> list[StepRecord]:
        with self._transaction(f"listing the steps of experiment {name!r}") as session:
            experiment = self._experiment(session, name)
            query = select(StepRow).where(StepRow.experiment_id == experiment.id)
            if mst_id is not None:
                query = query.where(StepRow.mst_id == mst_id)
            rows = session.scalars(query.order_by(StepRow.mst_id, StepRow.id)).all()
            return [_step_record(row) for row in rows]

    def list_epochs(self, name: str, mst_id: int | None = None) -> list[EpochRecord]:
        with self._transaction(f"listing the epochs of experiment {name!r}") as session:
            experiment = self._experiment(session, name)
            query = select(EpochRow).where(EpochRow.experiment_id == experiment.id)
            if mst_id is not None:
                query = query.where(EpochRow.mst_id == mst_id)
            rows = session.scalars(query.order_by(EpochRow.mst_id, EpochRow.epoch)).all()
            return [_to_record(EpochRecord, row) for row in rows]

    # -- events and commands ---------------------------------------------------------
    def add_event(
        self,
        name: str,
        kind: EventKind,
        *,
        mst_id: int | None = None,
        worker: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        kind = _enum(EventKind, kind, "kind")
        what = f"adding a {kind.value!r} event to experiment {name!r}"
        with self._transaction(what, write=True, driver=True) as session:
            experiment = self._experiment(session, name)
            if mst_id is not None:
                self._mst(session, experiment, mst_id)
            session.add(
                EventRow(
                    experiment_id=experiment.id,
                    time=utcnow(),
                    kind=kind.value,
                    mst_id=mst_id,
                    worker=worker,
                    detail=detail or {},
                )
            )

    def add_events(
        self, name: str, events: Sequence[tuple[EventKind, int | None, dict[str, Any]]]
    ) -> None:
        # One insert for all (the driver adds an event per decided epoch), not a
        # transaction and two lookups per event.
        if not events:
            return
        kinds = [_enum(EventKind, kind, "kind") for kind, _, _ in events]
        what = f"adding {len(events)} event(s) to experiment {name!r}"
        with self._transaction(what, write=True, driver=True) as session:
            experiment_id = self._experiment_id(session, name)
            known = self._mst_ids.setdefault(experiment_id, set())
            unknown = sorted({i for _, i, _ in events if i is not None and i not in known})
            found = _known_mst_ids(session, experiment_id, unknown) if unknown else set()
            known |= found
            if missing := set(unknown) - found:
                # the one-event path words the error (which ids the run has)
                self._mst(session, self._experiment(session, name), min(missing))
            now = utcnow()
            session.connection().execute(insert(_table(EventRow)), [
                _event_row(experiment_id, now, kind, mst_id, detail)
                for kind, (_, mst_id, detail) in zip(kinds, events, strict=True)
            ])  # fmt: skip

    def list_events(self, name: str, *, after_id: int = 0) -> list[EventRecord]:
        with self._transaction(f"listing the events of experiment {name!r}") as session:
            experiment = self._experiment(session, name)
            rows = session.scalars(
                select(EventRow)
                .where(EventRow.experiment_id == experiment.id, EventRow.id > after_id)
                .order_by(EventRow.id)
            ).all()
            return [_to_record(EventRecord, row, kind=EventKind(row.kind)) for row in rows]

    def add_command(self, name: str, kind: str, payload: dict[str, Any]) -> CommandRecord:
        # Not a driver's write: the CLI and dashboard send commands to a running driver.
        kind = _text(kind)
        with self._transaction(f"adding a {kind!r} command to {name!r}", write=True) as session:
            row = CommandRow(
                experiment_id=self._experiment(session, name).id,
                kind=kind,
                payload=payload,
                status=CommandStatus.PENDING.value,
                created_at=utcnow(),
                applied_at=None,
                message=None,
            )
            session.add(row)
            session.flush()
            return _command_record(row)

    def pending_commands(self, name: str) -> list[CommandRecord]:
        return self._commands(name, pending_only=True)

    def list_commands(self, name: str) -> list[CommandRecord]:
        return self._commands(name, pending_only=False)

    def _commands(self, name: str, *, pending_only: bool) -> list[CommandRecord]:
        with self._transaction(f"listing the commands of experiment {name!r}") as session:
            experiment_id = self._experiment_id(session, name)
            query = select(CommandRow).where(CommandRow.experiment_id == experiment_id)
            if pending_only:
                query = query.where(CommandRow.status == CommandStatus.PENDING.value)
            rows = session.scalars(query.order_by(CommandRow.id)).all()
            return [_command_record(row) for row in rows]

    def set_command_status(
        self,
        command_id: int,
        status: CommandStatus,
        message: str | None = None,
        *,
        new_mst_id: int | None = None,
    ) -> None:
        status = _enum(CommandStatus, status, "status")
        if status is CommandStatus.PENDING:
            raise StoreError(
                "set_command_status records a command's outcome: status must be "
                "CommandStatus.APPLIED or CommandStatus.REJECTED, got CommandStatus.PENDING"
            )
        what = f"setting the status of command {command_id}"
        with self._transaction(what, write=True, driver=True) as session:
            row = session.get(CommandRow, command_id)
            if row is None:
                raise StoreError(
                    f"no command with id {command_id} in the store at {self.url}; use an id "
                    "from add_command() or pending_commands()"
                )
            if row.status != CommandStatus.PENDING.value:
                raise StoreError(
                    f"command {command_id} ({row.kind!r}) was already {row.status} at "
                    f"{row.applied_at}; a command is applied or rejected once"
                )
            row.status, row.applied_at, row.message = status.value, utcnow(), message
            row.new_mst_id = new_mst_id

    def row_counts(self, name: str) -> dict[str, int]:
        tables: dict[str, type[MSTRow | StepRow | EpochRow | EventRow | CommandRow]] = {
            "msts": MSTRow,
            "steps": StepRow,
            "epochs": EpochRow,
            "events": EventRow,
            "commands": CommandRow,
        }
        with self._transaction(f"counting the rows of experiment {name!r}") as session:
            experiment_id = self._experiment(session, name).id
            counts = {}
            for table, row in tables.items():
                query = select(func.count()).where(row.experiment_id == experiment_id)
                counts[table] = session.scalar(query) or 0
            return counts


# The newest migration in store/migrations/versions (a test holds the two equal).
HEAD_REVISION = "0003"
_VERSION_TABLE = "alembic_version"


def _stored_revision(connection: Connection, tables: set[str]) -> str | None:
    if _VERSION_TABLE not in tables:
        return None
    return connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalar()


def _create_at_head(connection: Connection) -> None:
    """An empty database gets the schema of the newest migration, stamped as Alembic would.

    The tables come from ``_schema.py``; a test checks that running every migration
    gives the same schema, so later migrations apply to either database alike.
    """
    Base.metadata.create_all(connection)
    connection.execute(
        text(
            f"CREATE TABLE {_VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
            f"CONSTRAINT {_VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
        )
    )
    connection.execute(
        text(f"INSERT INTO {_VERSION_TABLE} (version_num) VALUES (:head)"), {"head": HEAD_REVISION}
    )
