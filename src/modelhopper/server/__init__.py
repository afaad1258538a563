"""The dashboard and REST API: watch runs live and steer them from a browser.

Needs the ``dashboard`` extra (``pip install 'modelhopper[dashboard]'``); the rest
of modelhopper imports without it. ``modelhopper dashboard`` starts it::

    app = create_app(open_store(url), token=new_token())
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelhopper.errors import ConfigError

if TYPE_CHECKING:
    from modelhopper.store import SQLStore

__all__ = [
    "TOKEN_VARIABLE",
    "create_app",
    "new_token",
    "require_dashboard",
    "require_report",
    "serve",
    "write_report",
]

TOKEN_VARIABLE = "MODELHOPPER_TOKEN"
_NEEDED = ("fastapi", "uvicorn", "jinja2", "pydantic")


def require_dashboard() -> None:
    """Raise ``ConfigError`` naming the extra to install if a dashboard package is missing."""
    import importlib.util

    missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the dashboard needs {', '.join(missing)}, not installed here; install it "
            "with: pip install 'modelhopper[dashboard]'"
        )


def require_report() -> None:
    """A report needs only Jinja2; ``ConfigError`` naming the extra if it is missing."""
    import importlib.util

    if importlib.util.find_spec("jinja2") is None:
        raise ConfigError(
            "a report needs jinja2, not installed here; install it with: "
            "pip install 'modelhopper[dashboard]'"
        )


def write_report(store: SQLStore, run: str, out: str | os.PathLike[str]) -> Path:
    """Write run ``run``'s page as one self-contained HTML file; returns its path."""
    require_report()
    from modelhopper.server._render import write_report as _write_report

    return _write_report(store, run, out)


def new_token() -> str:
    """The token from ``MODELHOPPER_TOKEN``, or a new random one (URL-safe, 256 bits)."""
    return os.environ.get(TOKEN_VARIABLE) or secrets.token_urlsafe(32)


def create_app(store: SQLStore, *, token: str) -> Any:
    """The FastAPI app serving ``store``; see ``modelhopper.server._app``."""
    require_dashboard()
    from modelhopper.server._app import create_app as _create_app

    return _create_app(store, token=token)


def serve(store: SQLStore, *, host: str = "127.0.0.1", port: int = 8265, token: str) -> None:
    """Serve the dashboard with uvicorn until interrupted."""
    require_dashboard()
    import uvicorn

    uvicorn.run(create_app(store, token=token), host=host, port=port, log_level="warning")
