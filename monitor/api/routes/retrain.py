"""Retraining and the label queue over HTTP (thin: the behaviour is in retraining.py / label_queue.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tuneloop.monitor.api.deps import (
    DEFAULT,
    Admin,
    Labeller,
    ProjectQuery,
    RuntimeDep,
    require_known,
    resolve_project,
)
from tuneloop.monitor.api.schemas import RetrainRequest
from tuneloop.monitor.label_queue import STRATEGIES, label_queue, labels_saved, queue_size
from tuneloop.monitor.retraining import RetrainBusy, RetrainError, RunNotFound

router = APIRouter(prefix="/v1", tags=["retrain"])


@router.post("/retrain", summary="Start a retrain now (one at a time; 409 while one runs)", responses={
    409: {"description": "a run is already running (its `run_id` is in the answer), nothing new to train on, or "
                         "cooling down (with now=false)"}})
def start_retrain(
    principal: Admin, rt: RuntimeDep, project: ProjectQuery = DEFAULT,
    body: Annotated[RetrainRequest | None, Body()] = None,
) -> Any:
    body = body or RetrainRequest()
    project = require_known(rt, resolve_project(body.project, None if project == DEFAULT else project))
    try:
        run_id = rt.retrain.trigger(project, body.reason or "manual", principal.name,
                                       respect_cooldown=not body.now)
    except RetrainBusy as e:
        return JSONResponse({"detail": str(e), "run_id": e.run_id}, status_code=409)
    except RetrainError as e:
        raise HTTPException(e.status, str(e)) from None
    return {"run_id": run_id, "project": project}


@router.get("/retrain/runs", summary="Retrain runs, newest first")
def list_runs(
    _: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT, limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    service = rt.retrain
    return {"items": service.list_runs(project, limit), "active_run": service.active_run()}


@router.get("/retrain/runs/{run_id}", summary="One run: status, metrics, gate reasons, progress, log tail")
def get_run(
    _: Labeller, rt: RuntimeDep, run_id: Annotated[int, Path(ge=0, le=2**63 - 1)],
    log_lines: Annotated[int, Query(ge=0, le=2000)] = 50,
) -> dict[str, Any]:
    try:
        return rt.retrain.get_run(run_id, log_lines)
    except RunNotFound as e:
        raise HTTPException(404, str(e)) from None


@router.post("/retrain/runs/{run_id}/cancel", summary="Cancel a queued or running retrain")
def cancel_run(principal: Admin, rt: RuntimeDep, run_id: Annotated[int, Path(ge=0, le=2**63 - 1)]) -> dict[str, Any]:
    try:
        return rt.retrain.cancel(run_id, principal.name)
    except RunNotFound as e:
        raise HTTPException(404, str(e)) from None
    except RetrainError as e:
        raise HTTPException(e.status, str(e)) from None


@router.get("/label-queue", summary="Unlabelled predictions to label next, most useful first")
def get_label_queue(
    _: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT,
    strategy: Annotated[str | None, Query(description=f"One of {', '.join(STRATEGIES)}; default from config.",
                                          json_schema_extra={"enum": list(STRATEGIES)})] = None,
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
    seed: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    strategy = strategy or rt.settings.label_queue.strategy
    if strategy not in STRATEGIES:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "strategy"), "input": strategy,
                                       "msg": f"unknown strategy; choose one of {', '.join(STRATEGIES)}"}])
    require_known(rt, project)
    from tuneloop.monitor.projects import labels_for
    from tuneloop.monitor.storage import utcnow

    items = label_queue(rt.store, project, strategy, limit or rt.settings.label_queue.page_size, seed,
                        random_share=rt.settings.retrain.holdout_fraction)
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    labelled_today = rt.store.feedback.count_since(project, today)
    return {"project": project, "strategy": strategy, "items": items, "queue_size": queue_size(rt.store, project),
            "labels": labels_for(rt.store, rt.settings, project), "labelled_today": labelled_today}


@router.get("/label-queue/savings", summary="Labels the queue saves vs random labelling (from the random slice)")
def get_labels_saved(_: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    require_known(rt, project)
    return {"project": project, **labels_saved(rt.store, project, rt.settings.retrain.holdout_fraction)}
