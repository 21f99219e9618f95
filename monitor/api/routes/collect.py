"""The collector over HTTP: predictions and feedback in, pages and stats out.

Handlers are thin: parsing and validation live in :mod:`tuneloop.monitor.collect`, writes go
through the group-commit :mod:`~tuneloop.monitor.writer` (answered only after COMMIT).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from tuneloop.monitor import collect, metrics
from tuneloop.monitor.api.deps import (
    DEFAULT,
    Ingest,
    Labeller,
    OptionalProject,
    ProjectQuery,
    RuntimeDep,
    TimeQuery,
    resolve_project,
)
from tuneloop.monitor.api.schemas import (
    FeedbackBatch,
    FeedbackResult,
    IngestResult,
    PredictionBatch,
    PredictionPage,
    Stats,
)
from tuneloop.monitor.runtime import Runtime
from tuneloop.monitor.storage import DEFAULT_PROJECT, FeedbackNotFound, RetractRefused
from tuneloop.monitor.writer import UnknownPredictions

router = APIRouter(prefix="/v1", tags=["collect"])


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


def parse_predictions(
    body: bytes, kind: Literal["json", "arrow"], query_project: str | None, runtime: Runtime
) -> tuple[Any, str]:
    """Body bytes -> (store-ready Arrow table, project); RequestValidationError (422) on any problem."""
    if kind == "json":
        batch = _parse_json(PredictionBatch, body)
        project = resolve_project(batch.project, query_project)
        table, errors = collect.json_to_wire(batch)
    else:
        project = query_project or DEFAULT_PROJECT
        table, errors = collect.read_arrow(body)
    if table is not None:
        errors += collect.validate_batch(table, collect.rules_for(runtime.store, runtime.settings, project))
    if errors:
        metrics.REJECTED.labels("validation").inc()
        raise RequestValidationError(errors[: collect.MAX_ERRORS])
    return collect.to_store_table(table), project


@router.post(
    "/predictions", response_model=IngestResult, openapi_extra=_PREDICTIONS_BODY,
    summary="Log predictions (JSON or Arrow IPC); answered after COMMIT",
    responses={413: {"description": "Body larger than server.max_body_bytes"},
               415: {"description": "Neither JSON nor Arrow IPC"},
               503: {"description": "Write queue full (see Retry-After)"}},
)
async def post_predictions(
    request: Request, _: Ingest, rt: RuntimeDep, project: OptionalProject = None
) -> IngestResult:
    """Append a batch of 1 to ``server.max_batch`` predictions in one transaction.

    Rows whose ``id`` is already stored are skipped and counted as ``duplicates``, so a client may
    retry a batch safely. Every record is checked before anything is written: one invalid record
    refuses the whole request with 422, listing each problem with its path
    (``["body", "records", i, field]``).
    """
    kind = _body_kind(request)
    body = await request.body()
    table, project = await run_in_threadpool(parse_predictions, body, kind, project, rt)
    result = await rt.writer.append_predictions(table, project)
    return IngestResult(accepted=result.accepted, duplicates=result.duplicates)


@router.post(
    "/feedback", response_model=FeedbackResult, summary="Log true labels for predictions", openapi_extra=_FEEDBACK_BODY,
    responses={404: {"description": "server.unknown_feedback = 'reject' and some prediction ids are unknown"}},
)
async def post_feedback(
    request: Request, principal: Labeller, rt: RuntimeDep, project: OptionalProject = None
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
    project = resolve_project(body.project, project)
    rules = await run_in_threadpool(collect.rules_for, rt.store, rt.settings, project)  # a DB read: off the loop
    table, errors = collect.feedback_table(body, rules, default_annotator=principal.name)
    if errors:
        metrics.REJECTED.labels("validation").inc()
        raise RequestValidationError(errors)
    policy = rt.settings.server.unknown_feedback
    try:
        r = await rt.writer.append_feedback(table, project, policy, principal.token_id or None)
    except UnknownPredictions as e:
        raise HTTPException(404, {"msg": str(e), "unknown_prediction_ids": e.ids}) from None
    return FeedbackResult(accepted=r.accepted, duplicates=r.duplicates, pending=r.pending, unknown=r.unknown_ids)


@router.delete("/feedback/{feedback_id}", summary="Retract one feedback row (undo a label)",
               responses={403: {"description": "another annotator's row (only role admin may retract it)"},
                          404: {"description": "no feedback row with this id"}})
def retract_feedback(
    feedback_id: Annotated[str, Path(min_length=1, max_length=128, description="The id sent with the feedback.")],
    principal: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT,
) -> dict[str, Any]:
    """Remove the feedback row with this client-chosen ``id`` (stored or still pending), so the
    prediction's earlier label, if any, applies again and it re-enters the label queue. A labeller
    may retract rows sent with the same token (not merely one with the same name); an admin any row."""
    try:
        rt.store.feedback.retract(project, feedback_id, principal.token_id, any_writer=principal.allows("admin"))
    except RetractRefused as e:
        raise HTTPException(403, f"feedback {feedback_id} (annotator {e.annotator!r}) was sent with another token; "
                                 "only that token or an admin may retract it") from e
    except FeedbackNotFound as e:
        raise HTTPException(404, f"no feedback {feedback_id} in project {project}") from e
    return {"retracted": feedback_id, "project": project}


@router.get("/predictions", response_model=PredictionPage, summary="Page through logged predictions")
def get_predictions(
    _: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT,
    since: Annotated[TimeQuery | None, Query(description="ts >= since (UTC when no offset)")] = None,
    until: Annotated[TimeQuery | None, Query(description="ts < until")] = None,
    model_version: str | None = None,
    labelled: Annotated[bool | None, Query(description="true: only with feedback; false: only without")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern="^[A-Za-z0-9_=-]*$", description="next_cursor of the previous page")
                      ] = None,
    order: Literal["asc", "desc"] = "desc",
    include_embedding: bool = False,
) -> dict[str, Any]:
    """Predictions with their latest true label, newest first (``order=asc``: oldest first).

    Keyset paging on ``(ts, id)``: follow ``next_cursor`` until it is null.
    """
    try:
        items, next_cursor = collect.list_predictions(
            rt.store, project, since=since, until=until,
            model_version=model_version, labelled=labelled, limit=limit, cursor=cursor, order=order,
            include_embedding=include_embedding,
        )
    except ValueError as e:
        raise RequestValidationError([collect.error(("query", "cursor"), str(e), value=cursor)]) from None
    return {"items": items, "next_cursor": next_cursor}


@router.get("/stats", response_model=Stats,
            summary="Traffic, confidence and labelled accuracy per minute (last 48 h), hour or day")
def get_stats(
    _: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT,
    bucket: Literal["minute", "hour", "day"] = "hour",
    since: Annotated[TimeQuery | None, Query(description="Buckets from this time on (UTC when no offset)")] = None,
) -> dict[str, Any]:
    return {"project": project, "bucket": bucket,
            "items": collect.stats(rt.store, project, bucket, since)}
