"""``POST /v1/predict``: the champion answers, every prediction is logged before the response.

The forward pass (tokenisation included) runs in the project's batch worker
(:mod:`tuneloop.monitor.serving`), never on the event loop; the rows (text, label, probabilities,
embedding as an Arrow list over the model's float32 output, version, latency) go through the
collector's group-commit writer, and the answer is sent only after they are committed. Answers
are serialised with orjson. A full model queue answers 503 + ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Annotated, Any

import numpy as np
import orjson
import pyarrow as pa
from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from tuneloop.monitor.api.deps import PROJECT_PATTERN, Ingest, Labeller, RuntimeDep, require_known, resolve_project
from tuneloop.monitor.api.schemas import PredictRequest, PredictResponse
from tuneloop.monitor.runtime import Runtime
from tuneloop.monitor.serving import NoModelLoaded, ServeQueueFull, ServeResult, ServerStopping, no_model_message
from tuneloop.monitor.storage import DEFAULT_PROJECT, utcnow

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


def prediction_table(texts: list[str], result: ServeResult, latency_ms: float, model_version: str,
                     metadata: dict[str, Any] | None = None) -> tuple[pa.Table, list[dict[str, float]]]:
    """The rows to log for one request (Arrow, ready for the writer) and each row's ``{label: p}``."""
    n = len(texts)
    probs = np.round(result.probs.astype(np.float64), 6)
    names = result.label_names
    prob_dicts = [dict(zip(names, row, strict=True)) for row in probs.tolist()]
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] >= 2 else np.zeros((n, 2))
    emb = np.ascontiguousarray(result.embeddings, dtype=np.float32)
    dim = emb.shape[1] if emb.ndim == 2 else 0
    embedding = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32)),
                                         pa.array(emb.reshape(-1)))
    meta = json.dumps(metadata, separators=(",", ":")) if metadata else None  # orjson refuses ints past 64 bits
    table = pa.table({
        "id": pa.array([uuid.uuid4().hex for _ in range(n)], pa.string()),
        "ts": pa.array([utcnow()] * n, pa.timestamp("us")),
        "model_version": pa.array([model_version] * n, pa.string()),
        "text": pa.array(texts, pa.string()),
        "label": pa.array(result.labels, pa.string()),
        "confidence": pa.array(probs.max(axis=1), pa.float64()),
        "margin": pa.array(top2[:, 1] - top2[:, 0], pa.float64()),
        "probs": pa.array([orjson.dumps(d).decode() for d in prob_dicts], pa.string()),
        "embedding": embedding,
        "latency_ms": pa.array([latency_ms] * n, pa.float64()),
        "metadata": pa.array([meta] * n, pa.string()),
    })
    return table, prob_dicts


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
    try:
        result = await asyncio.wrap_future(srv.submit(body.texts))
    except ServeQueueFull as e:
        retry_after = str(rt.settings.server.retry_after_seconds)
        raise HTTPException(503, str(e), headers={"Retry-After": retry_after}) from None
    except (NoModelLoaded, ServerStopping) as e:
        raise HTTPException(503, str(e)) from None
    latency_ms = (time.perf_counter() - t0) * 1000
    table, prob_dicts = prediction_table(body.texts, result, latency_ms, result.version, body.metadata)
    await rt.writer.append_predictions(table, project)  # answered only after COMMIT
    # built by hand and serialised by orjson: the shape is PredictResponse (declared for the schema)
    ids = table.column("id").to_pylist()
    confidence = table.column("confidence").to_pylist()
    return Response(orjson.dumps({"model_version": result.version, "predictions": [
        {"id": i, "label": label, "probs": p, "confidence": c}
        for i, label, p, c in zip(ids, result.labels, prob_dicts, confidence, strict=True)
    ]}), media_type="application/json")


@router.get("/serving", summary="Served model and dynamic-batching counters per project")
def serving_stats(_: Labeller, rt: RuntimeDep) -> dict[str, Any]:
    return {"projects": rt.serving.stats()}
