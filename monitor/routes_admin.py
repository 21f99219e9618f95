"""Operational endpoints: status summary, the caller's identity."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from tuneloop.monitor.deps import DEFAULT, Ingest, Labeller, ProjectQuery, get_store
from tuneloop.monitor.status import status_summary
from tuneloop.monitor.storage import Store

router = APIRouter(prefix="/v1", tags=["admin"])


@router.get("/status", summary="Row counts, champion, latest drift checks, open alerts")
def get_status(
    _: Labeller, store: Annotated[Store, Depends(get_store)], project: ProjectQuery = DEFAULT
) -> dict[str, Any]:
    return status_summary(store, project)


@router.get("/whoami", summary="The calling token's name and role (any valid token)")
def whoami(principal: Ingest) -> dict[str, str]:
    """Lets a client (the dashboard) name its annotator and disable what its role may not do."""
    return {"name": principal.name, "role": principal.role}
