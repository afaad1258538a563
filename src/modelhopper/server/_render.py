"""Rendering the run page: live (served, reading the API) or as a self-contained report.

Needs only Jinja2, not FastAPI: ``modelhopper report RUN --out report.html`` writes
the run page with uPlot, the page's script and the run's data inlined, for people
who do not run a server.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelhopper.errors import ConfigError
from modelhopper.server._queries import RunReader
from modelhopper.store import SQLStore

__all__ = ["TEMPLATES", "STATIC", "run_context", "render_report", "write_report"]

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
LIVE = {"static": "/static", "home": "/", "inline": None}
REPORT_TOP = 50  # MSTs with a curve in a report, per metric
REPORT_VISITS = 5000  # the timeline's last visits in a report


def run_context(reader: RunReader, run: str, *, live: bool) -> dict[str, Any]:
    """What run.html needs: the run's settings, its metrics, and what its script reads."""
    info = reader.run(run)
    page = {
        "live": live,
        "run": {
            "name": info["name"], "status": info["status"], "metric": info["metric"],
            "direction": info["direction"], "space": info["space"],
            "objectives": info["spec"].get("objectives") or {},
        },
    }  # fmt: skip
    metrics = reader.metric_names(run) or [info["metric"]]
    return {"run": info, "metrics": metrics, "page": page, **LIVE}


def _plain(value: Any) -> Any:
    """JSON-ready: datetimes as ISO text."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat()))


def render_report(store: SQLStore, run: str) -> str:
    """The run page as one HTML file: data, uPlot and the script inlined; no server needed."""
    try:
        import jinja2
    except ImportError as e:
        raise ConfigError(
            "a report needs jinja2, which is not installed; install it with: "
            "pip install 'modelhopper[dashboard]'"
        ) from e
    reader = RunReader(store)
    context = run_context(reader, run, live=False)
    _, _, summaries = reader.msts(run)
    context["page"]["data"] = _plain(
        {
            "run": context["page"]["run"],
            "resources": reader.resources(run),
            "timeline": reader.timeline(run, last=REPORT_VISITS),
            "curves": {
                m: reader.curves(run, metric=m, mst_ids=None, top=REPORT_TOP, max_points=300)
                for m in context["metrics"]
            },
            "msts": {"msts": [vars(s) for s in summaries]},
            "events": reader.events(run, after_id=0, limit=100, newest=True, skip_visits=True),
        }
    )
    context.update(
        static="",
        home="#",
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        inline={
            "uplot_css": (STATIC / "uPlot.min.css").read_text(),
            "dashboard_css": (STATIC / "dashboard.css").read_text(),
            "uplot_js": (STATIC / "uPlot.iife.min.js").read_text(),
            "dashboard_js": (STATIC / "dashboard.js").read_text(),
        },
    )
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    return env.get_template("run.html").render(context)


def write_report(store: SQLStore, run: str, out: str | os.PathLike[str]) -> Path:
    """Write ``render_report`` to ``out``; returns the path written."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"out={str(path)!r} is a folder; give a file name such as report.html")
    if not path.parent.exists():
        raise ConfigError(
            f"the folder of out={str(path)!r} does not exist; create it or write elsewhere"
        )
    html = render_report(store, run)
    path.write_text(html, encoding="utf-8")
    return path
