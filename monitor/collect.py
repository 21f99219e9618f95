"""The collector's library: turn request bodies into validated Arrow batches, and read them back.

Two wire formats carry the same columns (``id, text, label, confidence, probs, embedding,
model_version, ts, metadata, latency_ms``):

* JSON (``application/json``): ``{"records": [{...}], "project": ...}``, parsed by pydantic
  (:class:`~tuneloop.monitor.wire.PredictionBatch`) straight from the bytes;
* Arrow IPC stream (``application/vnd.apache.arrow.stream``): one table, column names as above,
  ``probs`` a ``map<string, float>``, ``embedding`` a (fixed-size) list of floats, ``ts`` a
  timestamp (UTC when naive), ``metadata`` JSON text. No per-row Python work on the server, which
  is what lets the collector keep up with the store (see ``bench/ingest.py``); the SDK uses it.

Both end in :func:`validate_batch`, one vectorised pass over the Arrow columns for every rule that
depends on configuration, so the two formats accept and refuse exactly the same rows, with the
same 422 field paths (``["body", "records", i, field]``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from tuneloop.monitor.config import Settings
from tuneloop.monitor.projects import labels_for
from tuneloop.monitor.storage import DEFAULT_PROJECT, Store, clean_record, new_id, utcnow
from tuneloop.monitor.storage import is_missing as missing
from tuneloop.monitor.wire import ID_MAX_CHARS, FeedbackBatch, PredictionBatch

ARROW_STREAM = "application/vnd.apache.arrow.stream"
MAX_ERRORS = 50
"""A 422 lists at most this many problems (the first ones, by record)."""

WIRE_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "text": pa.string(),
    "label": pa.string(),
    "confidence": pa.float64(),
    "probs": pa.map_(pa.string(), pa.float64()),
    "embedding": pa.list_(pa.float32()),
    "model_version": pa.string(),
    "ts": pa.timestamp("us"),
    "metadata": pa.string(),
    "latency_ms": pa.float64(),
}
REQUIRED = ("text", "label")
STORE_TYPES: dict[str, pa.DataType] = {
    **WIRE_TYPES, "probs": pa.string(), "margin": pa.float64(),
}
STORE_ORDER = ["id", "ts", "model_version", "text", "label", "confidence", "margin", "probs", "embedding",
               "latency_ms", "metadata"]


@dataclass(frozen=True)
class IngestRules:
    """What a batch for one project must satisfy (from the project and ``[server]``/``[project]``)."""

    labels: tuple[str, ...]
    embedding_dim: int
    max_text_chars: int
    max_batch: int
    max_future_seconds: int


def rules_for(store: Store, settings: Settings, project: str) -> IngestRules:
    s = settings.server
    return IngestRules(
        labels=tuple(labels_for(store, settings, project)),
        embedding_dim=settings.project.embedding_dim,
        max_text_chars=s.max_text_chars,
        max_batch=s.max_batch,
        max_future_seconds=s.max_future_seconds,
    )


def error(loc: tuple[Any, ...], msg: str, kind: str = "value_error", value: Any = None) -> dict[str, Any]:
    """One 422 entry in FastAPI's shape."""
    return {"type": kind, "loc": list(loc), "msg": msg, "input": value}


def _record_loc(i: int, field: str, *more: Any) -> tuple[Any, ...]:
    return ("body", "records", int(i), field, *more)


def _short(value: Any, limit: int = 80) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value


class _Errors:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def rows(self, mask: np.ndarray, field: str, msg: Any, values: pa.Array | None = None) -> None:
        """Add an error for each row where ``mask``; ``msg`` is a string or ``f(row) -> str``."""
        for i in np.flatnonzero(mask)[: MAX_ERRORS]:
            value = _short(values[int(i)].as_py()) if values is not None else None
            self.items.append(error(_record_loc(i, field), msg(int(i)) if callable(msg) else msg, value=value))

    def sorted(self) -> list[dict[str, Any]]:
        self.items.sort(key=lambda e: (e["loc"][2] if len(e["loc"]) > 2 else -1))
        return self.items[:MAX_ERRORS]


def _mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Boolean array -> numpy, nulls as False."""
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


# -- JSON bodies ----------------------------------------------------------------------------------
def json_to_wire(batch: PredictionBatch) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Columns of a parsed JSON batch as a wire table (plus metadata errors: NaN, not JSON)."""
    recs = batch.records
    errors = []
    metadata: list[str | None] = []
    for i, r in enumerate(recs):
        if r.metadata is None:
            metadata.append(None)
            continue
        try:
            metadata.append(json.dumps(r.metadata, allow_nan=False, separators=(",", ":")))
        except (ValueError, TypeError) as e:
            errors.append(error(_record_loc(i, "metadata"), f"metadata must be plain JSON: {e}"))
            metadata.append(None)
    ts = [None if r.ts is None else naive_utc(r.ts) for r in recs]
    table = pa.table({
        "id": pa.array([r.id for r in recs], pa.string()),
        "text": pa.array([r.text for r in recs], pa.string()),
        "label": pa.array([r.label for r in recs], pa.string()),
        "confidence": pa.array([r.confidence for r in recs], pa.float64()),
        "probs": pa.array([None if r.probs is None else list(r.probs.items()) for r in recs], WIRE_TYPES["probs"]),
        "embedding": pa.array([r.embedding for r in recs], WIRE_TYPES["embedding"]),
        "model_version": pa.array([r.model_version for r in recs], pa.string()),
        "ts": pa.array(ts, WIRE_TYPES["ts"]),
        "metadata": pa.array(metadata, pa.string()),
        "latency_ms": pa.array([r.latency_ms for r in recs], pa.float64()),
    })
    return table, errors


def naive_utc(ts: datetime) -> datetime:
    """Naive UTC (what every TIMESTAMP column holds); a naive input is taken as UTC already."""
    if ts.tzinfo is None:
        return ts
    return (ts - ts.utcoffset()).replace(tzinfo=None)  # type: ignore[operator]


# -- Arrow bodies ---------------------------------------------------------------------------------
def read_arrow(body: bytes) -> tuple[pa.Table | None, list[dict[str, Any]]]:
    """An Arrow IPC stream -> wire table with the canonical column types, or the 422 errors."""
    try:
        table = ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
        return None, [error(("body",), f"not a valid Arrow IPC stream: {e}", "arrow_invalid")]
    errors = []
    for name in table.column_names:  # invalid UTF-8 or offsets: refuse here, not deep inside a compute kernel
        try:
            table.column(name).validate(full=True)
        except (pa.ArrowInvalid, pa.ArrowException) as e:
            errors.append(error(("body", name), f"column {name!r} holds invalid data: {e}", "arrow_invalid"))
    if errors:
        return None, errors
    return conform(table)


def conform(table: pa.Table) -> tuple[pa.Table | None, list[dict[str, Any]]]:
    """Check names and cast each column to its wire type (tz-aware timestamps become naive UTC)."""
    errors = []
    for name in table.column_names:
        if name not in WIRE_TYPES:
            errors.append(error(("body", name), f"unknown column {name!r}; allowed: {', '.join(WIRE_TYPES)}",
                                "extra_forbidden"))
    for name in REQUIRED:
        if name not in table.column_names:
            errors.append(error(("body", name), f"column {name!r} is required", "missing"))
    if errors:
        return None, errors
    columns = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        target = WIRE_TYPES[name]
        if name == "ts" and not (pa.types.is_timestamp(col.type) or pa.types.is_date(col.type)):
            errors.append(error(("body", name), f"column 'ts' must be a timestamp (UTC when naive), not {col.type}",
                                "type_error"))
            continue
        try:  # sub-microsecond timestamps are truncated; any other lossy cast is refused
            columns[name] = col if col.type == target else col.cast(target, safe=name != "ts")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            errors.append(error(("body", name), f"column {name!r} of type {col.type} cannot be read as {target}: {e}",
                                "type_error"))
    if errors:
        return None, errors
    return pa.table(columns), []


# -- one validation for both formats --------------------------------------------------------------
def validate_batch(table: pa.Table, rules: IngestRules, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every rule that depends on configuration, as one vectorised pass; returns 422 entries."""
    n = table.num_rows
    if n == 0:
        return [error(("body", "records"), "the batch is empty: send at least one record", "too_short")]
    if n > rules.max_batch:
        return [error(("body", "records"), f"{n} records in one request; the limit is server.max_batch = "
                                           f"{rules.max_batch}", "too_long")]
    err = _Errors()
    names = set(table.column_names)
    labels = pa.array(list(rules.labels), pa.string())
    label_list = ", ".join(rules.labels)

    for name in REQUIRED:
        col = table.column(name)
        err.rows(_mask(col.is_null()), name, f"{name} is required")
    text = table.column("text")
    length = pc.utf8_length(text)
    err.rows(_mask(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)), "text", "text is empty or blank")
    err.rows(_mask(pc.greater(length, rules.max_text_chars)), "text",
             lambda i: f"text has {length[i].as_py()} characters; the limit is server.max_text_chars = "
                       f"{rules.max_text_chars}")
    label = table.column("label")
    err.rows(_mask(pc.and_(label.is_valid(), pc.invert(pc.is_in(label, labels)))), "label",
             f"unknown label; the project's labels are: {label_list}", label)
    for name in ("id", "model_version"):
        if name in names:
            col = table.column(name)
            err.rows(_mask(pc.equal(pc.utf8_length(col), 0)), name, f"{name} must not be empty")
            err.rows(_mask(pc.greater(pc.utf8_length(col), ID_MAX_CHARS)), name,
                     f"{name} is longer than {ID_MAX_CHARS} characters")
    for name, (lo, hi) in (("confidence", (0.0, 1.0)), ("latency_ms", (0.0, math.inf))):
        if name in names:
            col = table.column(name)
            bad = pc.or_(pc.invert(pc.is_finite(col)), pc.or_(pc.less(col, lo), pc.greater(col, hi)))
            rng = f"between {lo:g} and {hi:g}" if hi < math.inf else f"at least {lo:g}"
            err.rows(_mask(bad), name, f"{name} must be a finite number {rng}", col)
    if "probs" in names:
        _check_probs(table.column("probs"), rules, labels, err)
    if "embedding" in names:
        _check_embedding(table.column("embedding"), rules.embedding_dim, err)
    if "ts" in names:
        limit = (now or utcnow()) + timedelta(seconds=rules.max_future_seconds)
        ts = table.column("ts")
        err.rows(_mask(pc.greater(ts, pa.scalar(limit, ts.type))), "ts",
                 f"ts is more than server.max_future_seconds = {rules.max_future_seconds} s in the future "
                 "(timestamps are UTC)", ts)
    if "metadata" in names:
        bad = np.array([v is not None and not _json_object(v) for v in table.column("metadata").to_pylist()])
        err.rows(bad, "metadata", "metadata must be a JSON object (no NaN/Infinity)")
    return err.sorted()


def _json_object(text: str) -> bool:
    def reject(token: str) -> Any:
        raise ValueError(token)

    try:
        return isinstance(json.loads(text, parse_constant=reject), dict)
    except ValueError:
        return False


def _check_probs(probs: pa.ChunkedArray | pa.Array, rules: IngestRules, labels: pa.Array, err: _Errors) -> None:
    probs = probs.combine_chunks() if isinstance(probs, pa.ChunkedArray) else probs
    n = len(probs)
    offsets = probs.offsets.to_numpy()
    k = np.diff(offsets)
    parents = np.repeat(np.arange(n), k)
    keys = probs.keys.slice(offsets[0], offsets[-1] - offsets[0])
    values = probs.items.slice(offsets[0], offsets[-1] - offsets[0])
    present = _mask(probs.is_valid())
    err.rows(present & (k == 0), "probs", "probs is empty")
    bad_key = np.zeros(n, bool)
    bad_key[parents[~_mask(pc.is_in(keys, labels))]] = True
    err.rows(bad_key, "probs", f"probs has labels outside the project's labels ({', '.join(rules.labels)})")
    vals = values.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN: not finite
    bad_value = np.zeros(n, bool)
    bad_value[parents[~(np.isfinite(vals) & (vals >= 0) & (vals <= 1))]] = True
    err.rows(bad_value & ~bad_key, "probs", "probs values must be finite numbers between 0 and 1")
    sums = np.bincount(parents, weights=np.nan_to_num(vals), minlength=n)
    tolerance = np.maximum(1e-3 * k, 0.01)
    bad_sum = present & (k > 0) & ~bad_value & ~bad_key & (np.abs(sums - 1.0) > tolerance)
    err.rows(bad_sum, "probs", lambda i: f"probs sum to {sums[i]:.6g}; they must sum to 1 "
                                         f"(tolerance {tolerance[i]:.3g})")


def _check_embedding(emb: pa.ChunkedArray | pa.Array, dim: int, err: _Errors) -> None:
    emb = emb.combine_chunks() if isinstance(emb, pa.ChunkedArray) else emb
    n = len(emb)
    lengths = pc.list_value_length(emb)
    wrong = _mask(pc.not_equal(lengths, dim))
    err.rows(wrong, "embedding", lambda i: f"embedding has {lengths[i].as_py()} values; "
                                          f"project.embedding_dim is {dim}")
    flat = pc.list_flatten(emb)
    if len(flat):
        finite = np.isfinite(flat.to_numpy(zero_copy_only=False))
        if not finite.all():
            bad = np.zeros(n, bool)
            bad[pc.list_parent_indices(emb).to_numpy()[~finite]] = True
            err.rows(bad & ~wrong, "embedding", "embedding values must be finite (float32 range, no NaN/inf)")


# -- to the store's columns -----------------------------------------------------------------------
def to_store_table(table: pa.Table, now: datetime | None = None) -> pa.Table:
    """A validated wire table -> the store's prediction columns (fixed order and types).

    ``probs`` becomes JSON text; ``confidence`` defaults to max(probs) and ``margin`` (top-1 minus
    top-2 probability, what uncertainty sampling ranks by) is derived from probs; a missing ``ts``
    is the arrival time.
    """
    n, now = table.num_rows, now or utcnow()
    cols: dict[str, pa.Array | pa.ChunkedArray] = {
        name: table.column(name) if name in table.column_names else pa.nulls(n, STORE_TYPES[name])
        for name in STORE_ORDER if name != "probs"
    }
    cols["ts"] = pc.fill_null(cols["ts"], pa.scalar(now, WIRE_TYPES["ts"]))
    cols["probs"] = pa.nulls(n, pa.string())
    if "probs" in table.column_names:
        rows = table.column("probs").to_pylist()
        probs_json: list[str | None] = []
        top1 = np.full(n, np.nan)
        margin = np.full(n, np.nan)
        for i, row in enumerate(rows):
            if row is None:
                probs_json.append(None)
                continue
            d = dict(row)
            probs_json.append(json.dumps(d, separators=(",", ":")))
            ranked = sorted(d.values(), reverse=True)
            top1[i] = ranked[0]
            margin[i] = ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
        cols["probs"] = pa.array(probs_json, pa.string())
        cols["margin"] = pa.array(margin, pa.float64(), from_pandas=True)
        confidence = cols["confidence"]
        cols["confidence"] = pc.coalesce(confidence, pa.array(top1, pa.float64(), from_pandas=True))
    return pa.table({name: cols[name] for name in STORE_ORDER})


# -- feedback -------------------------------------------------------------------------------------
def feedback_table(
    batch: FeedbackBatch, rules: IngestRules, default_annotator: str | None = None
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Feedback records -> the store's feedback columns, or the 422 errors (labels, batch size)."""
    recs = batch.records
    if len(recs) > rules.max_batch:
        return pa.table({}), [error(("body", "records"), f"{len(recs)} records in one request; the limit is "
                                                         f"server.max_batch = {rules.max_batch}", "too_long")]
    allowed = set(rules.labels)
    errors = [
        error(_record_loc(i, "label"), f"unknown label; the project's labels are: {', '.join(rules.labels)}",
              value=_short(r.label))
        for i, r in enumerate(recs) if r.label not in allowed
    ][:MAX_ERRORS]
    columns = {
        "prediction_id": pa.array([r.prediction_id for r in recs], pa.string()),
        "label": pa.array([r.label for r in recs], pa.string()),
        "source": pa.array([r.source for r in recs], pa.string()),
        "annotator": pa.array([r.annotator or default_annotator for r in recs], pa.string()),
    }
    if any(r.id is not None for r in recs):
        columns["id"] = pa.array([r.id or new_id() for r in recs], pa.string())
    return pa.table(columns), errors


# -- reading back ---------------------------------------------------------------------------------
def encode_cursor(ts: datetime, row_id: str) -> str:
    raw = json.dumps([ts.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for anything that is not a cursor this server made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, row_id = json.loads(raw)
        return datetime.fromisoformat(ts), str(row_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"invalid cursor: {e}") from None


def list_predictions(
    store: Store,
    project: str = DEFAULT_PROJECT,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: str | None = None,
    labelled: bool | None = None,
    limit: int = 100,
    cursor: str | None = None,
    order: str = "desc",
    include_embedding: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of predictions with their latest feedback, keyset-paged on ``(ts, id)``.

    Returns ``(items, next_cursor)``; ``next_cursor`` is None on the last page. Paging is stable
    while rows arrive: a row inserted behind the cursor is simply not on later pages.
    """
    if order not in ("asc", "desc"):
        raise ValueError("order must be 'asc' or 'desc'")
    df = store.predictions.page(
        project, since=since, until=until, model_version=model_version, labelled=labelled,
        after=decode_cursor(cursor) if cursor else None, descending=order == "desc",
        include_embedding=include_embedding, limit=limit + 1,
    )
    rows = [_clean_row(r, include_embedding) for r in df.to_dict("records")]
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["ts"], rows[-1]["id"]) if more and rows else None
    return rows, next_cursor


def _clean_row(row: dict[str, Any], include_embedding: bool) -> dict[str, Any]:
    out = clean_record(row, ("probs", "metadata"))
    for key in ("ts", "feedback_ts"):
        if out[key] is not None:
            out[key] = pd.Timestamp(out[key]).to_pydatetime()
    if include_embedding and row.get("embedding") is not None:
        out["embedding"] = [float(x) for x in row["embedding"]]
    return out


MINUTE_SPAN = timedelta(hours=48)
"""Minute buckets read raw rows, not the hourly rollup: they cover at most this recent span."""


def minute_frames(store: Store, project: str, since: datetime | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(traffic, labelled accuracy) per minute since ``since`` (clamped to ``MINUTE_SPAN`` ago), shaped
    like ``Store.traffic`` and ``Store.labelled_accuracy``: a short run (a demo) needs finer buckets."""
    since = max(since or datetime.min, utcnow() - MINUTE_SPAN)
    return store.predictions.traffic_per_minute(project, since), store.predictions.labelled_accuracy_per_minute(
        project, since)


def stats(
    store: Store, project: str = DEFAULT_PROJECT, bucket: str = "hour", since: datetime | None = None
) -> list[dict[str, Any]]:
    """Per minute/hour/day bucket: traffic and mean confidence (hour and day from the rollup),
    labelled count and accuracy.

    ``estimated_accuracy`` is always null here: nothing fills it. The label-free estimate is a drift
    check, recorded with the other checks (metric ``estimated_accuracy`` in ``GET /v1/checks``).
    """
    if bucket == "minute":
        traffic, labelled = minute_frames(store, project, since)
    else:
        traffic = store.traffic(project, bucket, since)
        labelled = store.labelled_accuracy(project, bucket, since)
    out: dict[Any, dict[str, Any]] = {}

    def slot(key: Any) -> dict[str, Any]:
        return out.setdefault(key, {"bucket": pd.Timestamp(key).to_pydatetime(), "n": 0, "_conf": 0.0,
                                    "n_labelled": 0, "accuracy": None, "estimated_accuracy": None,
                                    "by_model_version": []})

    for r in traffic.to_dict("records"):
        b = slot(r["bucket"])
        n = int(r["n"])
        mean = None if missing(r["mean_confidence"]) else float(r["mean_confidence"])
        b["n"] += n
        b["_conf"] += (mean or 0.0) * n
        b["by_model_version"].append({"model_version": r["model_version"], "n": n, "mean_confidence": mean})
    for r in labelled.to_dict("records"):
        b = slot(r["bucket"])
        b["n_labelled"] = int(r["n_labelled"])
        b["accuracy"] = None if missing(r["accuracy"]) else float(r["accuracy"])
    items = []
    for key in sorted(out):
        b = out[key]
        conf = b.pop("_conf")
        b["mean_confidence"] = conf / b["n"] if b["n"] else None
        items.append(b)
    return items
