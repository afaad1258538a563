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
import re
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import psutil
from sqlalchemy import create_engine, event, func, insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

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
)
from modelhopper.store._schema import (
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

DEFAULT_FILE = "modelhopper.db"
_DEFAULT_ROOT = "modelhopper-runs"
_BUSY_TIMEOUT_MS = 30_000  # a reader or command writer holds the lock for milliseconds
_CONNECT_TIMEOUT_S = 10
_N_NAMES_SHOWN = 10
_OTHER_HOST_STALE = timedelta(minutes=10)  # a writer on another host we cannot ask the OS about
_IMMEDIATE = "modelhopper_sqlite_immediate"
_MIGRATION_LOCK = 0x6D6F64656C686F70  # "modelhop": any constant that other apps are unlikely to use
_MST_FIELDS = frozenset(f.name for f in dataclasses.fields(MSTRecord)) - {
    "mst_id",
    "created_at",
    "updated_at",
}
_WRITER_CHECK_SECONDS = 2.0
_POSTGRES_EXAMPLE = 'store="postgresql://user@host/db"'

E = TypeVar("E", bound=Enum)
R = TypeVar("R")


def open_store(url: str | None = None, *, root: str | os.PathLike[str] = _DEFAULT_ROOT) -> SQLStore:
    """The store at ``url``; with None, the SQLite file ``<root>/modelhopper.db``.

    The folder ``root`` is created if needed. ``url`` is any URL ``SQLStore`` takes.
    """
    if url is None:
        return SQLStore(path=Path(root) / DEFAULT_FILE)
    return SQLStore(url)


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
        from modelhopper.store import migrations  # Alembic is imported only to open a store

        if connection.dialect.name == "postgresql":
            # Two processes opening a fresh database: one migrates, the other waits for it.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
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
    def _transaction(
        self, what: str, *, write: bool = False, driver: bool = False, conflict: str = ""
    ) -> Iterator[Session]:
        """One transaction; backend errors become StoreError. ``driver``: a driver's write."""
        other: WriterRow | None = None
        try:
            with (self._write if write else self._read).begin() as session:
                if driver and self._sqlite_file is not None and self._writer_check_due():
                    other = self._note_writer(session)
                yield session
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
            experiment = self._experiment(session, name)
            ids = select(MSTRow.mst_id).where(MSTRow.experiment_id == experiment.id)
            existing = set(session.scalars(ids))
            clash = sorted(existing.intersection(m.mst_id for m in msts))
            if clash:
                raise StoreError(
                    f"experiment {name!r} already has MSTs with mst_id {clash}; an MST is "
                    f"added once: give new MSTs new ids (the next free one is {max(existing) + 1})"
                )
            now = utcnow()
            session.add_all(_mst_row(experiment.id, m, now) for m in msts)

    def update_mst(self, name: str, mst_id: int, **fields: Any) -> None:
        _check_mst_fields(fields, "update_mst")
        what = f"updating MST {mst_id} of experiment {name!r}"
        with self._transaction(what, write=True, driver=True) as session:
            row = self._mst(session, self._experiment(session, name), mst_id)
            _apply_mst_fields(row, fields, utcnow())

    def list_msts(self, name: str) -> list[MSTRecord]:
        with self._transaction(f"listing the MSTs of experiment {name!r}") as session:
            experiment = self._experiment(session, name)
            rows = session.scalars(
                select(MSTRow).where(MSTRow.experiment_id == experiment.id).order_by(MSTRow.mst_id)
            ).all()
            return [_to_record(MSTRecord, row) for row in rows]

    # -- results ---------------------------------------------------------------------
    def record_visit(
        self,
        name: str,
        mst_id: int,
        steps: list[StepRecord],
        epochs: list[EpochRecord],
        mst_fields: dict[str, Any],
        events: Sequence[tuple[EventKind, dict[str, Any]]] = (),
    ) -> None:
        _check_same_mst(mst_id, steps, epochs)
        _check_mst_fields(mst_fields, "record_visit's mst_fields")
        kinds = [_enum(EventKind, kind, "event kind") for kind, _ in events]
        what = f"recording a visit of MST {mst_id} of experiment {name!r}"
        conflict = (
            "a step of it is already recorded (a sub-epoch, keyed by mst_id, epoch, kind and "
            "shard, is recorded once)"
        )
        now = utcnow()
        with self._transaction(what, write=True, driver=True, conflict=conflict) as session:
            experiment = self._experiment(session, name)
            mst = self._mst(session, experiment, mst_id)
            # Written in this order, so a failure at any point undoes the earlier parts too;
            # bulk inserts (executemany), not the ORM's unit of work: this runs every visit.
            if steps:
                session.execute(insert(StepRow), [_finished(s, experiment.id, now) for s in steps])
            self._upsert_epochs(session, [_finished(e, experiment.id, now) for e in epochs])
            _apply_mst_fields(mst, mst_fields, now)
            session.flush()
            if events:
                session.execute(
                    insert(EventRow),
                    [
                        {"experiment_id": experiment.id, "time": now, "kind": kind.value,
                         "mst_id": mst_id, "worker": None, "detail": detail}
                        for kind, (_, detail) in zip(kinds, events, strict=True)
                    ],
                )  # fmt: skip

    def _upsert_epochs(self, session: Session, values: list[dict[str, Any]]) -> None:
        """Insert epochs; one already recorded (a resumed visit) is replaced by the new one."""
        if not values:
            return
        dialect = self._engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            for value in values:  # other dialects: select-then-write, enough for one driver
                session.merge(EpochRow(**value))
            return
        upsert: Callable[..., Any] = postgresql_insert if dialect == "postgresql" else sqlite_insert
        statement = upsert(EpochRow).values(values)
        key = ("experiment_id", "mst_id", "epoch")
        statement = statement.on_conflict_do_update(
            index_elements=list(key),
            set_={column: statement.excluded[column] for column in values[0] if column not in key},
        )
        session.execute(statement)

    def list_steps(self, name: str, mst_id: int | None = None) -> list[StepRecord]:
        with self._transaction(f"listing the steps of experiment {name!r}") as session:
            experiment = self._experiment(session, name)
            query = select(StepRow).where(StepRow.experiment_id == experiment.id)
            if mst_id is not None:
                query = query.where(StepRow.mst_id == mst_id)
            rows = session.scalars(query.order_by(StepRow.mst_id, StepRow.id)).all()
            return [_to_record(StepRecord, row) for row in rows]

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
            experiment = self._experiment(session, name)
            query = select(CommandRow).where(CommandRow.experiment_id == experiment.id)
            if pending_only:
                query = query.where(CommandRow.status == CommandStatus.PENDING.value)
            rows = session.scalars(query.order_by(CommandRow.id)).all()
            return [_command_record(row) for row in rows]

    def set_command_status(
        self, command_id: int, status: CommandStatus, message: str | None = None
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


# -- URLs and engines ----------------------------------------------------------------
def _resolve_url(url: str | None, path: str | os.PathLike[str] | None) -> URL:
    if url is not None and path is not None:
        raise StoreError(
            f"SQLStore takes a url or a path, not both; got url={_mask(str(url))!r} and "
            f"path={os.fspath(path)!r}: pass one"
        )
    if url is None:
        file = Path(path if path is not None else Path(_DEFAULT_ROOT) / DEFAULT_FILE).resolve()
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the folder {file.parent} for the SQLite store: {e}; pass a "
                "writable path= or a database URL"
            ) from e
        return URL.create("sqlite", database=str(file))
    try:
        parsed = make_url(str(url))
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise StoreError(
            f"store={_mask(str(url))!r} is not a database URL; write "
            f"'sqlite:///path/to/{DEFAULT_FILE}' for a SQLite file or "
            "'postgresql://user:password@host:5432/db' for PostgreSQL"
        ) from e
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, the 'postgres' extra
    return parsed


def _mask(url: str) -> str:
    """Hide the password of a URL SQLAlchemy could not parse."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _create_engine(url: URL, shown: str) -> Engine:
    backend = url.get_backend_name()
    options: dict[str, Any] = {}
    if backend == "sqlite" and _sqlite_file(url) is None:
        # In memory: one database per connection, so every session shares one connection.
        options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    elif backend != "sqlite":
        options["pool_pre_ping"] = True  # a server restart must not fail the driver's next write
        if backend == "postgresql" and "connect_timeout" not in url.query:
            options["connect_args"] = {"connect_timeout": _CONNECT_TIMEOUT_S}
    try:
        engine = create_engine(url, **options)
    except NoSuchModuleError as e:
        raise StoreError(
            f"store={shown!r} names a database SQLAlchemy does not know ({url.drivername!r}); "
            "use 'sqlite:///path/file.db' or 'postgresql://user@host/db'"
        ) from e
    except ImportError as e:
        extra = " (pip install 'modelhopper[postgres]')" if backend == "postgresql" else ""
        raise StoreError(
            f"store={shown!r} needs the database driver {e.name!r}, which is not installed{extra}"
        ) from e
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def _sqlite_file(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    return Path(database)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below): the sqlite3 module's implicit one is deferred.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers never block the driver's writes
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode, much faster
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A write takes the lock at BEGIN, so it waits (busy_timeout) instead of failing when a
        # deferred transaction finds another writer on its way from reading to writing.
        immediate = connection.get_execution_options().get(_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@lru_cache(maxsize=8)
def _process_started(pid: int) -> float:
    return psutil.Process(pid).create_time()


def _is_alive(row: WriterRow, host: str, now: datetime) -> bool:
    if row.host != host:
        return now - row.seen_at < _OTHER_HOST_STALE
    try:
        # The pid alone is not enough: the OS recycles it; the start time tells them apart.
        return abs(psutil.Process(row.pid).create_time() - row.process_started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


# -- values ------------------------------------------------------------------------------
def _reason(error: SQLAlchemyError) -> str:
    cause = getattr(error, "orig", None) or error
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line}"


def _newest_first(query: Any) -> Any:
    return query.order_by(ExperimentRow.created_at.desc(), ExperimentRow.id.desc())


def _enum(enum: type[E], value: Any, what: str) -> E:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in enum)
        raise StoreError(f"{what} must be a {enum.__name__} ({choices}), got {value!r}") from None


def _text(value: Any) -> Any:
    """Enums by value and paths as strings: what the columns hold."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _int64(what: str, value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise StoreError(
            f"{what} must fit in a signed 64-bit integer to be stored, got {value}; "
            "use a smaller seed (e.g. seed % 2**63)"
        )
    return value


def _check_mst_fields(fields: dict[str, Any], where: str) -> None:
    unknown = sorted(set(fields) - _MST_FIELDS)
    if unknown:
        raise StoreError(
            f"{where} got unknown MST field(s) {unknown}; the fields that can change are "
            f"{sorted(_MST_FIELDS)}"
        )
    if "seed" in fields:
        _int64("MST seed", fields["seed"])


def _check_same_mst(mst_id: int, steps: list[StepRecord], epochs: list[EpochRecord]) -> None:
    ids = [step.mst_id for step in steps] + [epoch.mst_id for epoch in epochs]
    others = sorted({i for i in ids if i != mst_id})
    if others:
        raise StoreError(
            f"record_visit records one MST's visit (mst_id={mst_id}) but got steps or epochs "
            f"of mst_id {others}; record each MST's results in its own call"
        )


def _apply_mst_fields(row: MSTRow, fields: dict[str, Any], now: datetime) -> None:
    for key, value in fields.items():
        setattr(row, key, _text(value))
    row.updated_at = now


# -- rows <-> records ----------------------------------------------------------------
def _experiment_record(row: ExperimentRow) -> ExperimentRecord:
    return _to_record(ExperimentRecord, row, status=RunStatus(row.status))


def _command_record(row: CommandRow) -> CommandRecord:
    return _to_record(CommandRecord, row, status=CommandStatus(row.status))


def _to_record(cls: type[R], row: Any, **converted: Any) -> R:
    """A record from a row: each field from the column of that name, or as ``converted``."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in converted]  # type: ignore[arg-type]
    return cls(**{name: getattr(row, name) for name in names}, **converted)


def _mst_row(experiment_id: int, record: MSTRecord, now: datetime) -> MSTRow:
    created = record.created_at or now
    seed = _int64(f"seed of MST {record.mst_id}", record.seed)
    return MSTRow(
        **_columns(
            record,
            experiment_id=experiment_id,
            seed=seed,
            created_at=created,
            updated_at=record.updated_at or created,
        )
    )


def _finished(
    record: StepRecord | EpochRecord, experiment_id: int, now: datetime
) -> dict[str, Any]:
    """The columns of a step or an epoch, finished now unless the record says when."""
    return _columns(record, experiment_id=experiment_id, finished_at=record.finished_at or now)


def _columns(record: Any, **converted: Any) -> dict[str, Any]:
    """A row's values from a record: each field as a column of that name, or as ``converted``."""
    values = {f.name: _text(getattr(record, f.name)) for f in dataclasses.fields(record)}
    return {**values, **converted}
