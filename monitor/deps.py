"""FastAPI dependencies: the context, the store, the caller's role, the project."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Query, Request

from tuneloop.monitor.app import Context
from tuneloop.monitor.auth import ANONYMOUS_ADMIN, AuthError, Principal
from tuneloop.monitor.projects import PROJECT_PATTERN, UnknownProject, require_project
from tuneloop.monitor.storage import DEFAULT_PROJECT, Store


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def get_store(ctx: Annotated[Context, Depends(get_ctx)]) -> Store:
    return ctx.store


def require_role(role: str):  # type: ignore[no-untyped-def]
    """Dependency factory: ``Annotated[Principal, Depends(require_role("admin"))]``."""

    def dependency(
        ctx: Annotated[Context, Depends(get_ctx)],
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        if not ctx.settings.auth.enabled:
            return ANONYMOUS_ADMIN
        return ctx.tokens.authenticate(authorization, role)

    return dependency


def check_role(ctx: Context, authorization: str | None, role: str) -> Principal:
    if not ctx.settings.auth.enabled:
        return ANONYMOUS_ADMIN
    if not authorization:
        raise AuthError(401, "missing bearer token (Authorization: Bearer <token>)")
    return ctx.tokens.authenticate(authorization, role)


Ingest = Annotated[Principal, Depends(require_role("ingest"))]
Labeller = Annotated[Principal, Depends(require_role("label"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]


def known_project(
    ctx: Annotated[Context, Depends(get_ctx)],
    project: Annotated[
        str, Query(pattern=PROJECT_PATTERN, description="Monitored project (model); default 'default'.")
    ] = DEFAULT_PROJECT,
) -> str:
    """The ``project`` query parameter, answered 404 when the project was never created."""
    try:
        require_project(ctx.store, ctx.settings, project)
    except UnknownProject as e:
        raise HTTPException(404, str(e)) from None
    return project


ProjectQuery = Annotated[str, Depends(known_project)]
DEFAULT = DEFAULT_PROJECT
