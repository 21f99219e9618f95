"""Prometheus metrics of the service and the ``GET /metrics`` route.

One process-wide :data:`REGISTRY`: every module registers its metrics here (the serving, embedder
and writer modules do), and ``/metrics`` renders it in the text exposition format. The route is
public when ``server.metrics_public`` (the default, fine on loopback) and needs role admin
otherwise. :class:`RequestMetrics` is a pure ASGI middleware timing every request by route
template (``/v1/checks/{check_id}/report``, not the raw path, so label values stay few).

Model health (drift per project and check, open alerts, accuracy, champion, label queue, last
retrain) comes from :class:`ModelHealthCollector`, which reads the store at scrape time: the
numbers are always those the API would answer, and no code path has to remember to update a
gauge. It lives in a registry of its own per running app, rendered after the process-wide one.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneloop.monitor.app import STARTUP_HOOKS, Context
from tuneloop.monitor.deps import check_role, get_ctx
from tuneloop.monitor.model_health import ModelHealthCollector

REGISTRY = CollectorRegistry(auto_describe=True)
# The standard process_*, python_info and python_gc_* series, as the default registry has them.
for _standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_standard)

ROWS = Counter(
    "tuneloop_rows", "Rows written by the collector, by kind (predictions|feedback) and outcome "
    "(accepted|duplicate|pending)", ["kind", "outcome"], registry=REGISTRY,
)
REJECTED = Counter(
    "tuneloop_requests_rejected", "Write requests refused before the store, by reason "
    "(queue_full|validation|too_large)", ["reason"], registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "tuneloop_request_duration_seconds", "HTTP request latency by method, route template and status",
    ["method", "route", "status"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WRITE_QUEUE_ROWS = Gauge(
    "tuneloop_write_queue_rows", "Rows queued for (or being written by) the single writer", registry=REGISTRY,
)
GROUP_COMMIT_ROWS = Histogram(
    "tuneloop_group_commit_rows", "Rows per write transaction of the group-commit writer", registry=REGISTRY,
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000),
)
GROUP_COMMIT_REQUESTS = Histogram(
    "tuneloop_group_commit_requests", "Requests coalesced into one write transaction", registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
GROUP_COMMIT_SECONDS = Histogram(
    "tuneloop_group_commit_seconds", "Duration of one group-commit write (including COMMIT)", registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class RequestMetrics:
    """ASGI middleware: observe ``tuneloop_request_duration_seconds`` for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
            REQUEST_SECONDS.labels(scope["method"], template, str(status)).observe(time.perf_counter() - start)


router = APIRouter(tags=["health"])


@router.get(
    "/metrics", summary="Prometheus metrics (public when server.metrics_public, else role admin)",
    response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(
    ctx: Annotated[Context, Depends(get_ctx)],
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    if not ctx.settings.server.metrics_public:
        check_role(ctx, authorization, "admin")
    body = generate_latest(REGISTRY)
    health = ctx.services.get("model_health")
    if health is not None:
        body += generate_latest(health)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def start_model_health(ctx: Context) -> None:
    """Give the app its model-health registry (one per app, so test servers in one process stay apart)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelHealthCollector(ctx.store))
    ctx.services["model_health"] = registry


STARTUP_HOOKS.append(start_model_health)
