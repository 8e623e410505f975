"""The HTTP API (Starlette): OpenAI's Videos API shape over :class:`~.jobs.JobManager`, server-sent events,
Prometheus metrics, health, and the playground page.

    POST   /v1/videos                       JSON or multipart form -> 202, the video job object
    GET    /v1/videos?limit=&after=&order=  {"object": "list", "data": [...], "has_more", "first_id", "last_id"}
    GET    /v1/videos/{id}                  the job object (status, progress 0-100, queue_position, eta_seconds...)
    GET    /v1/videos/{id}/content?variant=video|thumbnail|gif|mp4|tokens|sr_tokens&sample=K
    GET    /v1/videos/{id}/events           server-sent events: progress, frame, completed, failed, cancelled
    POST   /v1/videos/{id}/cancel           abort, keep the record (status cancelled)
    DELETE /v1/videos/{id}                  abort for real, then delete -> {"id", "object": "video.deleted", ...}
    GET    /v1/models   GET /health (200 ready, 503 loading / draining)   GET /metrics   GET / (playground)

Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``. With an API key every ``/v1``
route needs ``Authorization: Bearer <key>`` (compared in constant time); ``/health``, ``/metrics`` and the page
do not (the page asks for the key and sends it itself).

Starlette, not FastAPI: every constraint of a request already lives in ``SamplingParams`` (one copy, with
messages naming the field); FastAPI's value is a second, Pydantic, copy of each constraint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .jobs import JobManager
from .params import InvalidRequest, parse_create
from .prometheus import CONTENT_TYPE
from .store import JobStore

MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted (a prompt is at most a few hundred bytes; beyond: 413)."""
MAX_LIST_LIMIT = 100
API_KEY_ENV = "COGVIDEO_API_KEY"


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status in (401, 403):
        kind = "authentication_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _invalid(error: InvalidRequest) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return error_response(error.status, str(error), param=error.param, code=error.code, headers=headers)


class _Auth:
    """ASGI middleware: ``/v1`` routes need the bearer key (when one is set)."""

    def __init__(self, app, api_key: str | None):
        self.app, self.key = app, None if api_key is None else api_key.encode()
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if self.key is not None and scope["type"] == "http" and scope["path"].startswith("/v1"):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if not header:
                response = error_response(401, "missing API key: send 'Authorization: Bearer <key>'",
                                          code="missing_api_key")
                return await response(scope, receive, send)
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return await error_response(401, "incorrect API key", code="invalid_api_key")(scope, receive, send)
        return await self.app(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidRequest(f"the body is {declared} bytes; at most {limit} are accepted", code="body_too_large",
                             status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidRequest(f"the body is over {limit} bytes, the most accepted", code="body_too_large",
                                 status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _create_body(request: Request) -> tuple[dict, bool]:
    """The decoded body and whether it was a form."""
    body = await _read_body(request, request.app.state.max_body_bytes)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded" and body.lstrip().startswith(b"{"):
        kind = "application/json"  # curl -d '{...}' without a content type
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form()
        except Exception as error:  # noqa: BLE001  (a malformed form is the client's error)
            raise InvalidRequest(f"the form could not be read: {error}", code="invalid_body", status=400) from None
        return dict(form.multi_items()), True
    if kind not in ("application/json", ""):
        raise InvalidRequest(f"send application/json or a multipart form, not {kind!r}", code="unsupported_media_type",
                             status=415)
    try:
        return json.loads(body), False
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}", code="invalid_json", status=400) from None


def create_app(load_engine: Callable[[], object], store: str, *, api_key: str | None = None,
               model_id: str = "cogvideo", max_queued: int = 64, retention_s: float | None = 24 * 3600.0,
               shutdown_timeout_s: float = 30.0, max_body_bytes: int = MAX_BODY_BYTES,
               async_engine_kwargs: dict | None = None, connect: Callable[[], Awaitable[object]] | None = None):
    """The ASGI app. ``load_engine()`` makes the :class:`~cogvideo_engine.api.Engine` (called in a worker thread
    at start; ``/health`` says 503 until it returns); ``store``: the job-store folder. The other arguments: see
    :class:`~.jobs.JobManager`; ``async_engine_kwargs`` go to the :class:`~cogvideo_engine.AsyncEngine`.
    ``connect`` (instead of ``load_engine``): awaited at start for the engine client of engines elsewhere (the
    Ray Serve replicas of :mod:`.ray_app`)."""
    manager = JobManager(JobStore(store), model_id=model_id, max_queued=max_queued, retention_s=retention_s,
                         shutdown_timeout_s=shutdown_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        starting = asyncio.get_running_loop().create_task(manager.start(load_engine, connect=connect,
                                                                       async_engine_kwargs=async_engine_kwargs))
        try:
            yield
        finally:
            manager.begin_drain()
            await starting
            await manager.shutdown()

    def known(request: Request):
        return manager.known(request.path_params["video_id"])

    async def create(request: Request):
        body, form = await _create_body(request)
        prompt, params, openai = parse_create(body, form=form)
        job = await manager.create(prompt, params, openai)
        return JSONResponse(manager.job_object(job), status_code=202)

    async def listing(request: Request):
        q = request.query_params
        limit = q.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be an integer in 1..{MAX_LIST_LIMIT}, got {limit!r}", param="limit")
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}", param="order")
        jobs, more = manager.page(int(limit), q.get("after"), order)
        data = [manager.job_object(j) for j in jobs]
        return JSONResponse({"object": "list", "data": data, "has_more": more,
                             "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    async def retrieve(request: Request):
        return JSONResponse(manager.job_object(known(request)))

    async def content(request: Request):
        q = request.query_params
        sample = q.get("sample", "0")
        if not sample.isdigit():
            raise InvalidRequest(f"sample must be a non-negative integer, got {sample!r}", param="sample")
        data, media, name = await manager.content(request.path_params["video_id"], q.get("variant", "video"),
                                                  int(sample))
        return Response(data, media_type=media, headers={"Content-Disposition": f'inline; filename="{name}"'})

    async def events(request: Request):
        job = known(request)
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        return StreamingResponse(job.log.follow(last, stop=lambda: manager.stopping), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def cancel(request: Request):
        job = await manager.cancel(known(request).id)
        return JSONResponse(manager.job_object(job))

    async def delete(request: Request):
        job_id = known(request).id
        await manager.delete(job_id)
        return JSONResponse({"id": job_id, "object": "video.deleted", "deleted": True})

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": manager.model_id, "object": "model",
                                                         "created": 0, "owned_by": "cogvideo-engine"}]})

    async def health(request: Request):
        if manager.state == "ready":
            return JSONResponse({"status": "ok"})
        body = {"status": manager.state}
        if manager.load_error is not None:
            body["error"] = f"{type(manager.load_error).__name__}: {manager.load_error}"
        return JSONResponse(body, status_code=503)

    async def prometheus(request: Request):
        return Response(manager.metrics.render(), media_type=CONTENT_TYPE)

    async def playground(request: Request):
        page = resources.files("cogvideo_engine.service").joinpath("static/playground.html").read_bytes()
        return Response(page, media_type="text/html; charset=utf-8")

    def guarded(handler):
        async def run(request: Request):
            try:
                return await handler(request)
            except InvalidRequest as error:
                return _invalid(error)
        return run

    routes = [
        Route("/", playground, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/videos", guarded(create), methods=["POST"]),
        Route("/v1/videos", guarded(listing), methods=["GET"]),
        Route("/v1/videos/{video_id}", guarded(retrieve), methods=["GET"]),
        Route("/v1/videos/{video_id}", guarded(delete), methods=["DELETE"]),
        Route("/v1/videos/{video_id}/content", guarded(content), methods=["GET"]),
        Route("/v1/videos/{video_id}/events", guarded(events), methods=["GET"]),
        Route("/v1/videos/{video_id}/cancel", guarded(cancel), methods=["POST"]),
    ]

    async def http_error(request: Request, error: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return error_response(error.status_code, str(error.detail), code=code, headers=error.headers)

    async def server_error(request: Request, error: Exception):
        return error_response(500, f"internal error: {type(error).__name__}: {error}", code="internal_error")

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.manager = manager
    app.state.max_body_bytes = max_body_bytes
    return _Auth(app, api_key or None)


def manager_of(app) -> JobManager:
    """The :class:`~.jobs.JobManager` behind an app made by :func:`create_app`."""
    return app.state.manager
