"""Store plumbing: URLs, engines, SQLite settings, and which driver processes are alive."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from modelhopper.errors import StoreError
from modelhopper.store._schema import (
    WriterRow,
)

DEFAULT_FILE = "modelhopper.db"
DEFAULT_ROOT = Path("modelhopper-runs")  # runs, their files and the default store
_BUSY_TIMEOUT_MS = 30_000  # a reader or command writer holds the lock for milliseconds
_CONNECT_TIMEOUT_S = 10
_OTHER_HOST_STALE = timedelta(minutes=10)  # a writer on another host we cannot ask the OS about
_IMMEDIATE = "modelhopper_sqlite_immediate"


# -- URLs and engines ----------------------------------------------------------------
def _resolve_url(url: str | None, path: str | os.PathLike[str] | None) -> URL:
    if url is not None and path is not None:
        raise StoreError(
            f"SQLStore takes a url or a path, not both; got url={_mask(str(url))!r} and "
            f"path={os.fspath(path)!r}: pass one"
        )
    if url is None:
        file = Path(path if path is not None else DEFAULT_ROOT / DEFAULT_FILE).resolve()
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
