"""Backups and retention over HTTP (role admin); the work is in :mod:`tuneloop.monitor.operations`."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException
from fastapi.concurrency import run_in_threadpool

from tuneloop.monitor.api.deps import Admin, RuntimeDep
from tuneloop.monitor.api.schemas import BackupInfo, BackupListItem, BackupRequest, RetentionInfo, RetentionRequest
from tuneloop.monitor.config import Settings
from tuneloop.monitor.operations import backup, default_backup_name, list_backups, run_retention

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def backups_dir(settings: Settings) -> Path:
    return settings.data_dir / "backups"


@router.post("/backup", response_model=BackupInfo, summary="Back up the store (consistent, while serving)",
             responses={409: {"description": "A backup with this name exists"},
                        507: {"description": "The disk is full (nothing half-written is left behind)"}})
async def post_backup(_: Admin, rt: RuntimeDep, body: Annotated[BackupRequest | None, Body()] = None) -> Any:
    """Export every table (Parquet, one snapshot) and the model versions to ``<data_dir>/backups/<name>``.

    Writes keep flowing meanwhile; the backup holds every row acknowledged before it started.
    Restore it offline with ``tuneloop restore``.
    """
    body = body or BackupRequest()
    name = body.name or default_backup_name()
    dest = backups_dir(rt.settings) / name
    try:
        result = await run_in_threadpool(backup, rt.store, dest,
                                         models_dir=rt.settings.models_dir if body.include_models else None)
    except FileExistsError as e:
        raise HTTPException(409, str(e)) from None
    return result.as_json()


@router.get("/backups", response_model=list[BackupListItem], summary="Backups under <data_dir>/backups")
def get_backups(_: Admin, rt: RuntimeDep) -> Any:
    return list_backups(backups_dir(rt.settings))


@router.post("/retention", response_model=RetentionInfo, summary="Delete raw rows older than retention.raw_days")
async def post_retention(_: Admin, rt: RuntimeDep, body: Annotated[RetentionRequest | None, Body()] = None) -> Any:
    """Run the retention job now (it also runs every ``retention.interval_hours``): hourly rollups stay."""
    raw_days = (body.raw_days if body else None) or rt.settings.retention.raw_days
    result = await run_in_threadpool(run_retention, rt.store, raw_days,
                                     pending_hours=rt.settings.retention.pending_feedback_hours)
    return {**result.as_json(), "cutoff": result.cutoff.replace(tzinfo=UTC)}  # the store's naive UTC, made explicit
