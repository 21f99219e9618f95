"""The SDK's wire format: buffered predictions -> the Arrow table ``POST /v1/predictions`` takes.

Two ways in: per-row tuples (``log_prediction``) become a table when a batch is sent; a caller's
whole table (``log_predictions``) is normalised column by column once, in the caller, and its
slices are sent as they are, so many rows never pass through Python objects. Needs only pyarrow
(numpy when the caller's data already comes from it).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

PROBS_TYPE = pa.map_(pa.string(), pa.float64())
TS_TYPE = pa.timestamp("us", tz="UTC")

# One buffered prediction: (id, text, label, confidence, probs, embedding, model_version, ts, metadata)
_Pred = tuple[str, str, str, Any, Any, Any, Any, Any, Any]
PRED_FIELDS = ("id", "text", "label", "confidence", "probs", "embedding", "model_version", "ts", "metadata")
# The order predictions_table writes its columns in (optional ones only when some row has a value)
_WIRE_ORDER = ("id", "text", "label", "ts", "confidence", "probs", "embedding", "model_version", "metadata")


class PredictionChunk:
    """Up to ``batch_size`` rows of a caller's table, already in the wire schema; one buffer entry."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self) -> list[_Pred]:
        """The same rows as per-row tuples, for the paths that must treat records one by one."""
        return [tuple(_row_value(name, row.get(name)) for name in PRED_FIELDS)  # type: ignore[misc]
                for row in self.table.to_pylist()]


def _row_value(name: str, value: Any) -> Any:
    return dict(value) if name == "probs" and isinstance(value, list) else value


def as_rows(entries: Sequence[Any]) -> list[Any]:
    """Buffer entries (tuples and chunks) -> one tuple per record."""
    rows: list[Any] = []
    for entry in entries:
        if isinstance(entry, PredictionChunk):
            rows.extend(entry.rows())
        else:
            rows.append(entry)
    return rows


def entries_table(entries: Sequence[Any]) -> pa.Table:
    """Buffer entries -> one wire table: chunks as they are, runs of tuples through predictions_table."""
    tables: list[pa.Table] = []
    run: list[_Pred] = []
    for entry in entries:
        if isinstance(entry, PredictionChunk):
            if run:
                tables.append(predictions_table(run))
                run = []
            tables.append(entry.table)
        else:
            run.append(entry)
    if run:
        tables.append(predictions_table(run))
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default").combine_chunks()


def as_arrow(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if type(data).__module__.startswith("pandas"):  # pandas is the caller's: not imported here otherwise
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"log_predictions takes a pandas DataFrame or a pyarrow Table, not {type(data).__name__}")


def _json_text(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else json.dumps(value, allow_nan=False,
                                                                            separators=(",", ":"))


def _check_text_and_label(table: pa.Table) -> None:
    for name in ("text", "label"):
        column = table.column(name)
        if not _is_string(column.type) or column.null_count:
            raise TypeError("text and label must be non-null strings")


def per_row_tuples(table: pa.Table, now: float) -> list[_Pred]:
    """A caller's table -> per-row tuples (for columns the vectorised path does not take)."""
    n = table.num_rows
    cols = {name: table.column(name).to_pylist() if name in table.column_names else [None] * n
            for name in PRED_FIELDS}
    cols["id"] = [i or uuid.uuid4().hex for i in cols["id"]]
    cols["probs"] = [dict(p) if isinstance(p, list) else p for p in cols["probs"]]
    cols["metadata"] = [_json_text(m) for m in cols["metadata"]]
    cols["ts"] = [now if t is None else t for t in cols["ts"]]
    return list(zip(*(cols[name] for name in PRED_FIELDS), strict=True))


class NotVectorisable(Exception):
    """A column's type has no direct conversion: the table goes the per-row way."""


def wire_table(table: pa.Table, now: float) -> pa.Table:
    """A caller's table (known columns, text and label present) -> the wire table, column by column.

    Raises TypeError/ValueError for the caller's mistakes (as the per-row path does), and
    NotVectorisable when some column needs the per-row conversion.
    """
    _check_text_and_label(table)
    n = table.num_rows
    out: dict[str, pa.ChunkedArray | pa.Array] = {"id": _ids(table.column("id") if "id" in table.column_names
                                                             else None, n)}
    for name in ("text", "label"):
        out[name] = table.column(name).cast(pa.string())
    try:  # a value a cast cannot carry (NaN seconds, say): the per-row way sets aside just its row
        out["ts"] = _timestamps(table.column("ts") if "ts" in table.column_names else None, n, now)
        for name in ("confidence", "probs", "embedding", "model_version", "metadata"):
            if name in table.column_names:
                column = table.column(name)
                if column.null_count < n:
                    out[name] = _CONVERTERS[name](column)
    except pa.ArrowException as e:
        raise NotVectorisable(str(e)) from e
    return pa.table({name: out[name] for name in _WIRE_ORDER if name in out})


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _ids(column: pa.ChunkedArray | None, n: int) -> pa.Array:
    if column is None or pa.types.is_null(column.type):
        return pa.array([uuid.uuid4().hex for _ in range(n)], pa.string())
    if not _is_string(column.type):
        raise NotVectorisable("id")
    column = column.cast(pa.string())
    if column.null_count == 0 and not pc.any(pc.equal(column, "")).as_py():
        return column
    return pa.array([i or uuid.uuid4().hex for i in column.to_pylist()], pa.string())


def _timestamps(column: pa.ChunkedArray | None, n: int, now: float) -> pa.ChunkedArray | pa.Array:
    now_ts = pa.scalar(int(now * 1_000_000), pa.int64()).cast(TS_TYPE)
    if column is None or pa.types.is_null(column.type):
        return pa.repeat(now_ts, n)
    if pa.types.is_timestamp(column.type):
        column = column.cast(TS_TYPE, safe=False)  # naive = UTC; sub-microseconds truncated
    elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):  # Unix seconds
        micros = pc.trunc(pc.multiply(column.cast(pa.float64()), 1_000_000.0))
        column = micros.cast(pa.int64()).cast(TS_TYPE)
    else:
        raise NotVectorisable("ts")
    return column.fill_null(now_ts) if column.null_count else column


def _confidence(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise NotVectorisable("confidence")
    return column.cast(pa.float64(), safe=False)


def _probs(column: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    t = column.type
    try:
        if pa.types.is_map(t):
            return column.cast(PROBS_TYPE)
        if (pa.types.is_struct(t) and column.null_count == 0 and t.num_fields
                and all(pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in t)):
            return _struct_as_map(column.combine_chunks())
        values = [_row_value("probs", p) for p in column.to_pylist()]
        return pa.array([None if p is None else list(p.items()) for p in values], PROBS_TYPE)
    except (pa.ArrowException, TypeError, ValueError, AttributeError) as e:
        raise NotVectorisable("probs") from e


def _struct_as_map(column: pa.StructArray) -> pa.MapArray:
    """``{label: p}`` dicts read by pandas/pyarrow as a struct column -> the map column, per field."""
    n, k = len(column), column.type.num_fields
    names = [f.name for f in column.type]
    items = pa.concat_arrays([column.field(j).cast(pa.float64()) for j in range(k)])
    order = pa.array([j * n + i for i in range(n) for j in range(k)], pa.int64())
    keys = pc.take(pa.array(names, pa.string()), pa.array(list(range(k)) * n, pa.int32()))
    offsets = pa.array(range(0, (n + 1) * k, k), pa.int32())
    return pa.MapArray.from_arrays(offsets, keys, pc.take(items, order))


def _embedding(column: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    t = column.type
    try:
        if ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
                and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))):
            return column.cast(pa.list_(pa.float32()), safe=False)
        return _embedding_array(column.to_pylist())
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise NotVectorisable("embedding") from e


def _model_version(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if not _is_string(column.type):
        raise NotVectorisable("model_version")
    return column.cast(pa.string())


def _metadata(column: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if _is_string(column.type):
        return column.cast(pa.string())
    return pa.array([_json_text(m) for m in column.to_pylist()], pa.string())  # the caller's mistakes raise here


_CONVERTERS = {"confidence": _confidence, "probs": _probs, "embedding": _embedding,
               "model_version": _model_version, "metadata": _metadata}


def _epoch_us(ts: Any) -> int:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return int(ts.timestamp() * 1_000_000)
    return int(float(ts) * 1_000_000)


def _embedding_array(values: Sequence[Any]) -> pa.Array:
    try:  # a dense matrix is one copy with numpy; without numpy, pyarrow converts lists itself
        import numpy as np
    except ImportError:
        return pa.array([None if v is None else list(v) for v in values], pa.list_(pa.float32()))
    present = [v for v in values if v is not None]
    if len(present) == len(values):
        try:
            matrix = np.asarray(values, dtype=np.float32)
        except ValueError:  # ragged: the server will say which row is wrong
            matrix = None
        if matrix is not None and matrix.ndim == 2:
            n, d = matrix.shape
            offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
            return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
    return pa.array([None if v is None else np.asarray(v, dtype=np.float32) for v in values],
                    pa.list_(pa.float32()))


def predictions_table(records: Sequence[_Pred]) -> pa.Table:
    """Buffered predictions -> the Arrow table ``POST /v1/predictions`` takes (absent columns left out)."""
    ids, texts, labels, conf, probs, emb, versions, ts, meta = zip(*records, strict=True)
    cols: dict[str, pa.Array] = {
        "id": pa.array(ids, pa.string()),
        "text": pa.array(texts, pa.string()),
        "label": pa.array(labels, pa.string()),
        "ts": pa.array([_epoch_us(t) for t in ts], pa.int64()).cast(TS_TYPE),
    }
    if any(c is not None for c in conf):
        cols["confidence"] = pa.array(conf, pa.float64())
    if any(p is not None for p in probs):
        cols["probs"] = pa.array([None if p is None else list(p.items()) for p in probs], PROBS_TYPE)
    if any(e is not None for e in emb):
        cols["embedding"] = _embedding_array(emb)
    if any(v is not None for v in versions):
        cols["model_version"] = pa.array(versions, pa.string())
    if any(m is not None for m in meta):
        cols["metadata"] = pa.array(meta, pa.string())
    return pa.table(cols)


def arrow_stream(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()
