"""The app-wide error policy: which exception becomes which HTTP answer.

* 401/403 from :class:`~tuneloop.monitor.auth.AuthError` (401 carries ``WWW-Authenticate``);
* 404 for an unknown project, wherever it is found;
* 422 bodies that list each problem with its path but never echo huge inputs back;
* 503 + ``Retry-After`` when the write queue is full or the writer is stopping;
* 507 + ``Retry-After`` when the disk is full (the server keeps serving reads);
* a last-resort 500 that logs the traceback and never returns it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tuneloop.monitor.auth import AuthError
from tuneloop.monitor.config import Settings
from tuneloop.monitor.projects import UnknownProject
from tuneloop.monitor.storage import StoreFull, StoreRejected, StoreUnavailable
from tuneloop.monitor.writer import WriteQueueFull, WriterStopped

log = logging.getLogger(__name__)


def _json_safe(value: Any, limit: int = 200) -> Any:
    """A small, JSON- and UTF-8-encodable stand-in for a rejected input (never echo megabytes back)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str | bytes):
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        text = text if len(text) <= limit else text[:limit] + "..."
        return text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    if value is None or isinstance(value, bool | int | float):
        return value
    return None


def _trim(err: dict[str, Any]) -> dict[str, Any]:
    out = {"type": err.get("type"), "loc": [_json_safe(x) for x in err.get("loc", ())],
           "msg": _json_safe(str(err.get("msg")), 1000), "input": _json_safe(err.get("input"))}
    if isinstance(err.get("ctx"), dict):
        out["ctx"] = {k: _json_safe(v) if v is None or isinstance(v, str | int | float) else str(v)
                      for k, v in err["ctx"].items()}
    return out


def install(app: FastAPI, settings: Settings) -> None:
    """Register the policy's exception handlers on ``app``."""

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(UnknownProject)
    async def _unknown_project(request: Request, exc: UnknownProject) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(StoreFull)
    async def _store_full(request: Request, exc: StoreFull) -> JSONResponse:
        log.error("write refused: %s", exc)  # the operator must free space; the server keeps serving
        return JSONResponse({"detail": f"insufficient storage: {exc}; free disk space and retry"}, status_code=507,
                            headers={"Retry-After": "30"})

    @app.exception_handler(StoreRejected)
    async def _store_rejected(request: Request, exc: StoreRejected) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("database unavailable: %s", exc)  # the store reconnects by itself on the next request
        retry = str(settings.server.retry_after_seconds)
        detail = f"database unavailable, the request was not acknowledged; retry it: {exc}"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": retry})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_trim(e) for e in exc.errors()]}, status_code=422)

    @app.exception_handler(WriteQueueFull)
    async def _queue_full(request: Request, exc: WriteQueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(WriterStopped)
    async def _stopping(request: Request, exc: WriterStopped) -> JSONResponse:
        retry = str(settings.server.retry_after_seconds)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": retry})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)
