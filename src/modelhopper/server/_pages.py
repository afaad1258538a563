"""The HTML pages: a runs list and a run page, server-rendered with Jinja2.

The pages carry no data beyond the run's name and settings: the run page's
script (static/dashboard.js) reads the JSON API and refreshes itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from modelhopper.server._queries import RunReader
from modelhopper.server._render import LIVE, TEMPLATES, run_context

__all__ = ["pages_router"]


def pages_router(reader: RunReader) -> APIRouter:
    templates = Jinja2Templates(directory=TEMPLATES)
    pages = APIRouter(include_in_schema=False)

    @pages.get("/", response_class=HTMLResponse)
    def runs_page(request: Request) -> Any:
        context = {"runs": reader.list_runs(), **LIVE}
        return templates.TemplateResponse(request, "runs.html", context)

    @pages.get("/runs/{run}", response_class=HTMLResponse)
    def run_page(request: Request, run: str) -> Any:
        return templates.TemplateResponse(request, "run.html", run_context(reader, run, live=True))

    return pages
