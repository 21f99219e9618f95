"""``POST /v1/predict``: the champion answers, every prediction is logged before the response.

The forward pass (tokenisation included) runs in the project's batch worker
(:mod:`tuneloop.monitor.serving`), never on the event loop; the worker hands the rows of the whole
forward (text, label, probabilities, embedding as an Arrow list over the model's float32 output,
version, latency, metadata) to the collector's writer as one table, and the answer is sent only
after they are committed. Answers are serialised with orjson. A full model queue answers 503 +
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from tuneloop.monitor.api.deps import PROJECT_PATTERN, Ingest, Labeller, RuntimeDep, require_known, resolve_project
from tuneloop.monitor.api.schemas import PredictRequest, PredictResponse
from tuneloop.monitor.runtime import Runtime
from tuneloop.monitor.serving import NoModelLoaded, ServeQueueFull, ServeResult, ServerStopping, no_model_message
from tuneloop.monitor.storage import DEFAULT_PROJECT

router = APIRouter(prefix="/v1", tags=["serve"])


def _invalid(loc: tuple[Any, ...], message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": loc, "msg": message, "input": None}])


def _check_limits(texts: list[str], rt: Runtime) -> None:
    server = rt.settings.server
    if len(texts) > server.max_batch:
        raise _invalid(("body", "texts"), f"{len(texts)} texts in one request; the limit is "
                                          f"server.max_batch = {server.max_batch}")
    for i, t in enumerate(texts):
        if len(t) > server.max_text_chars:
            raise _invalid(("body", "texts", i), f"text {i} has {len(t)} characters; the limit is "
                                                 f"server.max_text_chars = {server.max_text_chars}")


def answer(result: ServeResult) -> Response:
    """The response body (the shape of PredictResponse, declared for the schema) serialised by orjson."""
    logged = result.logged
    assert logged is not None  # the runtime's servers log through the writer
    return Response(orjson.dumps({"model_version": result.version, "predictions": [
        {"id": i, "label": label, "probs": p, "confidence": c}
        for i, label, p, c in zip(logged.ids, result.labels, logged.probs, logged.confidence, strict=True)
    ]}), media_type="application/json")


@router.post(
    "/predict", response_model=PredictResponse, summary="Classify texts with the champion (every prediction logged)",
    responses={503: {"description": "No champion model is loaded for the project, or the model's queue is "
                                    "full (see Retry-After)"}},
)
async def predict(
    body: PredictRequest, _: Ingest, rt: RuntimeDep,
    project: Annotated[str | None, Query(pattern=PROJECT_PATTERN, description="Project (or in the body).")] = None,
) -> Response:
    t0 = time.perf_counter()
    project = resolve_project(body.project, project)
    _check_limits(body.texts, rt)
    if project != DEFAULT_PROJECT:
        await run_in_threadpool(require_known, rt, project)  # a DB read: off the loop
    serving = rt.serving
    srv = serving.get(project) or await run_in_threadpool(serving.server, project)
    if srv.model is None:
        raise HTTPException(503, srv.load_error or no_model_message(project))
    try:  # resolves once the rows are committed (the batch worker logs the whole forward)
        result = await asyncio.wrap_future(srv.submit(body.texts, body.metadata, started=t0))
    except ServeQueueFull as e:
        retry_after = str(rt.settings.server.retry_after_seconds)
        raise HTTPException(503, str(e), headers={"Retry-After": retry_after}) from None
    except (NoModelLoaded, ServerStopping) as e:
        raise HTTPException(503, str(e)) from None
    return answer(result)


@router.get("/serving", summary="Served model and dynamic-batching counters per project")
def serving_stats(_: Labeller, rt: RuntimeDep) -> dict[str, Any]:
    return {"projects": rt.serving.stats()}
