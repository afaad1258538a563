"""Databases for the store tests: a SQLite file per test and a PostgreSQL schema per test.

PostgreSQL tests run when ``MODELHOPPER_TEST_POSTGRES_URL`` names a database and a
user allowed to create schemas in it (``eval "$(scripts/start_postgres.sh)"`` starts a
server and prints it), or, without it, when the PostgreSQL server binaries are installed
(``apt-get install postgresql``): the tests then start a throwaway server with
``scripts/start_postgres.sh`` and stop it at the end of the session. Otherwise
they are skipped, or fail where ``MODELHOPPER_TEST_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "start_postgres.sh"
URL_VARIABLE = "MODELHOPPER_TEST_POSTGRES_URL"
HOW_TO_ENABLE = (
    f"set {URL_VARIABLE}=postgresql://user@host:port/db (a user allowed to create schemas there; "
    f'`eval "$(scripts/start_postgres.sh)"` starts a local one), or install the PostgreSQL '
    "server (apt-get install postgresql) so that the tests start one themselves"
)


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("MODELHOPPER_TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"MODELHOPPER_TEST_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _server_binaries_found() -> bool:
    installed = Path("/usr/lib/postgresql").glob("*/bin/initdb")  # Debian keeps them off PATH
    return shutil.which("initdb") is not None or any(installed)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL database the tests may create schemas in."""
    if importlib.util.find_spec("psycopg") is None:
        _skip_or_fail("PostgreSQL tests need psycopg: pip install 'modelhopper[postgres]'")
    if url := os.environ.get(URL_VARIABLE):
        yield url
        return
    if not _server_binaries_found():
        _skip_or_fail(f"no PostgreSQL server for the tests: {HOW_TO_ENABLE}")
    folder = tempfile.mkdtemp(prefix="modelhopper-pg-")
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", folder],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        _skip_or_fail(f"{SCRIPT.name} could not start a server ({started.stderr.strip()[-1500:]})")
    lines = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
    try:
        yield lines[URL_VARIABLE]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", folder], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def postgres_admin(postgres_server: str) -> Iterator[Engine]:
    url = make_url(postgres_server)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """A fresh, empty schema for one test (a URL whose search_path is it), dropped afterwards.

    A schema, not a database: CREATE DATABASE takes a third of a second, CREATE SCHEMA a
    millisecond, and the store keeps all its tables (alembic_version too) in the first schema
    of the search_path.
    """
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = postgres_admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with postgres_admin.connect() as connection:
        # A connection a test left open would block the DROP: fail the teardown instead.
        connection.execute(text("SET lock_timeout = '10s'"))
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a fresh database, for each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
