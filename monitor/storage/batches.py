"""Incoming batches on the Arrow side, before they reach SQL: full column lists, the first row per
id, and the hourly rollup part of the rows just inserted (computed here, so the write path needs no upsert)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ROLLUP_KEY = ["project", "hour", "model_version", "label"]

PREDICTION_COLUMNS = [
    "project", "id", "ts", "model_version", "text", "label", "confidence", "margin", "probs",
    "embedding", "latency_ms", "metadata",
]
FEEDBACK_COLUMNS = ["project", "id", "prediction_id", "label", "ts", "source", "annotator"]
FEEDBACK_SOURCES = ("human", "import", "rule")


def as_arrow(batch: pa.Table | pd.DataFrame | Sequence[dict[str, Any]]) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pd.DataFrame):
        return pa.Table.from_pandas(batch, preserve_index=False)
    return pa.Table.from_pylist(list(batch))


def fill_columns(table: pa.Table, columns: list[str], defaults: dict[str, Any]) -> pa.Table:
    """Add missing optional columns so every append has the full column list, in order."""
    n = table.num_rows
    for col in columns:
        if col not in table.column_names:
            value = defaults.get(col)
            value = value() if callable(value) else value
            table = table.append_column(col, pa.array([value] * n) if value is not None else pa.nulls(n))
    return table.select(columns)


def hourly_part(rows: pa.Table) -> pa.Table | None:
    """Rows of ``prediction_hourly`` for ``rows`` (n and confidence sum per project, hour, version, label).

    None when ``ts`` is not a naive timestamp column (the caller then aggregates in SQL, which casts).
    """
    ts_type = rows.schema.field("ts").type
    if not pa.types.is_timestamp(ts_type) or ts_type.tz is not None:
        return None
    confidence = rows["confidence"]
    if not pa.types.is_floating(confidence.type) and not pa.types.is_integer(confidence.type):
        return None
    keyed = pa.table({
        "project": rows["project"],
        "hour": pc.cast(pc.floor_temporal(rows["ts"], unit="hour"), pa.timestamp("us")),
        "model_version": pc.fill_null(pc.cast(rows["model_version"], pa.string()), ""),
        "label": rows["label"],
        "confidence": pc.fill_null(pc.cast(confidence, pa.float64()), 0.0),
    })
    part = keyed.group_by(ROLLUP_KEY, use_threads=False).aggregate([([], "count_all"), ("confidence", "sum")])
    return part.rename_columns({"count_all": "n"}).select([*ROLLUP_KEY, "n", "confidence_sum"])


def first_rows(table: pa.Table) -> pa.Table:
    """Keep the first row of each (project, id): within one append, the earliest request wins."""
    keys = pa.table({"project": table["project"], "id": table["id"], "row": pa.array(range(table.num_rows))})
    first = keys.group_by(["project", "id"], use_threads=False).aggregate([("row", "min")])["row_min"]
    return table.take(np.sort(first.to_numpy()))
