"""Operational endpoints: status summary."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from tuneloop.monitor.deps import DEFAULT, Labeller, ProjectQuery, get_store
from tuneloop.monitor.status import status_summary
from tuneloop.monitor.store import Store

router = APIRouter(prefix="/v1", tags=["admin"])


@router.get("/status", summary="Row counts, champion, latest drift checks, open alerts")
def get_status(
    _: Labeller, store: Annotated[Store, Depends(get_store)], project: ProjectQuery = DEFAULT
) -> dict[str, Any]:
    return status_summary(store, project)
