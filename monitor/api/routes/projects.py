"""Projects over HTTP: create and list monitored models, bulk imports, adopting an external model."""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, HTTPException, Path
from fastapi.exceptions import RequestValidationError

from tuneloop.monitor import imports, projects
from tuneloop.monitor.api.deps import Admin, Labeller, RuntimeDep
from tuneloop.monitor.api.schemas import FeedbackImportBody, ProjectCreate, ReferenceImportBody
from tuneloop.monitor.projects import PROJECT_PATTERN

router = APIRouter(prefix="/v1", tags=["projects"])
ProjectPath = Annotated[str, Path(pattern=PROJECT_PATTERN, description="Monitored project (model).")]


def _bad_input(e: ValueError | str, *loc: str | int) -> RequestValidationError:
    """A 422 in the declared shape: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": str(e), "input": None}])


@router.post("/projects", status_code=201, summary="Create a project (a monitored model with its own labels)")
def create(_: Admin, rt: RuntimeDep, body: ProjectCreate) -> dict[str, Any]:
    try:
        created = projects.create_project(rt.store, body.project, body.labels, body.settings, rt.settings)
    except projects.ProjectExists as e:
        raise HTTPException(409, str(e)) from None
    except ValueError as e:
        raise _bad_input(e) from None
    return created.as_json()


@router.get("/projects", summary="Every project with its labels and prediction count")
def list_all(_: Labeller, rt: RuntimeDep) -> dict[str, Any]:
    return {"items": projects.list_projects(rt.store, rt.settings)}


@router.get("/projects/{project}", summary="One project with its counts (incl. embeddings still to compute)")
def get_one(principal: Labeller, rt: RuntimeDep, project: ProjectPath) -> dict[str, Any]:
    summary = projects.project_summary(rt.store, rt.settings, project)
    summary["drift"] = projects.without_secrets(summary["drift"], principal.role)
    embedder = rt.embedder
    if embedder is not None:
        shown = ("running", "rows_per_second", "encoder_loaded", "last_error")
        summary["embedder"] = {k: v for k, v in embedder.status().items() if k in shown}
    return summary


@router.post("/reference/import", summary="Replace the project's imported reference (an external model's outputs)")
def reference_import(_: Admin, rt: RuntimeDep, body: ReferenceImportBody) -> dict[str, Any]:
    df = pd.DataFrame([r.model_dump() for r in body.records])
    try:
        return imports.import_reference(rt.store, rt.settings, body.project, df).as_json()
    except ValueError as e:
        raise _bad_input(e) from None


@router.post("/feedback/import", summary="Bulk true labels matched by prediction id or a client key")
def feedback_import(principal: Labeller, rt: RuntimeDep, body: FeedbackImportBody) -> dict[str, Any]:
    rows = [r.model_dump(exclude_none=True) for r in body.records]
    df = pd.DataFrame(rows)
    try:
        report = imports.import_feedback(rt.store, rt.settings, body.project, df, by=body.by,
                                         key_field=body.key_field, annotator=body.annotator or principal.name)
    except ValueError as e:
        raise _bad_input(e) from None
    return report.as_json()


@router.post("/projects/{project}/adopt", summary="Train a tuneloop model for this project from its labels")
def adopt(_: Admin, rt: RuntimeDep, project: ProjectPath) -> dict[str, Any]:
    try:
        return projects.adopt(rt.store, rt.settings, rt.retrain, project)
    except projects.CannotAdopt as e:
        raise HTTPException(409, str(e)) from None
