"""The FastAPI application: one process that owns the store and serves every router.

The lifespan builds and starts one :class:`~tuneloop.monitor.runtime.Runtime` (``app.state.runtime``)
and stops it on shutdown; routers reach its parts through :mod:`tuneloop.monitor.api.deps`. Every
router is named in :data:`ROUTERS`, the HTTP policy in :mod:`.errors`, :mod:`.middleware` and
:mod:`.openapi`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from tuneloop.monitor.api import errors, middleware, openapi
from tuneloop.monitor.api.routes import (
    admin,
    collect,
    datasets,
    drift,
    health,
    models,
    operations,
    projects,
    retrain,
    serve,
    tokens,
)
from tuneloop.monitor.api.routes import metrics as metrics_route
from tuneloop.monitor.config import Settings
from tuneloop.monitor.runtime import running
from tuneloop.monitor.storage import Store

API_TITLE = "tuneloop"
API_DESCRIPTION = (
    "Continuous monitoring and feedback loop for fine-tuned text models: log predictions and "
    "feedback, detect drift, label, retrain, gate and hot-swap. Auth: `Authorization: Bearer <token>` "
    "with roles ingest < label < admin."
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router, collect.router, tokens.router, serve.router, drift.router, retrain.router, admin.router,
    projects.router, models.router, datasets.router, metrics_route.router, operations.router,
)
"""Every router of the API, in the order their routes are matched and listed in the schema."""


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    """Build the app. ``store`` may be given (tests); otherwise the settings' DB file is opened."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with running(settings, store) as runtime:
            app.state.runtime = runtime
            yield

    app = FastAPI(title=API_TITLE, description=API_DESCRIPTION, version="1", lifespan=lifespan)
    errors.install(app, settings)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(middleware.BodyLimit, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(middleware.RequestMetrics)
    openapi.install(app)  # security scheme, declared errors, full Allow on 405
    app.add_middleware(openapi.UTCTimestamps)
    return app
