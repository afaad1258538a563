"""The HTML pages: a runs list and a run page, server-rendered with Jinja2.

The pages carry no data beyond the run's name and settings: the run page's
script (static/dashboard.js) reads the JSON API and refreshes itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from modelhopper.server._queries import RunReader

__all__ = ["pages_router", "TEMPLATES"]

TEMPLATES = Path(__file__).with_name("templates")


def pages_router(reader: RunReader) -> APIRouter:
    templates = Jinja2Templates(directory=TEMPLATES)
    pages = APIRouter(include_in_schema=False)

    @pages.get("/", response_class=HTMLResponse)
    def runs_page(request: Request) -> Any:
        return templates.TemplateResponse(request, "runs.html", {"runs": reader.list_runs()})

    @pages.get("/runs/{run}", response_class=HTMLResponse)
    def run_page(request: Request, run: str) -> Any:
        info = reader.run(run)
        return templates.TemplateResponse(
            request, "run.html", {"run": info, "metrics": reader.metric_names(run)}
        )

    return pages
