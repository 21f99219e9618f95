"""The FastAPI application: one process that owns the store and serves every router.

Services live on one :class:`Context` (``app.state.ctx``) created in the lifespan; routers get
what they need through the dependencies in :mod:`tuneloop.monitor.deps`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tuneloop.monitor.auth import AuthError, TokenRegistry
from tuneloop.monitor.config import Settings
from tuneloop.monitor.projects import UnknownProject
from tuneloop.monitor.scheduler import Scheduler
from tuneloop.monitor.storage import Store, StoreFull

log = logging.getLogger(__name__)

API_TITLE = "tuneloop"
API_DESCRIPTION = (
    "Continuous monitoring and feedback loop for fine-tuned text models: log predictions and "
    "feedback, detect drift, label, retrain, gate and hot-swap. Auth: `Authorization: Bearer <token>` "
    "with roles ingest < label < admin."
)


@dataclass
class Context:
    """Everything a request handler may need, built once at start-up."""

    settings: Settings
    store: Store
    tokens: TokenRegistry
    services: dict[str, Any] = field(default_factory=dict)
    ready: bool = False


# Start-up hooks let each domain (collector, serving, drift, retrain) attach its background
# services without this module importing all of them: each is called with the context at start
# and returns an optional shutdown callable.
StartupHook = Callable[[Context], Callable[[], None] | None]
STARTUP_HOOKS: list[StartupHook] = []


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    """Build the app. ``store`` may be given (tests); otherwise the settings' DB file is opened."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        own_store = store is None
        st = store or Store(settings.db_path)
        ctx = Context(settings=settings, store=st, tokens=TokenRegistry(st))
        app.state.ctx = ctx
        scheduler = Scheduler()
        ctx.services["scheduler"] = scheduler
        shutdowns = []
        for hook in STARTUP_HOOKS:
            stop = hook(ctx)
            if stop is not None:
                shutdowns.append(stop)
        scheduler.start()
        shutdowns.append(scheduler.stop)
        ctx.ready = True
        log.info("tuneloop serving %s", settings.db_path)
        try:
            yield
        finally:
            ctx.ready = False
            for stop in reversed(shutdowns):
                try:
                    stop()
                except Exception:  # keep shutting the rest down
                    log.exception("shutdown step failed")
            if own_store:
                st.close()

    app = FastAPI(title=API_TITLE, description=API_DESCRIPTION, version="1", lifespan=lifespan)

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(UnknownProject)
    async def _unknown_project(request: Request, exc: UnknownProject) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(StoreFull)
    async def _store_full(request: Request, exc: StoreFull) -> JSONResponse:
        log.error("write refused: %s", exc)  # the operator must free space; the server keeps serving
        return JSONResponse({"detail": f"insufficient storage: {exc}; free disk space and retry"}, status_code=507,
                            headers={"Retry-After": "30"})

    from tuneloop.monitor import routes_health

    app.include_router(routes_health.router)
    for module in _optional_routers():
        app.include_router(module.router)
        if hasattr(module, "install"):  # app-wide middleware/handlers a domain needs (routes_collect)
            module.install(app, settings)
    from tuneloop.monitor import openapi

    openapi.install(app)  # security scheme, declared errors, full Allow on 405
    app.add_middleware(openapi.UTCTimestamps)
    return app


def _optional_routers() -> list[Any]:
    """Domain routers; each module exposes ``router``."""
    import importlib

    names = ["routes_collect", "routes_serve", "routes_drift", "routes_retrain", "routes_admin", "routes_projects",
             "routes_models", "routes_datasets", "metrics", "operations"]
    mods = []
    for name in names:
        try:
            mods.append(importlib.import_module(f"tuneloop.monitor.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"tuneloop.monitor.{name}":
                raise
    return mods
