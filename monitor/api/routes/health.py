"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tuneloop.monitor.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: DB open and background services started")
def readyz(runtime: RuntimeDep) -> JSONResponse:
    checks, info = runtime.readiness()
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": checks, **({"info": info} if info else {})}
    return JSONResponse(body, status_code=200 if ok else 503)
