"""FastAPI dependencies: the runtime and its parts, the caller's role, the request's project."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BeforeValidator

from tuneloop.monitor.auth import ANONYMOUS_ADMIN, AuthError, Principal
from tuneloop.monitor.collect import naive_utc
from tuneloop.monitor.config import Settings
from tuneloop.monitor.projects import PROJECT_PATTERN, require_project
from tuneloop.monitor.runtime import Runtime
from tuneloop.monitor.storage import DEFAULT_PROJECT, Store

__all__ = ["DEFAULT", "PROJECT_PATTERN", "Admin", "Ingest", "Labeller", "OptionalProject", "ProjectQuery",
           "RuntimeDep", "SettingsDep", "StoreDep", "TimeQuery", "check_role", "require_known", "resolve_project"]


# The dependencies below are coroutines: a plain ``def`` dependency costs every request a hop to the
# thread pool and back, and these only read attributes (a token miss may read the tokens table: that
# part alone goes to a thread).
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_store(runtime: RuntimeDep) -> Store:
    return runtime.store


async def get_settings(runtime: RuntimeDep) -> Settings:
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

    async def dependency(
        runtime: RuntimeDep, authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        if not runtime.settings.auth.enabled:
            return ANONYMOUS_ADMIN
        return await run_in_threadpool(runtime.tokens.authenticate, authorization, role)

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


# -- time query parameters: RFC 3339 or Unix seconds, always naive UTC inside ------------------------
MAX_UNIX_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z, the last second a datetime holds."""


def unix_seconds(value: Any) -> Any:
    """A number (``1767225600``, ``1.7672256e9``) is Unix seconds; anything else is left to the date-time parser.

    Pydantic alone reads numbers past 2e10 as milliseconds and refuses exponents, which the schema's
    ``number`` branch allows.
    """
    try:
        seconds = float(value) if isinstance(value, str) else None
    except ValueError:
        return value
    if seconds is None:
        return value
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_UNIX_SECONDS:
        raise ValueError(f"Unix seconds must be between 0 and {MAX_UNIX_SECONDS} (year 9999)")
    return datetime.fromtimestamp(seconds, UTC)


def as_naive_utc(ts: datetime) -> datetime:
    """Naive UTC, as the store keeps it; an offset that moves the time out of years 1-9999 is a 422."""
    try:
        return naive_utc(ts)
    except OverflowError:
        raise ValueError("the time in UTC falls outside years 1-9999") from None


TimeQuery = Annotated[datetime, BeforeValidator(unix_seconds), AfterValidator(as_naive_utc)]
"""A time query parameter (RFC 3339, or Unix seconds), as naive UTC."""
