"""Pure ASGI middleware every route shares: the request-body limit (413) and request timing."""

from __future__ import annotations

import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneloop.monitor import metrics


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than server.max_body_bytes = {limit} bytes")


class HttpOnly:
    """Base of tuneloop's pure ASGI middleware: lifespan and websocket messages pass straight through,
    HTTP requests go to :meth:`handle`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class BodyLimit(HttpOnly):
    """Pure ASGI middleware: 413 for bodies over ``max_bytes``.

    Checks the declared Content-Length before reading anything, and counts the bytes actually
    streamed (chunked uploads, lying headers), so no handler ever buffers more than the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.REJECTED.labels("too_large").inc()
        exc = BodyTooLarge(self.max_bytes)
        await JSONResponse({"detail": exc.detail}, status_code=413, headers={"Connection": "close"})(
            scope, receive, send)


class RequestMetrics(HttpOnly):
    """ASGI middleware: observe ``tuneloop_request_duration_seconds`` for every HTTP request."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.REQUEST_SECONDS.labels(scope["method"], template, str(status)).observe(time.perf_counter() - start)
