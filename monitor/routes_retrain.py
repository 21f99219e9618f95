"""Retraining and the label queue over HTTP (thin: the behaviour is in retraining.py / label_queue.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.monitor.app import STARTUP_HOOKS, Context
from tuneloop.monitor.deps import DEFAULT, PROJECT_PATTERN, Admin, Labeller, ProjectQuery, get_ctx
from tuneloop.monitor.label_queue import STRATEGIES, label_queue, labels_saved, queue_size
from tuneloop.monitor.retraining import RetrainBusy, RetrainError, RetrainService, RunNotFound, start

router = APIRouter(prefix="/v1", tags=["retrain"])
CtxDep = Annotated[Context, Depends(get_ctx)]

STARTUP_HOOKS.append(start)


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | None = Field(None, pattern=PROJECT_PATTERN)
    reason: str | None = Field(None, max_length=500, description="Why (recorded with the run).")
    now: bool = Field(True, description="Skip the cooldown after the last run (one run at a time still holds).")


def _service(ctx: Context) -> RetrainService:
    service = ctx.services.get("retrain")
    if service is None:
        raise HTTPException(503, "the retrain service is not running")
    return service


def _project(query: str, body: str | None) -> str:
    if body and query != DEFAULT and body != query:
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "project"), "input": body,
                                       "msg": f"project {body!r} in the body differs from {query!r} in the query"}])
    return body or query


def _require_project(ctx: Context, project: str) -> None:
    from tuneloop.monitor.projects import get_project

    if get_project(ctx.store, ctx.settings, project) is None:
        raise HTTPException(404, f"unknown project {project}; create it with POST /v1/projects")


@router.post("/retrain", summary="Start a retrain now (one at a time; 409 while one runs)", responses={
    409: {"description": "a run is already running (its `run_id` is in the answer), nothing new to train on, or "
                         "cooling down (with now=false)"}})
def start_retrain(
    principal: Admin, ctx: CtxDep, project: ProjectQuery = DEFAULT,
    body: Annotated[RetrainRequest | None, Body()] = None,
) -> Any:
    body = body or RetrainRequest()
    project = _project(project, body.project)
    _require_project(ctx, project)
    try:
        run_id = _service(ctx).trigger(project, body.reason or "manual", principal.name,
                                       respect_cooldown=not body.now)
    except RetrainBusy as e:
        return JSONResponse({"detail": str(e), "run_id": e.run_id}, status_code=409)
    except RetrainError as e:
        raise HTTPException(e.status, str(e)) from None
    return {"run_id": run_id, "project": project}


@router.get("/retrain/runs", summary="Retrain runs, newest first")
def list_runs(
    _: Labeller, ctx: CtxDep, project: ProjectQuery = DEFAULT, limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    service = _service(ctx)
    return {"items": service.list_runs(project, limit), "active_run": service.active_run()}


@router.get("/retrain/runs/{run_id}", summary="One run: status, metrics, gate reasons, progress, log tail")
def get_run(
    _: Labeller, ctx: CtxDep, run_id: Annotated[int, Path(ge=0, le=2**63 - 1)],
    log_lines: Annotated[int, Query(ge=0, le=2000)] = 50,
) -> dict[str, Any]:
    try:
        return _service(ctx).get_run(run_id, log_lines)
    except RunNotFound as e:
        raise HTTPException(404, str(e)) from None


@router.post("/retrain/runs/{run_id}/cancel", summary="Cancel a queued or running retrain")
def cancel_run(principal: Admin, ctx: CtxDep, run_id: Annotated[int, Path(ge=0, le=2**63 - 1)]) -> dict[str, Any]:
    try:
        return _service(ctx).cancel(run_id, principal.name)
    except RunNotFound as e:
        raise HTTPException(404, str(e)) from None
    except RetrainError as e:
        raise HTTPException(e.status, str(e)) from None


@router.get("/label-queue", summary="Unlabelled predictions to label next, most useful first")
def get_label_queue(
    _: Labeller, ctx: CtxDep, project: ProjectQuery = DEFAULT,
    strategy: Annotated[str | None, Query(description=f"One of {', '.join(STRATEGIES)}; default from config.",
                                          json_schema_extra={"enum": list(STRATEGIES)})] = None,
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
    seed: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    strategy = strategy or ctx.settings.label_queue.strategy
    if strategy not in STRATEGIES:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "strategy"), "input": strategy,
                                       "msg": f"unknown strategy; choose one of {', '.join(STRATEGIES)}"}])
    _require_project(ctx, project)
    from tuneloop.monitor.projects import labels_for
    from tuneloop.monitor.storage import utcnow

    items = label_queue(ctx.store, project, strategy, limit or ctx.settings.label_queue.page_size, seed,
                        random_share=ctx.settings.retrain.holdout_fraction)
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    labelled_today = int(ctx.store.query("SELECT count(*) AS n FROM feedback WHERE project = ? AND ts >= ?",
                                         [project, today])["n"][0])
    return {"project": project, "strategy": strategy, "items": items, "queue_size": queue_size(ctx.store, project),
            "labels": labels_for(ctx.store, ctx.settings, project), "labelled_today": labelled_today}


@router.get("/label-queue/savings", summary="Labels the queue saves vs random labelling (from the random slice)")
def get_labels_saved(_: Labeller, ctx: CtxDep, project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    _require_project(ctx, project)
    return {"project": project, **labels_saved(ctx.store, project, ctx.settings.retrain.holdout_fraction)}
