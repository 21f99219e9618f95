"""Projects over HTTP: create and list monitored models, bulk imports, adopting an external model.

Also starts the background embedder (it serves every project).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.monitor import imports, projects
from tuneloop.monitor.app import STARTUP_HOOKS, Context
from tuneloop.monitor.deps import Admin, Labeller, get_ctx
from tuneloop.monitor.embedder import start_embedder
from tuneloop.monitor.projects import PROJECT_PATTERN
from tuneloop.monitor.storage import DEFAULT_PROJECT

router = APIRouter(prefix="/v1", tags=["projects"])
CtxDep = Annotated[Context, Depends(get_ctx)]
ProjectPath = Annotated[str, Path(pattern=PROJECT_PATTERN, description="Monitored project (model).")]
ProjectField = Field(DEFAULT_PROJECT, pattern=PROJECT_PATTERN, description="Monitored project (model).")
MAX_IMPORT_RECORDS = 100_000

STARTUP_HOOKS.append(start_embedder)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectCreate(Strict):
    project: str = Field(pattern=PROJECT_PATTERN, description="Name: 1-64 of A-Z a-z 0-9 . _ -")
    labels: list[Annotated[str, Field(pattern=r"\S")]] = Field(
        min_length=2, json_schema_extra={"uniqueItems": True},
        description="The model's label set, at least two distinct labels.")
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='Overrides of config sections, e.g. {"drift": {"window_size": 200}}.'
    )


class ReferenceRecord(Strict):
    text: str = Field(min_length=1)
    prediction: str = Field(min_length=1, description="What the model predicted.")
    label: str | None = Field(None, description="The true label, when known (calibrates the accuracy estimate).")
    probabilities: dict[str, float] | None = Field(None, description="{label: probability}; its max is the confidence.")
    confidence: float | None = Field(None, ge=0, le=1)
    embedding: list[float] | None = None


class ReferenceImportBody(Strict):
    project: str = ProjectField
    records: list[ReferenceRecord] = Field(min_length=1, max_length=MAX_IMPORT_RECORDS)


class FeedbackImportRecord(Strict):
    prediction_id: str | None = Field(None, description="With by = 'id'.")
    key: str | None = Field(None, description="With by = 'key': the value of metadata.<key_field>.")
    label: str
    ts: datetime | None = None
    annotator: str | None = None


class FeedbackImportBody(Strict):
    project: str = ProjectField
    by: Literal["id", "key"] = "id"
    key_field: str | None = Field(None, description="Metadata field holding the client key (by = 'key').")
    annotator: str | None = None
    records: list[FeedbackImportRecord] = Field(min_length=1, max_length=MAX_IMPORT_RECORDS)


def _bad_input(e: ValueError | str, *loc: str | int) -> RequestValidationError:
    """A 422 in the declared shape: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": str(e), "input": None}])


@router.post("/projects", status_code=201, summary="Create a project (a monitored model with its own labels)")
def create(_: Admin, ctx: CtxDep, body: ProjectCreate) -> dict[str, Any]:
    try:
        created = projects.create_project(ctx.store, body.project, body.labels, body.settings, ctx.settings)
    except projects.ProjectExists as e:
        raise HTTPException(409, str(e)) from None
    except ValueError as e:
        raise _bad_input(e) from None
    return created.as_json()


@router.get("/projects", summary="Every project with its labels and prediction count")
def list_all(_: Labeller, ctx: CtxDep) -> dict[str, Any]:
    return {"items": projects.list_projects(ctx.store, ctx.settings)}


@router.get("/projects/{project}", summary="One project with its counts (incl. embeddings still to compute)")
def get_one(principal: Labeller, ctx: CtxDep, project: ProjectPath) -> dict[str, Any]:
    summary = projects.project_summary(ctx.store, ctx.settings, project)
    summary["drift"] = projects.without_secrets(summary["drift"], principal.role)
    embedder = ctx.services.get("embedder")
    if embedder is not None:
        shown = ("running", "rows_per_second", "encoder_loaded", "last_error")
        summary["embedder"] = {k: v for k, v in embedder.status().items() if k in shown}
    return summary


@router.post("/reference/import", summary="Replace the project's imported reference (an external model's outputs)")
def reference_import(_: Admin, ctx: CtxDep, body: ReferenceImportBody) -> dict[str, Any]:
    df = pd.DataFrame([r.model_dump() for r in body.records])
    try:
        return imports.import_reference(ctx.store, ctx.settings, body.project, df).as_json()
    except ValueError as e:
        raise _bad_input(e) from None


@router.post("/feedback/import", summary="Bulk true labels matched by prediction id or a client key")
def feedback_import(principal: Labeller, ctx: CtxDep, body: FeedbackImportBody) -> dict[str, Any]:
    rows = [r.model_dump(exclude_none=True) for r in body.records]
    df = pd.DataFrame(rows)
    if body.by == "key" and "key" not in df.columns:
        raise _bad_input("records need 'key' when by = 'key'", "records")
    if body.by == "id" and "prediction_id" not in df.columns:
        raise _bad_input("records need 'prediction_id' when by = 'id'", "records")
    try:
        report = imports.import_feedback(ctx.store, ctx.settings, body.project, df, by=body.by,
                                         key_field=body.key_field, annotator=body.annotator or principal.name)
    except ValueError as e:
        raise _bad_input(e) from None
    return report.as_json()


@router.post("/projects/{project}/adopt", summary="Train a tuneloop model for this project from its labels")
def adopt(_: Admin, ctx: CtxDep, project: ProjectPath) -> dict[str, Any]:
    try:
        return projects.adopt(ctx, project)
    except projects.CannotAdopt as e:
        raise HTTPException(409, str(e)) from None
