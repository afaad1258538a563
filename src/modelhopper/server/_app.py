"""The FastAPI application: the REST API under /api, the pages, the vendored static files.

Reads go straight to the store (``RunReader``); changes are human-in-the-loop
commands written through ``modelhopper.commands.submit``, the same path as the
CLI's ``modelhopper stop/clone/...``, and applied by the run's driver.
Every error is a JSON body ``{"error": ..., "detail": ...}``, never a traceback.
A request body larger than ``MAX_BODY_BYTES`` is refused with 413 before it is parsed.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelhopper.commands import CommandKind, submit
from modelhopper.errors import ConfigError, SpaceError, StoreError
from modelhopper.server._models import (
    AddIn,
    CloneIn,
    CommandOut,
    CurvesOut,
    EpochPage,
    ErrorOut,
    EventOut,
    MSTOut,
    MSTPage,
    PriorityIn,
    ResourcesOut,
    RunDetailOut,
    RunOut,
    TimelineOut,
)
from modelhopper.server._msts import MST_SORT_KEYS, page_msts
from modelhopper.server._queries import NotFoundError, RunReader
from modelhopper.server._render import STATIC
from modelhopper.store import SQLStore

__all__ = ["MAX_BODY_BYTES", "create_app"]

log = logging.getLogger("modelhopper.server")
MAX_ID = 2**53  # ids beyond this are no one's; bounding them keeps the database driver happy
MAX_BODY_BYTES = 2**20  # 1 MiB: a command's JSON body takes a few hundred bytes

RunName = Annotated[str, PathParam(min_length=1, max_length=255, description="the run's name")]
MSTId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="the MST's id")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 422, 503)
}


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def create_app(store: SQLStore, *, token: str) -> FastAPI:
    """The dashboard app on ``store``; mutating requests need ``Authorization: Bearer token``."""
    if not token:
        raise ConfigError("token must be a non-empty string; generate one with new_token()")
    app = FastAPI(
        title="modelhopper dashboard",
        description="Runs, MSTs, learning curves, workers' timelines, and human-in-the-loop "
        "commands (POST endpoints need the dashboard's bearer token).",
        version="1",
        responses=_ERRORS,
    )
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    reader = RunReader(store)
    app.state.reader, app.state.store, app.state.token = reader, store, token
    _add_error_handlers(app)
    app.include_router(_api_router(reader, store))
    from modelhopper.server._pages import pages_router

    app.include_router(pages_router(reader))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    return app


# -- request bodies ------------------------------------------------------------------
class _BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by its Content-Length or as
    it streams in (chunked), before the app reads any of it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:  # the whole body (at most limit bytes), then the app reads it from here
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body: list[dict[str, Any]] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replay() -> Any:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        message = (
            f"the request body is larger than {self.limit:,} bytes, this server's limit "
            "(MAX_BODY_BYTES); a command's JSON body takes a few hundred bytes"
        )
        await _error(413, message)(scope, receive, send)


# -- errors ------------------------------------------------------------------------
def _error(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": message, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return _error(e.status, e.message)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, e: NotFoundError) -> JSONResponse:
        return _error(404, str(e))

    @app.exception_handler(SpaceError)
    async def bad_params(request: Request, e: SpaceError) -> JSONResponse:
        return _error(422, str(e))

    @app.exception_handler(ConfigError)
    async def conflict(request: Request, e: ConfigError) -> JSONResponse:
        return _error(409, str(e))

    @app.exception_handler(StoreError)
    async def store_down(request: Request, e: StoreError) -> JSONResponse:
        return _error(503, f"the store cannot be read or written: {e}")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")),
             "type": str(err.get("type", ""))}
            for err in e.errors()
        ]  # fmt: skip
        summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in detail[:5])
        return _error(422, f"invalid request: {summary}", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = str(e.detail)
        if e.status_code == 404:
            path = request.url.path
            message = f"no such page or endpoint: {path}; the API is documented at /docs"
        return _error(e.status_code, message)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return _error(
            500, f"internal error ({type(e).__name__}); the dashboard's log has the details"
        )


# -- authentication --------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="the token printed by modelhopper dashboard")


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Mutating requests carry ``Authorization: Bearer <the dashboard's token>``."""
    if credentials is None:
        raise APIError(
            401,
            "this request changes a run, so it needs the dashboard's token: send the header "
            "'Authorization: Bearer <token>' (the token is printed when `modelhopper "
            "dashboard` starts, or set with MODELHOPPER_TOKEN)",
        )
    token: str = request.app.state.token
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise APIError(
            401,
            "the bearer token is not this dashboard's; use the token printed when "
            "`modelhopper dashboard` started (or MODELHOPPER_TOKEN)",
        )


# -- the API ------------------------------------------------------------------------------
def _api_router(reader: RunReader, store: SQLStore) -> Any:
    from fastapi import APIRouter

    api = APIRouter(prefix="/api")
    auth = [Depends(require_token)]

    @api.get("/runs", response_model=list[RunOut], summary="List the runs, newest first")
    def list_runs() -> Any:
        return reader.list_runs()

    @api.get("/runs/{run}", response_model=RunDetailOut, summary="A run's settings and space")
    def get_run(run: RunName) -> Any:
        return reader.run(run)

    @api.get("/runs/{run}/provenance", response_model=dict[str, Any], summary="Provenance")
    def get_provenance(run: RunName) -> Any:
        return reader.provenance(run)

    @api.get("/runs/{run}/msts", response_model=MSTPage, summary="A page of the run's MSTs")
    def list_msts(
        run: RunName,
        status: Annotated[str | None, Query(max_length=32)] = None,
        q: Annotated[
            str | None, Query(max_length=200, description="words each found in 'name=value'")
        ] = None,
        sort: Annotated[
            str, Query(max_length=100, description=f"{', '.join(MST_SORT_KEYS)} or param:NAME")
        ] = "mst_id",
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> Any:
        if sort not in MST_SORT_KEYS and not sort.startswith("param:"):
            raise APIError(
                422,
                f"sort must be one of {', '.join(MST_SORT_KEYS)} or param:NAME, got {sort!r}",
            )
        matched = [0]

        def page(every: list[Any]) -> list[Any]:
            matched[0], items = page_msts(
                every, status=status, query=q, sort=sort, descending=order == "desc",
                offset=offset, limit=limit,
            )  # fmt: skip
            return items

        info, n_msts, items = reader.msts(run, page)
        return {
            "run": run, "metric": info["metric"], "direction": info["direction"],
            "total": matched[0], "n_msts": n_msts, "offset": offset, "limit": limit,
            "items": [vars(s) for s in items],
        }  # fmt: skip

    @api.get("/runs/{run}/msts/{mst_id}", response_model=MSTOut, summary="One MST")
    def get_mst(run: RunName, mst_id: MSTId) -> Any:
        return vars(reader.mst(run, mst_id))

    @api.get(
        "/runs/{run}/curves",
        response_model=CurvesOut,
        summary="Learning curves of one metric, downsampled",
    )
    def get_curves(
        run: RunName,
        metric: Annotated[str | None, Query(max_length=100)] = None,
        mst_ids: Annotated[
            str | None, Query(max_length=5000, description="comma-separated ids [default: top]")
        ] = None,
        top: Annotated[int, Query(ge=1, le=500, description="at most this many MSTs")] = 50,
        max_points: Annotated[int, Query(ge=2, le=2000)] = 200,
    ) -> Any:
        ids = _parse_ids(mst_ids)
        return reader.curves(run, metric=metric, mst_ids=ids, top=top, max_points=max_points)

    @api.get("/runs/{run}/epochs", response_model=EpochPage, summary="Per-epoch history")
    def list_epochs(
        run: RunName,
        mst_id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> Any:
        total, items = reader.epochs(run, mst_id=mst_id, offset=offset, limit=limit)
        return {"run": run, "total": total, "offset": offset, "limit": limit, "items": items}

    @api.get("/runs/{run}/events", response_model=list[EventOut], summary="Events, oldest first")
    def list_events(
        run: RunName,
        after_id: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        newest: Annotated[
            bool, Query(description="the last `limit` events, not the first")
        ] = False,
        skip_visits: Annotated[
            bool,
            Query(
                description="leave out the events of each visit and epoch (with newest: "
                "among the last 20,000 events)"
            ),
        ] = False,
    ) -> Any:
        return reader.events(
            run, after_id=after_id, limit=limit, newest=newest, skip_visits=skip_visits
        )

    @api.get("/runs/{run}/timeline", response_model=TimelineOut, summary="Workers' timeline")
    def get_timeline(
        run: RunName, last: Annotated[int, Query(ge=1, le=20000, description="visits")] = 2000
    ) -> Any:
        return reader.timeline(run, last=last)

    @api.get("/runs/{run}/resources", response_model=ResourcesOut, summary="Resource totals")
    def get_resources(run: RunName) -> Any:
        return reader.resources(run)

    @api.get("/runs/{run}/commands", response_model=list[CommandOut], summary="Commands")
    def list_commands(run: RunName, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        return reader.commands(run, limit=limit)

    @api.get("/runs/{run}/commands/{command_id}", response_model=CommandOut, summary="A command")
    def get_command(run: RunName, command_id: Annotated[int, PathParam(ge=0, le=MAX_ID)]) -> Any:
        return reader.command(run, command_id)

    def send(run: str, kind: CommandKind, payload: dict[str, Any]) -> Any:
        if "mst_id" in payload:
            reader.mst(run, payload["mst_id"])  # 404 for an unknown MST
        else:
            reader.run(run)
        record = submit(store, run, kind, payload)
        return JSONResponse(
            CommandOut.model_validate(vars(record)).model_dump(mode="json"), status_code=202
        )

    commands: dict[str, Any] = {
        "status_code": 202, "response_model": CommandOut, "dependencies": auth,
    }  # fmt: skip

    @api.post("/runs/{run}/msts/{mst_id}/stop", summary="Stop an MST", **commands)
    def stop_mst(run: RunName, mst_id: MSTId) -> Any:
        return send(run, CommandKind.STOP, {"mst_id": mst_id})

    @api.post("/runs/{run}/msts/{mst_id}/resume", summary="Resume a stopped MST", **commands)
    def resume_mst(run: RunName, mst_id: MSTId) -> Any:
        return send(run, CommandKind.RESUME, {"mst_id": mst_id})

    @api.post("/runs/{run}/msts/{mst_id}/clone", summary="Clone an MST with changes", **commands)
    def clone_mst(run: RunName, mst_id: MSTId, body: CloneIn) -> Any:
        payload = {"mst_id": mst_id, **body.model_dump()}
        return send(run, CommandKind.CLONE, payload)

    @api.post("/runs/{run}/msts/{mst_id}/priority", summary="Set an MST's priority", **commands)
    def set_priority(run: RunName, mst_id: MSTId, body: PriorityIn) -> Any:
        return send(run, CommandKind.PRIORITY, {"mst_id": mst_id, "priority": body.priority})

    @api.post("/runs/{run}/msts", summary="Add an MST", **commands)
    def add_mst(run: RunName, body: AddIn) -> Any:
        return send(run, CommandKind.ADD, body.model_dump())

    return api


def _parse_ids(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or len(part) > 15:
            raise APIError(
                422, f"mst_ids must be comma-separated MST ids such as 0,3,7; got {part!r} in it"
            )
        ids.append(int(part))
    return ids
