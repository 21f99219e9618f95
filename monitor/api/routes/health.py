"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from tuneloop.monitor.app import Context
from tuneloop.monitor.deps import get_ctx

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: DB open and background services started")
def readyz(ctx: Annotated[Context, Depends(get_ctx)]) -> JSONResponse:
    checks = {"db": True, "started": ctx.ready}
    try:
        ctx.store.query("SELECT 1")
    except Exception:
        checks["db"] = False
    info = {}
    for name, service in ctx.services.items():
        ready = getattr(service, "ready", None)
        if ready is not None:
            checks[name] = bool(ready() if callable(ready) else ready)
        describe = getattr(service, "readiness_info", None)  # e.g. serving: {"default": "no model"}
        if callable(describe):
            info[name] = describe()
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": checks, **({"info": info} if info else {})}
    return JSONResponse(body, status_code=200 if ok else 503)
