"""Model versions over HTTP: list, inspect, register, promote (hot-swapped), roll back.

Version names in paths are checked with :func:`validate_version_name` (422 otherwise) and only
ever resolve to a direct child of ``models_dir``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.exceptions import RequestValidationError

from tuneloop.monitor import registry
from tuneloop.monitor.api.deps import DEFAULT, Admin, Labeller, ProjectQuery, RuntimeDep, resolve_project
from tuneloop.monitor.api.schemas import PromoteRequest, RegisterRequest, RollbackRequest
from tuneloop.monitor.runtime import Runtime
from tuneloop.monitor.serving import activate, activate_rollback
from tuneloop.retrain.versions import NAME_RE, is_complete, read_version_info, validate_version_name

router = APIRouter(prefix="/v1", tags=["models"])


def version_param(
    version: Annotated[str, Path(description="Version name, e.g. v3.",
                                 json_schema_extra={"pattern": NAME_RE.pattern, "maxLength": 64})],
) -> str:
    try:
        return validate_version_name(version)
    except ValueError as e:
        raise RequestValidationError([{"type": "value_error", "loc": ("path", "version"), "msg": str(e),
                                       "input": version}]) from None


Version = Annotated[str, Depends(version_param)]


def _served(rt: Runtime, project: str) -> str | None:
    srv = rt.serving.get(project)
    return srv.version if srv is not None else None


def _errors(e: Exception) -> HTTPException | RequestValidationError:
    if isinstance(e, LookupError) and not isinstance(e, registry.NothingToRollBack):
        return HTTPException(404, str(e))
    if isinstance(e, registry.NothingToRollBack | registry.PromotionRefused | registry.VersionConflict):
        return HTTPException(409, str(e))
    if isinstance(e, OSError):
        return HTTPException(409, f"cannot load the version: {e}")
    return RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(e), "input": None}])


@router.get("/models", summary="Registered model versions with status and metrics, and the promotion history")
def list_models(_: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    """``items``: versions oldest first; ``promotions``: champion changes newest first (promote | rollback)."""
    items = registry.list_versions(rt.store, project)
    champion = next((r["version"] for r in items if r["status"] == "champion"), None)
    return {"project": project, "champion": champion, "serving": _served(rt, project), "items": items,
            "promotions": registry.promotions(rt.store, project, limit=1000)}


@router.get("/models/{version}", summary="One version: registry row, training config, data manifest, promotions")
def show_model(_: Labeller, rt: RuntimeDep, version: Version, project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    try:
        row = registry.get_version(rt.store, project, version)
    except LookupError as e:
        raise _errors(e) from None
    info: dict[str, Any] = {}
    root = rt.settings.models_dir.resolve()
    path = (root / version).resolve()
    if path.parent == root and is_complete(path):
        full = read_version_info(path)
        info = {k: full[k] for k in ("labels", "training_config", "manifest")}
    history = registry.promotions(rt.store, project, version=version)
    return {**row, **info, "promotions": history}


@router.post("/models/{version}/register", summary="Register a version directory written under models_dir")
def register_model(principal: Admin, rt: RuntimeDep, version: Version, body: RegisterRequest | None = None,
                   project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    body = body or RegisterRequest()
    project = resolve_project(body.project, None if project == DEFAULT else project)
    if body.parent is not None:
        version_param(body.parent)
    try:
        return registry.register_dir(rt.store, project, rt.settings.models_dir, version, status=body.status,
                                     parent=body.parent, data_snapshot=body.data_snapshot)
    except FileNotFoundError as e:
        raise HTTPException(404, str(e)) from None
    except (LookupError, ValueError) as e:
        raise _errors(e) from None


@router.post("/models/{version}/promote", summary="Make a version the champion; serving hot-swaps to it")
def promote_model(principal: Admin, rt: RuntimeDep, version: Version, body: PromoteRequest | None = None,
                  project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    body = body or PromoteRequest()
    project = resolve_project(body.project, None if project == DEFAULT else project)
    try:
        row = activate(rt.store, rt.serving, project, version, actor=principal.name, reason=body.reason,
                       force=body.force)
    except (LookupError, ValueError, OSError) as e:
        raise _errors(e) from None
    return {"champion": row, "previous": row.get("previous"), "serving": _served(rt, project)}


@router.post("/models/rollback", summary="Re-promote the previous champion; serving hot-swaps to it")
def rollback_model(principal: Admin, rt: RuntimeDep, body: RollbackRequest | None = None,
                   project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    body = body or RollbackRequest()
    project = resolve_project(body.project, None if project == DEFAULT else project)
    try:
        row = activate_rollback(rt.store, rt.serving, project, actor=principal.name, reason=body.reason)
    except (LookupError, ValueError, OSError) as e:
        raise _errors(e) from None
    return {"champion": row, "previous": row.get("previous"), "serving": _served(rt, project)}
