"""FastAPI dependencies: the runtime and its parts, the caller's role, the request's project."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError

from tuneloop.monitor.auth import ANONYMOUS_ADMIN, AuthError, Principal
from tuneloop.monitor.config import Settings
from tuneloop.monitor.projects import PROJECT_PATTERN, require_project
from tuneloop.monitor.runtime import Runtime
from tuneloop.monitor.storage import DEFAULT_PROJECT, Store

__all__ = ["DEFAULT", "PROJECT_PATTERN", "Admin", "Ingest", "Labeller", "OptionalProject", "ProjectQuery",
           "RuntimeDep", "SettingsDep", "StoreDep", "check_role", "require_known", "resolve_project"]


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_store(runtime: RuntimeDep) -> Store:
    return runtime.store


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def check_role(runtime: Runtime, authorization: str | None, role: str) -> Principal:
    """The caller's principal when it holds ``role`` (anyone is admin while auth is off); AuthError otherwise."""
    if not runtime.settings.auth.enabled:
        return ANONYMOUS_ADMIN
    if not authorization:
        raise AuthError(401, "missing bearer token (Authorization: Bearer <token>)")
    return runtime.tokens.authenticate(authorization, role)


def require_role(role: str) -> Callable[..., Principal]:
    """Dependency factory: ``Annotated[Principal, Depends(require_role("admin"))]``."""

    def dependency(
        runtime: RuntimeDep, authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        if not runtime.settings.auth.enabled:
            return ANONYMOUS_ADMIN
        return runtime.tokens.authenticate(authorization, role)

    return dependency


Ingest = Annotated[Principal, Depends(require_role("ingest"))]
Labeller = Annotated[Principal, Depends(require_role("label"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]


def require_known(runtime: Runtime, project: str) -> str:
    """``project`` when it exists; UnknownProject otherwise (answered 404 by :mod:`.errors`)."""
    require_project(runtime.store, runtime.settings, project)
    return project


def known_project(
    runtime: RuntimeDep,
    project: Annotated[
        str, Query(pattern=PROJECT_PATTERN, description="Monitored project (model); default 'default'.")
    ] = DEFAULT_PROJECT,
) -> str:
    """The ``project`` query parameter, answered 404 when the project was never created."""
    return require_known(runtime, project)


ProjectQuery = Annotated[str, Depends(known_project)]
OptionalProject = Annotated[
    str | None, Query(pattern=PROJECT_PATTERN, description="Project (or in the body); default 'default'.")
]
DEFAULT = DEFAULT_PROJECT


def resolve_project(body: str | None, query: str | None) -> str:
    """The request's one project, named in the body, the query or neither (``default``); 422 when they differ."""
    if body and query and body != query:
        raise RequestValidationError([{
            "type": "value_error", "loc": ("body", "project"), "input": body,
            "msg": f"project {body!r} in the body differs from {query!r} in the query"}])
    return body or query or DEFAULT_PROJECT
