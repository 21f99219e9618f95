"""The logged rows of served predictions: one Arrow table per forward pass, built in one go.

A forward answers several callers at once; their rows go to the writer together, as one table whose
embedding column wraps the model's float32 output (no Python lists, no per-caller copies). Each caller
gets back the ids and the rounded probabilities exactly as stored (:class:`LoggedRows`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from tuneloop.monitor.embedder import embedding_array
from tuneloop.monitor.storage import utcnow

PROBABILITY_DECIMALS = 6


@dataclass(frozen=True)
class LoggedRows:
    """One caller's rows as stored: ids, ``{label: p}`` per row and the confidence (max p)."""

    ids: list[str]
    probs: list[dict[str, float]]
    confidence: list[float]


@dataclass(frozen=True)
class CallerRows:
    """What one caller contributes to a forward's table besides the model output."""

    count: int  # texts of this caller, consecutive in the forward's output
    latency_ms: float
    metadata: dict[str, Any] | None = None


def prediction_rows(texts: list[str], labels: list[str], probs: np.ndarray, embeddings: np.ndarray,
                    label_names: list[str], version: str,
                    callers: list[CallerRows]) -> tuple[pa.Table, list[LoggedRows]]:
    """The store columns for one forward's rows, and each caller's :class:`LoggedRows`, in order."""
    n = len(texts)
    rounded = np.round(probs.astype(np.float64), PROBABILITY_DECIMALS)
    prob_dicts = [dict(zip(label_names, row, strict=True)) for row in rounded.tolist()]
    top2 = np.sort(rounded, axis=1)[:, -2:] if rounded.shape[1] >= 2 else np.zeros((n, 2))
    confidence = rounded.max(axis=1) if n else np.zeros(0)
    ids = [uuid.uuid4().hex for _ in range(n)]
    counts = [c.count for c in callers]
    # json, not orjson, for metadata: orjson refuses integers past 64 bits
    metadata = [json.dumps(c.metadata, separators=(",", ":")) if c.metadata else None for c in callers]
    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "ts": pa.array([utcnow()] * n, pa.timestamp("us")),
        "model_version": pa.array([version] * n, pa.string()),
        "text": pa.array(texts, pa.string()),
        "label": pa.array(labels, pa.string()),
        "confidence": pa.array(confidence, pa.float64()),
        "margin": pa.array(top2[:, 1] - top2[:, 0], pa.float64()),
        "probs": pa.array([orjson.dumps(d).decode() for d in prob_dicts], pa.string()),
        "embedding": embedding_array(embeddings),
        "latency_ms": pa.array(np.repeat([c.latency_ms for c in callers], counts), pa.float64()),
        "metadata": pa.array([m for m, k in zip(metadata, counts, strict=True) for _ in range(k)], pa.string()),
    })
    logged, start, conf = [], 0, confidence.tolist()
    for k in counts:
        logged.append(LoggedRows(ids[start:start + k], prob_dicts[start:start + k], conf[start:start + k]))
        start += k
    return table, logged
