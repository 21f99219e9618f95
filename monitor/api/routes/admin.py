"""Operational endpoints: status summary, the caller's identity."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tuneloop.monitor.api.deps import DEFAULT, Ingest, Labeller, ProjectQuery, StoreDep
from tuneloop.monitor.status import status_summary

router = APIRouter(prefix="/v1", tags=["admin"])


@router.get("/status", summary="Row counts, champion, latest drift checks, open alerts")
def get_status(_: Labeller, store: StoreDep, project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    return status_summary(store, project)


@router.get("/whoami", summary="The calling token's name and role (any valid token)")
def whoami(principal: Ingest) -> dict[str, str]:
    """Lets a client (the dashboard) name its annotator and disable what its role may not do."""
    return {"name": principal.name, "role": principal.role}
