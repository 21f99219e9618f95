"""``GET /metrics``: Prometheus text format (public when ``server.metrics_public``, else role admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tuneloop.monitor.api.deps import RuntimeDep, check_role
from tuneloop.monitor.metrics import REGISTRY

router = APIRouter(tags=["health"])


@router.get(
    "/metrics", summary="Prometheus metrics (public when server.metrics_public, else role admin)",
    response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(
    runtime: RuntimeDep, authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    if not runtime.settings.server.metrics_public:
        check_role(runtime, authorization, "admin")
    body = generate_latest(REGISTRY) + generate_latest(runtime.model_health)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
