"""The collector over HTTP: predictions and feedback in, pages and stats out, API tokens.

Handlers are thin: parsing and validation live in :mod:`tuneloop.monitor.collect`, writes go
through the group-commit :mod:`~tuneloop.monitor.writer` (answered only after COMMIT). This module
also installs the HTTP policy every route shares (:func:`install`): a request-body limit (413),
request metrics, 503 + ``Retry-After`` when the write queue is full, 422 bodies that never echo
huge inputs, and a last-resort 500 that logs the traceback but never returns it.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneloop.monitor import auth, collect, metrics
from tuneloop.monitor.app import STARTUP_HOOKS, Context
from tuneloop.monitor.config import Settings
from tuneloop.monitor.deps import DEFAULT, Admin, Ingest, Labeller, ProjectQuery, get_ctx
from tuneloop.monitor.projects import PROJECT_PATTERN
from tuneloop.monitor.schemas import (
    FeedbackBatch,
    FeedbackResult,
    IngestResult,
    PredictionBatch,
    PredictionPage,
    Stats,
    TokenCreate,
    TokenCreated,
    TokenInfo,
)
from tuneloop.monitor.storage import DEFAULT_PROJECT
from tuneloop.monitor.writer import UnknownPredictions, WriteQueueFull, Writer, WriterStopped, start_writer

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["collect"])
CtxDep = Annotated[Context, Depends(get_ctx)]
OptionalProject = Annotated[
    str | None, Query(pattern=PROJECT_PATTERN, description="Project (or in the body); default 'default'.")
]

STARTUP_HOOKS.append(start_writer)


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` substituted in (for a hand-written requestBody)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.split("/")[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


_PREDICTIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_schema(PredictionBatch)},
            collect.ARROW_STREAM: {
                "schema": {"type": "string", "format": "binary"},
                "description": "One Arrow IPC stream with the record fields as columns (text and label required; "
                               "probs map<string,float>, embedding list<float>, ts timestamp, metadata JSON text). "
                               "Project from ?project=.",
            },
        },
    }
}


_FEEDBACK_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _inline_schema(FeedbackBatch)}}}
}


def _pydantic_errors(e: ValidationError) -> list[dict[str, Any]]:
    return [
        {"type": x["type"], "loc": ["body", *x["loc"]], "msg": x["msg"], "input": x.get("input"),
         **({"ctx": x["ctx"]} if "ctx" in x else {})}
        for x in e.errors(include_url=False)[: collect.MAX_ERRORS]
    ]


def _parse_json(model: type[BaseModel], body: bytes) -> Any:
    """Strict JSON (no lone surrogates) straight from the bytes; 422 with body paths otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise RequestValidationError(_pydantic_errors(e)) from None


def _body_kind(request: Request) -> Literal["json", "arrow"]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/json", "") or content_type.endswith("+json"):
        return "json"
    if content_type == collect.ARROW_STREAM:
        return "arrow"
    raise HTTPException(415, f"unsupported Content-Type {content_type!r}; send application/json or "
                             f"{collect.ARROW_STREAM}")


def _pick_project(body_project: str | None, query_project: str | None) -> str:
    if body_project and query_project and body_project != query_project:
        msg = f"project {body_project!r} in the body differs from {query_project!r} in the query"
        raise RequestValidationError([collect.error(("body", "project"), msg)])
    return body_project or query_project or DEFAULT_PROJECT


def parse_predictions(
    body: bytes, kind: Literal["json", "arrow"], query_project: str | None, ctx: Context
) -> tuple[Any, str]:
    """Body bytes -> (store-ready Arrow table, project); RequestValidationError (422) on any problem."""
    if kind == "json":
        batch = _parse_json(PredictionBatch, body)
        project = _pick_project(batch.project, query_project)
        table, errors = collect.json_to_wire(batch)
    else:
        project = query_project or DEFAULT_PROJECT
        table, errors = collect.read_arrow(body)
    if table is not None:
        errors += collect.validate_batch(table, collect.rules_for(ctx.store, ctx.settings, project))
    if errors:
        metrics.REJECTED.labels("validation").inc()
        raise RequestValidationError(errors[: collect.MAX_ERRORS])
    return collect.to_store_table(table), project


def _writer(ctx: Context) -> Writer:
    writer = ctx.services.get("writer")
    if writer is None:
        raise WriterStopped("the writer is not running")
    return writer


@router.post(
    "/predictions", response_model=IngestResult, openapi_extra=_PREDICTIONS_BODY,
    summary="Log predictions (JSON or Arrow IPC); answered after COMMIT",
    responses={413: {"description": "Body larger than server.max_body_bytes"},
               415: {"description": "Neither JSON nor Arrow IPC"},
               503: {"description": "Write queue full (see Retry-After)"}},
)
async def post_predictions(request: Request, _: Ingest, ctx: CtxDep, project: OptionalProject = None) -> IngestResult:
    """Append a batch of 1 to ``server.max_batch`` predictions in one transaction.

    Rows whose ``id`` is already stored are skipped and counted as ``duplicates``, so a client may
    retry a batch safely. Every record is checked before anything is written: one invalid record
    refuses the whole request with 422, listing each problem with its path
    (``["body", "records", i, field]``).
    """
    kind = _body_kind(request)
    body = await request.body()
    table, project = await run_in_threadpool(parse_predictions, body, kind, project, ctx)
    result = await _writer(ctx).append_predictions(table, project)
    return IngestResult(accepted=result.accepted, duplicates=result.duplicates)


@router.post(
    "/feedback", response_model=FeedbackResult, summary="Log true labels for predictions", openapi_extra=_FEEDBACK_BODY,
    responses={404: {"description": "server.unknown_feedback = 'reject' and some prediction ids are unknown"}},
)
async def post_feedback(
    request: Request, principal: Labeller, ctx: CtxDep, project: OptionalProject = None
) -> FeedbackResult:
    """Append feedback; the latest label per prediction wins (human beats import beats rule).

    Feedback for a prediction id that is not stored yet depends on ``server.unknown_feedback``:
    ``"pending"`` (default) parks it until the prediction arrives (counted in ``pending``, ids in
    ``unknown``); ``"reject"`` refuses the WHOLE request with 404 listing the unknown ids, and
    nothing of it is written, so the client can fix the ids and resend everything. ``annotator``
    defaults to the name of the calling token.
    """
    if _body_kind(request) != "json":
        raise HTTPException(415, "unsupported Content-Type; send application/json")
    body = _parse_json(FeedbackBatch, await request.body())
    project = _pick_project(body.project, project)
    rules = await run_in_threadpool(collect.rules_for, ctx.store, ctx.settings, project)  # a DB read: off the loop
    table, errors = collect.feedback_table(body, rules, default_annotator=principal.name)
    if errors:
        metrics.REJECTED.labels("validation").inc()
        raise RequestValidationError(errors)
    policy = ctx.settings.server.unknown_feedback
    try:
        r = await _writer(ctx).append_feedback(table, project, policy, principal.token_id or None)
    except UnknownPredictions as e:
        raise HTTPException(404, {"msg": str(e), "unknown_prediction_ids": e.ids}) from None
    return FeedbackResult(accepted=r.accepted, duplicates=r.duplicates, pending=r.pending, unknown=r.unknown_ids)


@router.delete("/feedback/{feedback_id}", summary="Retract one feedback row (undo a label)",
               responses={403: {"description": "another annotator's row (only role admin may retract it)"},
                          404: {"description": "no feedback row with this id"}})
def retract_feedback(
    feedback_id: Annotated[str, Path(min_length=1, max_length=128, description="The id sent with the feedback.")],
    principal: Labeller, ctx: CtxDep, project: ProjectQuery = DEFAULT,
) -> dict[str, Any]:
    """Remove the feedback row with this client-chosen ``id`` (stored or still pending), so the
    prediction's earlier label, if any, applies again and it re-enters the label queue. A labeller
    may retract rows sent with the same token (not merely one with the same name); an admin any row."""
    with ctx.store.transaction() as cur:
        for table in ("feedback", "pending_feedback"):
            rows = cur.execute(
                f"""SELECT f.annotator, w.token_id FROM {table} f LEFT JOIN feedback_writers w
                    ON w.project = f.project AND w.id = f.id WHERE f.project = ? AND f.id = ?""",
                [project, feedback_id]).fetchall()
            if rows:
                annotator, writer = rows[0]
                if not principal.allows("admin") and (not writer or writer != principal.token_id):
                    raise HTTPException(403, f"feedback {feedback_id} (annotator {annotator!r}) was sent with "
                                             "another token; only that token or an admin may retract it")
                cur.execute(f"DELETE FROM {table} WHERE project = ? AND id = ?", [project, feedback_id]).fetchall()
                cur.execute("DELETE FROM feedback_writers WHERE project = ? AND id = ?",
                            [project, feedback_id]).fetchall()
                return {"retracted": feedback_id, "project": project}
    raise HTTPException(404, f"no feedback {feedback_id} in project {project}")


def _utc(ts: datetime | None) -> datetime | None:
    return None if ts is None else collect.naive_utc(ts)


@router.get("/predictions", response_model=PredictionPage, summary="Page through logged predictions")
def get_predictions(
    _: Labeller, ctx: CtxDep, project: ProjectQuery = DEFAULT,
    since: Annotated[datetime | None, Query(description="ts >= since (UTC when no offset)")] = None,
    until: Annotated[datetime | None, Query(description="ts < until")] = None,
    model_version: str | None = None,
    labelled: Annotated[bool | None, Query(description="true: only with feedback; false: only without")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    order: Literal["asc", "desc"] = "desc",
    include_embedding: bool = False,
) -> dict[str, Any]:
    """Predictions with their latest true label, newest first (``order=asc``: oldest first).

    Keyset paging on ``(ts, id)``: follow ``next_cursor`` until it is null.
    """
    try:
        items, next_cursor = collect.list_predictions(
            ctx.store, project, since=_utc(since), until=_utc(until),
            model_version=model_version, labelled=labelled, limit=limit, cursor=cursor, order=order,
            include_embedding=include_embedding,
        )
    except ValueError as e:
        raise RequestValidationError([collect.error(("query", "cursor"), str(e), value=cursor)]) from None
    return {"items": items, "next_cursor": next_cursor}


@router.get("/stats", response_model=Stats,
            summary="Traffic, confidence and labelled accuracy per minute (last 48 h), hour or day")
def get_stats(
    _: Labeller, ctx: CtxDep, project: ProjectQuery = DEFAULT,
    bucket: Literal["minute", "hour", "day"] = "hour",
    since: Annotated[datetime | None, Query(description="Buckets from this time on (UTC when no offset)")] = None,
) -> dict[str, Any]:
    return {"project": project, "bucket": bucket,
            "items": collect.stats(ctx.store, project, bucket, _utc(since))}


# -- tokens ---------------------------------------------------------------------------------------
@router.post("/tokens", status_code=201, response_model=TokenCreated, tags=["admin"],
             summary="Create an API token (shown once)")
def create_token(body: TokenCreate, _: Admin, ctx: CtxDep) -> TokenCreated:
    token = auth.create_token(ctx.store, body.role, body.name)
    ctx.tokens.refresh()
    return TokenCreated(token=token, name=body.name or body.role, role=body.role)


@router.get("/tokens", response_model=list[TokenInfo], tags=["admin"], summary="Token names and roles")
def get_tokens(_: Admin, ctx: CtxDep) -> list[dict[str, Any]]:
    return [{k: None if collect.missing(v) else v for k, v in t.items()} for t in auth.list_tokens(ctx.store)]


@router.delete("/tokens/{name}", tags=["admin"], summary="Revoke every active token with this name")
def delete_token(name: Annotated[str, Path(max_length=128)], _: Admin, ctx: CtxDep) -> dict[str, int]:
    n = auth.revoke_token(ctx.store, name)
    ctx.tokens.refresh()
    return {"revoked": n}


# -- HTTP policy shared by every route ------------------------------------------------------------
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than server.max_body_bytes = {limit} bytes")


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over ``max_bytes``.

    Checks the declared Content-Length before reading anything, and counts the bytes actually
    streamed (chunked uploads, lying headers), so no handler ever buffers more than the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.REJECTED.labels("too_large").inc()
        exc = BodyTooLarge(self.max_bytes)
        await JSONResponse({"detail": exc.detail}, status_code=413, headers={"Connection": "close"})(
            scope, receive, send)


def _json_safe(value: Any, limit: int = 200) -> Any:
    """A small, JSON- and UTF-8-encodable stand-in for a rejected input (never echo megabytes back)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str | bytes):
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        text = text if len(text) <= limit else text[:limit] + "..."
        return text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    if value is None or isinstance(value, bool | int | float):
        return value
    return None


def _trim(err: dict[str, Any]) -> dict[str, Any]:
    out = {"type": err.get("type"), "loc": [_json_safe(x) for x in err.get("loc", ())],
           "msg": _json_safe(str(err.get("msg")), 1000), "input": _json_safe(err.get("input"))}
    if isinstance(err.get("ctx"), dict):
        out["ctx"] = {k: _json_safe(v) if v is None or isinstance(v, str | int | float) else str(v)
                      for k, v in err["ctx"].items()}
    return out


def install(app: FastAPI, settings: Settings) -> None:
    """Add the shared HTTP policy to ``app`` (called by :func:`tuneloop.monitor.app.create_app`)."""
    app.add_middleware(BodyLimit, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(metrics.RequestMetrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_trim(e) for e in exc.errors()]}, status_code=422)

    @app.exception_handler(WriteQueueFull)
    async def _queue_full(request: Request, exc: WriteQueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(WriterStopped)
    async def _stopping(request: Request, exc: WriterStopped) -> JSONResponse:
        retry = str(settings.server.retry_after_seconds)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": retry})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)
