"""SQLStore: the conformance suite on SQLite and PostgreSQL, then what is SQL-specific."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from modelhopper.errors import StoreError
from modelhopper.store import (
    EventKind,
    ExperimentRecord,
    RunStatus,
    SQLStore,
    migrations,
    open_store,
)
from modelhopper.store._schema import Base
from modelhopper.testing import StoreConformance


class TestSQLStore(StoreConformance):
    @pytest.fixture
    def store(self, store_url: str) -> Iterator[SQLStore]:
        with SQLStore(store_url) as store:
            yield store


def _experiment(name: str = "run-a") -> ExperimentRecord:
    return ExperimentRecord(
        name=name, status=RunStatus.RUNNING, procedure="GridSearch", spec={}, space={},
        seed=0, n_workers=1, run_dir=f"/runs/{name}",
    )  # fmt: skip


# -- migrations -------------------------------------------------------------------------
def test_fresh_database_is_migrated_to_head_and_matches_the_orm(store_url: str) -> None:
    with SQLStore(store_url) as store:
        assert store.schema_version() == migrations.head_revision() == "0003"
    engine = create_engine(store_url)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diffs = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert tables == {*Base.metadata.tables, "alembic_version"}
    assert diffs == []


def test_database_at_head_is_not_migrated_again(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SQLStore(store_url) as store:
        store.create_experiment(_experiment())

    def refuse(connection: Any) -> None:
        raise AssertionError("the store ran migrations on a database at head")

    monkeypatch.setattr(migrations, "upgrade_to_head", refuse)
    with SQLStore(store_url) as store:
        assert store.get_experiment("run-a").procedure == "GridSearch"
        assert store.schema_version() == migrations.head_revision()
    with SQLStore(path=tmp_path / "fresh.db") as fresh:  # created at head, not migrated
        assert fresh.schema_version() == migrations.head_revision()


def test_a_0001_database_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path}/old.db"
    command.upgrade(migrations.alembic_config(url), "0001")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO experiments (name, status, procedure, spec, space, seed, n_workers, "
                "run_dir, provenance, created_at, updated_at) VALUES ('old', 'completed', "
                "'GridSearch', '{}', '{}', 0, 1, '/r', '{}', '2026-01-01', '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO msts (experiment_id, mst_id, params, seed, status, parent, n_epochs, "
                "created_at, updated_at) VALUES (1, 0, '{\"lr\": 0.1}', 3, 'completed', NULL, 2, "
                "'2026-01-01', '2026-01-01')"
            )
        )
    engine.dispose()
    with SQLStore(url) as store:
        assert store.schema_version() == "0003"
        (mst,) = store.list_msts("old")
    assert (mst.params, mst.warm_start, mst.priority) == ({"lr": 0.1}, False, 0)


def test_database_of_a_newer_modelhopper_is_refused(store_url: str) -> None:
    SQLStore(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"revision '9999'.*newest is '0003'.*upgrade modelhopper"):
        SQLStore(store_url)


# -- opening --------------------------------------------------------------------------
def test_open_store_defaults_to_a_sqlite_file_under_root(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet" / "runs"
    with open_store(None, root=root) as store:
        store.create_experiment(_experiment())
        assert store.url == f"sqlite:///{root / 'modelhopper.db'}"
    assert (root / "modelhopper.db").is_file()
    with open_store(f"sqlite:///{root / 'modelhopper.db'}") as again:
        assert [e.name for e in again.list_experiments()] == ["run-a"]


def test_sqlstore_without_arguments_uses_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with SQLStore() as store:
        store.create_experiment(_experiment())
    monkeypatch.chdir(tmp_path.parent)  # the store keeps its absolute path
    with SQLStore(path=tmp_path / "modelhopper-runs" / "modelhopper.db") as store:
        assert store.get_experiment("run-a").name == "run-a"


def test_sqlite_connections_use_wal_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    with SQLStore(path=tmp_path / "s.db") as store, store._engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA busy_timeout").scalar() == 30_000
        assert pragma("PRAGMA foreign_keys").scalar() == 1


def test_in_memory_sqlite_works_across_calls() -> None:
    with SQLStore("sqlite://") as store:
        store.create_experiment(_experiment())
        assert store.get_experiment("run-a").n_workers == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "pattern"),
    [
        ("runs/modelhopper.db", r"'runs/modelhopper.db' is not a database URL.*'sqlite:///"),
        ("postgresql://ann:s3cret@host:port/db", r"'postgresql://ann:\*\*\*@host:port/db' is not"),
        ("foo://host/db", r"names a database SQLAlchemy does not know \('foo'\)"),
        ("mysql://ann@host/db", r"needs the database driver 'MySQLdb'"),
        (
            "sqlite:////nonexistent-dir/sub/x.db",
            r"cannot open the store at sqlite:////nonexistent-dir/sub/x.db: .*folder exists",
        ),
    ],
)
def test_bad_urls_raise_store_error(url: str, pattern: str) -> None:
    with pytest.raises(StoreError, match=pattern) as raised:
        SQLStore(url)
    assert "s3cret" not in str(raised.value)


def test_unreachable_postgres_names_the_url_without_its_password() -> None:
    pytest.importorskip("psycopg", reason="needs psycopg: pip install 'modelhopper[postgres]'")
    port = _closed_port()
    with pytest.raises(StoreError) as raised:
        SQLStore(f"postgresql://ann:s3cret@127.0.0.1:{port}/runs")
    message = str(raised.value)
    assert f"postgresql+psycopg://ann:***@127.0.0.1:{port}/runs" in message
    assert "s3cret" not in message
    assert "check that the server is running" in message


def test_url_and_path_together_raise(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"a url or a path, not both"):
        SQLStore("sqlite://", path=tmp_path / "x.db")


# -- one driver per SQLite file ----------------------------------------------------------
# A second process with the store: "command" sends a command (as the CLI does), "drive" writes
# as a driver does, "crash" exits without closing the store. It answers with its warnings.
_OTHER_PROCESS = r"""
import json, os, sys, warnings
from modelhopper.store import EventKind, SQLStore
store = SQLStore(path=sys.argv[1])
print(json.dumps("ready"), flush=True)
for line in sys.stdin:
    action = line.strip()
    if action == "crash":
        os._exit(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if action == "command":
            store.add_command("run-a", "stop", {"mst_id": 0})
        else:
            store.add_event("run-a", EventKind.COMMAND, detail={"by": "other"})
    print(json.dumps([str(w.message) for w in caught]), flush=True)
"""


def _send(process: subprocess.Popen[str], action: str) -> None:
    assert process.stdin is not None
    process.stdin.write(action + "\n")
    process.stdin.flush()


def _ask(process: subprocess.Popen[str], action: str) -> Any:
    _send(process, action)
    assert process.stdout is not None
    return json.loads(process.stdout.readline())


def _without_warnings(call: Callable[[], object]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call()


def _writer_rows(path: Path, pid: int) -> int:
    with closing(sqlite3.connect(path)) as connection:
        query = "SELECT count(*) FROM writers WHERE pid = ?"
        return int(connection.execute(query, (pid,)).fetchone()[0])


def test_a_second_driver_process_on_sqlite_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelhopper.store import _sql

    monkeypatch.setattr(_sql, "_WRITER_CHECK_SECONDS", 0.0)  # check at every write, here
    path = tmp_path / "shared.db"
    warning = r"SQLite is for one driver process.*store=\"postgresql://user@host/db\""
    with SQLStore(path=path) as store:
        _without_warnings(lambda: store.create_experiment(_experiment()))
        other = subprocess.Popen(
            [sys.executable, "-c", _OTHER_PROCESS, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
        )  # fmt: skip
        try:
            assert other.stdout is not None and json.loads(other.stdout.readline()) == "ready"
            assert _ask(other, "command") == []  # sending commands is not driving
            _without_warnings(lambda: store.add_event("run-a", EventKind.HOPPED))

            (seen_by_other,) = _ask(other, "drive")
            assert "SQLite is for one driver process" in seen_by_other
            with pytest.warns(UserWarning, match=warning) as caught:
                store.add_event("run-a", EventKind.HOPPED)
            assert f"process {other.pid} " in str(caught[0].message)
            assert caught[0].filename == __file__  # it points at the caller of the store
            _without_warnings(lambda: store.add_event("run-a", EventKind.HOPPED))  # once
            assert _ask(other, "drive") == []  # once there too

            _send(other, "crash")
            assert other.wait(timeout=60) == 0
        finally:
            if other.poll() is None:
                other.kill()
                other.wait()
        # The crashed driver left its row; a store opened to resume is not warned about it.
        assert _writer_rows(path, other.pid) == 1
        with SQLStore(path=path) as resumed:
            _without_warnings(lambda: resumed.add_event("run-a", EventKind.RESUMED))
        assert _writer_rows(path, other.pid) == 0


def test_an_empty_database_gets_the_schema_the_migrations_build(tmp_path):
    """A new store is created from _schema.py and stamped at head, without running Alembic;
    running every migration must give the same schema, at the same revision."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    from modelhopper.store import _sql, migrations
    from modelhopper.store._schema import Base

    assert migrations.head_revision() == _sql.HEAD_REVISION
    migrated = create_engine(f"sqlite:///{tmp_path}/migrated.db")
    with migrated.begin() as connection:
        migrations.upgrade_to_head(connection)
    with migrated.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    store = SQLStore(f"sqlite:///{tmp_path}/fresh.db")
    assert store.schema_version() == _sql.HEAD_REVISION
    store.close()


def test_an_experiment_id_read_in_a_rolled_back_batch_is_not_reused(store_url: str) -> None:
    """The store remembers experiment ids (the hot paths ask per visit); one read inside a
    transaction that rolls back must be forgotten, or later writes would go to another run."""
    from modelhopper._vocabulary import MSTStatus
    from modelhopper.store import MSTRecord

    with SQLStore(store_url) as store:
        with pytest.raises(RuntimeError, match="undo"), store.batch():
            store.create_experiment(_experiment("a"))
            store.add_msts("a", [MSTRecord(0, {"lr": 1}, 0, MSTStatus.PENDING)])
            store.update_mst("a", 0, status=MSTStatus.RUNNING)  # reads a's id
            raise RuntimeError("undo")
        store.create_experiment(_experiment("b"))  # may take the id "a" had
        store.create_experiment(_experiment("a"))
        store.add_msts("b", [MSTRecord(0, {"lr": 2}, 0, MSTStatus.PENDING)])
        store.add_msts("a", [MSTRecord(0, {"lr": 1}, 0, MSTStatus.PENDING)])
        store.update_mst("a", 0, status=MSTStatus.COMPLETED)
        assert [m.status for m in store.list_msts("a")] == [MSTStatus.COMPLETED]
        assert [m.status for m in store.list_msts("b")] == [MSTStatus.PENDING]


def test_an_mst_added_in_a_rolled_back_batch_is_not_taken_as_known(store_url: str) -> None:
    """The store remembers which MSTs exist (a driver adds events for them at every
    decision); one added in a transaction that rolls back must be forgotten, or an event
    for it would get past the check and fail on the foreign key, worded as something else."""
    from modelhopper._vocabulary import MSTStatus
    from modelhopper.errors import StoreError
    from modelhopper.store import EventKind, MSTRecord

    with SQLStore(store_url) as store:
        store.create_experiment(_experiment("a"))
        store.add_msts("a", [MSTRecord(0, {"lr": 1}, 0, MSTStatus.PENDING)])
        with pytest.raises(RuntimeError, match="undo"), store.batch():
            store.add_msts("a", [MSTRecord(1, {"lr": 2}, 0, MSTStatus.PENDING)])
            store.add_events("a", [(EventKind.MST_STOPPED, 1, {})])
            raise RuntimeError("undo")
        with pytest.raises(StoreError, match=r"no MST with mst_id=1 \(its 1 MSTs have ids 0"):
            store.add_events("a", [(EventKind.MST_STOPPED, 1, {})])
        store.add_events("a", [(EventKind.MST_STOPPED, 0, {})])
        assert [(e.kind, e.mst_id) for e in store.list_events("a")] == [(EventKind.MST_STOPPED, 0)]
