"""Turning what a query returns into plain Python: SQL NULL arrives as None, NaN, NaT or pd.NA."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa


def to_json(value: Any) -> str | None:
    """A JSON column's text for ``value`` (None stays NULL; dates and other objects as strings)."""
    return None if value is None else json.dumps(value, default=str)


def is_missing(value: Any) -> bool:
    """Whether ``value`` is how a SQL NULL came back (None, NaN, NaT or pd.NA); lists are never missing."""
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def none_if_missing(value: Any) -> Any:
    return None if is_missing(value) else value


def clean_record(row: dict[str, Any], json_columns: tuple[str, ...] = ()) -> dict[str, Any]:
    """One row with NULLs as None and the named JSON text columns parsed."""
    out = {k: none_if_missing(v) for k, v in row.items()}
    for col in json_columns:
        if isinstance(out.get(col), str):
            out[col] = json.loads(out[col])
    return out


def records(df: pd.DataFrame, json_columns: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every row of ``df`` as :func:`clean_record` gives it."""
    return [clean_record(r, json_columns) for r in df.to_dict("records")]


def frame_with_embeddings(table: pa.Table) -> pd.DataFrame:
    """A query result as a DataFrame whose ``embedding`` list column is one float32 block handed out
    as row views (converting thousands of lists one by one through pandas costs far more)."""
    if "embedding" not in table.column_names:
        return table.to_pandas()
    col = table.column("embedding").combine_chunks()
    df = table.drop(["embedding"]).to_pandas()
    lengths = col.value_lengths().to_numpy(zero_copy_only=False) if len(col) else np.zeros(0)
    valid = ~col.is_null().to_numpy(zero_copy_only=False) if len(col) else np.zeros(0, bool)
    if len(col) and valid.all() and len(set(lengths.tolist())) == 1:
        block = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(col), -1)
        df["embedding"] = list(block)
    else:
        df["embedding"] = [None if v is None else np.asarray(v, np.float32) for v in col.to_pylist()]
    return df
