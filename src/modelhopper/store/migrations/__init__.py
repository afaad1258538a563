"""Schema migrations (Alembic), run by ``SQLStore`` itself when it opens a database.

No ``alembic.ini`` is needed: the configuration is built in code. To add a
revision after changing ``_schema.py``, autogenerate one against a database
at the current head and review it::

    python -c "from alembic import command; from modelhopper.store.migrations import \\
        alembic_config; command.revision(alembic_config('sqlite:///dev.db'), \\
        'what changed', autogenerate=True, rev_id='0002')"
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

__all__ = [
    "alembic_config",
    "current_revision",
    "head_revision",
    "known_revisions",
    "upgrade_to_head",
]

_HERE = Path(__file__).resolve().parent


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """Alembic's configuration for the store's migrations, on ``connection`` or ``url``."""
    config = Config()
    config.set_main_option("script_location", str(_HERE).replace("%", "%%"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    if head is None:  # only if versions/ were stripped from the install
        raise RuntimeError(f"no Alembic revisions under {_HERE / 'versions'}")
    return head


def known_revisions() -> set[str]:
    return {script.revision for script in _scripts().walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for a database without the store's tables."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(connection: Connection) -> None:
    """Run the missing migrations inside the connection's current transaction."""
    command.upgrade(alembic_config(connection=connection), "head")
