"""Bulk imports for models tuneloop does not serve: a reference window and delayed ground truth.

* :func:`import_reference` stores what an external model predicted on a known-good dataset
  (text, prediction, optionally the true label and class probabilities) as the project's
  ``imported`` reference: drift is measured against it, and its true labels calibrate the
  label-free accuracy estimate. Embeddings are computed with the packaged encoder at import.
* :func:`import_feedback` attaches true labels that arrive later, in bulk, to logged predictions,
  matched by prediction id or by a client key kept in the prediction's metadata
  (e.g. ``metadata.request_id``), and reports what did not match.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from tuneloop.monitor.config import Settings
from tuneloop.monitor.embedder import embedding_array, encoder_for
from tuneloop.monitor.projects import labels_for
from tuneloop.monitor.storage import Store, is_missing, utcnow

IMPORTED_REFERENCE = "imported"
EXAMPLES = 10  # unmatched keys/ids shown in a report
_KEY_FIELD_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
KEY_FIELD_PATTERN = _KEY_FIELD_RE.pattern


class ImportDataError(ValueError):
    """Bad import data: the message says which column or values, in one line."""


def read_records(path: str | Path) -> pd.DataFrame:
    """A CSV, TSV, Parquet, JSON Lines or JSON (list of records) file as a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise ImportDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".csv", ".tsv"}:
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                               na_values=[""])
        if suffix in {".jsonl", ".ndjson"}:
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".json":
            return pd.DataFrame.from_records(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ImportDataError(f"{path}: cannot parse as {suffix[1:]} ({e})") from None
    raise ImportDataError(f"{path}: expected .csv, .tsv, .parquet, .jsonl or .json, got {suffix or 'no suffix'!r}")


def _strings(df: pd.DataFrame, col: str, required: bool) -> list[str | None]:
    values = [None if is_missing(v) else str(v) for v in df[col]]
    if required:
        empty = [i for i, v in enumerate(values) if v is None or not v.strip()]
        if empty:
            raise ImportDataError(f"column {col!r} is empty in {len(empty)} row(s) (first: row {empty[0]})")
    return values


def _check_labels(values: list[str | None], labels: list[str], col: str) -> None:
    unknown = sorted({v for v in values if v is not None and v not in labels})
    if unknown:
        raise ImportDataError(f"column {col!r} has labels {unknown[:EXAMPLES]} outside the project's labels {labels}")


def _probabilities(df: pd.DataFrame, col: str, labels: list[str]) -> list[dict[str, float] | None]:
    out: list[dict[str, float] | None] = []
    for i, v in enumerate(df[col]):
        if is_missing(v):
            out.append(None)
            continue
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                raise ImportDataError(f"column {col!r} row {i}: not a JSON object of label: probability") from None
        if not isinstance(v, dict):
            raise ImportDataError(f"column {col!r} row {i}: expected an object of label: probability")
        probs = {str(k): float(p) for k, p in v.items() if not is_missing(p)}
        bad = sorted(set(probs) - set(labels))
        if bad:
            raise ImportDataError(f"column {col!r} row {i}: labels {bad} outside the project's labels {labels}")
        if any(not 0.0 <= p <= 1.0 for p in probs.values()):
            raise ImportDataError(f"column {col!r} row {i}: probabilities must lie in [0, 1]")
        out.append(probs)
    return out


# ---- reference --------------------------------------------------------------------------------


@dataclass
class ReferenceImport:
    project: str
    reference: str
    rows: int
    with_true_label: int
    with_probabilities: int
    embedding_dim: int
    replaced: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def import_reference(
    store: Store,
    settings: Settings,
    project: str,
    df: pd.DataFrame,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> ReferenceImport:
    """Replace the project's ``imported`` reference with ``df``; return what was stored.

    Columns: ``text``, ``prediction`` (the model's label), optional ``label`` (the true label),
    optional ``probabilities`` (or ``probs``: ``{label: p}`` as an object or JSON text; its max is
    the confidence) or ``confidence``, optional ``embedding``. Missing embeddings are computed with
    ``encode`` (default: the packaged encoder for ``[embedder] base``).
    """
    labels = labels_for(store, settings, project)
    if len(df) == 0:
        raise ImportDataError("the reference has no rows")
    missing = [c for c in ("text", "prediction") if c not in df.columns]
    if missing:
        raise ImportDataError(f"the reference needs columns text and prediction; missing {missing}"
                           + (" (the model's label goes in 'prediction', the true label in 'label')"
                              if "label" in df.columns and "prediction" in missing else ""))
    df = df.reset_index(drop=True)
    texts = _strings(df, "text", required=True)
    predicted = _strings(df, "prediction", required=True)
    _check_labels(predicted, labels, "prediction")
    true = _strings(df, "label", required=False) if "label" in df.columns else [None] * len(df)
    _check_labels(true, labels, "label")

    prob_col = next((c for c in ("probabilities", "probs") if c in df.columns), None)
    probs = _probabilities(df, prob_col, labels) if prob_col else [None] * len(df)
    if prob_col is None and "confidence" in df.columns:
        confidence = [None if is_missing(v) else float(v) for v in pd.to_numeric(df["confidence"], errors="coerce")]
    else:
        confidence = [max(p.values()) if p else None for p in probs]

    vectors = _given_embeddings(df, settings.project.embedding_dim)
    if vectors is None:
        vectors = (encode or encoder_for(settings).encode)([str(t) for t in texts])
    n = len(df)
    table = pa.table({
        "project": pa.array([project] * n, pa.string()),
        "reference": pa.array([IMPORTED_REFERENCE] * n, pa.string()),
        "text": pa.array(texts, pa.string()),
        "label": pa.array(predicted, pa.string()),
        "true_label": pa.array(true, pa.string()),
        "confidence": pa.array(confidence, pa.float64()),
        "probs": pa.array([json.dumps(p) if p else None for p in probs], pa.string()),
        "embedding": embedding_array(vectors),
    })
    replaced = store.references.replace(project, IMPORTED_REFERENCE, table)
    return ReferenceImport(project, IMPORTED_REFERENCE, n, sum(t is not None for t in true),
                           sum(p is not None for p in probs), int(vectors.shape[1]), int(replaced))


def _given_embeddings(df: pd.DataFrame, dim: int) -> np.ndarray | None:
    """The file's own embeddings when every row has one of the same length, else None."""
    if "embedding" not in df.columns:
        return None
    values = list(df["embedding"])
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    values = [json.loads(v) if isinstance(v, str) else v for v in values]
    try:
        out = np.asarray([np.asarray(v, dtype=np.float32) for v in values])
    except ValueError:
        raise ImportDataError("column 'embedding': rows have different lengths") from None
    if out.ndim != 2 or out.shape[1] != dim:
        raise ImportDataError(f"column 'embedding': expected {dim} numbers per row (project.embedding_dim)")
    return out


# ---- feedback ---------------------------------------------------------------------------------


@dataclass
class FeedbackImport:
    project: str
    rows: int
    matched: int
    accepted: int
    duplicates: int
    unmatched: int
    unmatched_examples: list[str] = field(default_factory=list)
    ambiguous: int = 0
    """Keys that matched several predictions (the most recent one got the label)."""
    accuracy: float | None = None
    """Share of the matched rows where the logged prediction equals the imported label."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _feedback_id(prediction_id: str, label: str, ts: Any) -> str:
    """Deterministic: importing the same file twice adds nothing the second time."""
    return hashlib.sha1(f"import\x1f{prediction_id}\x1f{label}\x1f{ts}".encode()).hexdigest()[:32]


def import_feedback(
    store: Store,
    settings: Settings,
    project: str,
    df: pd.DataFrame,
    by: Literal["id", "key"] = "id",
    key_field: str | None = None,
    annotator: str | None = None,
) -> FeedbackImport:
    """Attach the true labels in ``df`` to logged predictions (source ``import``); report the unmatched.

    ``by="id"``: ``df`` has ``prediction_id`` (or ``id``) and ``label``. ``by="key"``: ``df`` has a
    column named ``key_field`` (or ``key``) whose values are matched against
    ``predictions.metadata -> key_field`` (dots address nested fields); when several predictions
    carry the same key, the most recent one is labelled. Optional ``ts`` (when the label was
    given) and ``annotator`` columns. Rows that match no prediction are not stored.
    """
    labels = labels_for(store, settings, project)
    if "label" not in df.columns:
        raise ImportDataError("feedback needs a 'label' column (the true label)")
    df = df.reset_index(drop=True)
    true = _strings(df, "label", required=True)
    _check_labels(true, labels, "label")
    if by == "id":
        col = next((c for c in ("prediction_id", "id") if c in df.columns), None)
        if col is None:
            raise ImportDataError("feedback by id needs a 'prediction_id' column")
        keys = _strings(df, col, required=True)
        matched_ids: list[str | None] = list(keys)
        ambiguous = 0
    elif by == "key":
        if not key_field or not _KEY_FIELD_RE.fullmatch(key_field):
            raise ImportDataError(
                f"key_field must name a metadata field (letters, digits, _ - and dots), got {key_field!r}"
            )
        col = next((c for c in (key_field, "key") if c in df.columns), None)
        if col is None:
            raise ImportDataError(f"feedback by key needs a column {key_field!r} (or 'key') with the client keys")
        keys = _strings(df, col, required=True)
        matched_ids, ambiguous = _match_keys(store, project, [str(k) for k in keys], key_field)
    else:
        raise ImportDataError(f"by must be 'id' or 'key', got {by!r}")

    ts = list(pd.to_datetime(df["ts"], utc=True).dt.tz_convert(None)) if "ts" in df.columns else [None] * len(df)
    who = _strings(df, "annotator", required=False) if "annotator" in df.columns else [None] * len(df)
    now = utcnow()
    records = [
        {"id": _feedback_id(pid, lab, t), "prediction_id": pid, "label": lab,
         "ts": (t.to_pydatetime() if isinstance(t, pd.Timestamp) and not pd.isna(t) else now),
         "source": "import", "annotator": a or annotator}
        for pid, lab, t, a in zip(matched_ids, true, ts, who, strict=True) if pid is not None
    ]
    accepted = duplicates = 0
    unknown: set[str] = set()
    if records:
        table = pa.table({
            "id": pa.array([r["id"] for r in records], pa.string()),
            "prediction_id": pa.array([r["prediction_id"] for r in records], pa.string()),
            "label": pa.array([r["label"] for r in records], pa.string()),
            "ts": pa.array([r["ts"] for r in records], pa.timestamp("us")),
            "source": pa.array([r["source"] for r in records], pa.string()),
            "annotator": pa.array([r["annotator"] for r in records], pa.string()),
        })
        result = store.append_feedback(table, project, keep_unknown=False)
        accepted, duplicates, unknown = result.accepted, result.duplicates, set(result.unknown_ids)
    unmatched = [str(k) for k, pid in zip(keys, matched_ids, strict=True) if pid is None or pid in unknown]
    found = [(r["prediction_id"], r["label"]) for r in records if r["prediction_id"] not in unknown]
    return FeedbackImport(
        project=project, rows=len(df), matched=len(df) - len(unmatched), accepted=accepted,
        duplicates=duplicates, unmatched=len(unmatched), unmatched_examples=unmatched[:EXAMPLES],
        ambiguous=ambiguous, accuracy=_logged_accuracy(store, project, found),
    )


def _json_path(key_field: str) -> str:
    return "$" + "".join(f'."{part}"' for part in key_field.split("."))


def _match_keys(store: Store, project: str, keys: list[str], key_field: str) -> tuple[list[str | None], int]:
    """For each key, the id of the most recent prediction whose metadata carries it (None: no match)."""
    rows = store.predictions.match_metadata_keys(project, keys, _json_path(key_field))
    ids: list[str | None] = [None] * len(keys)
    ambiguous = 0
    for row, pid, n in rows:
        ids[row] = pid
        ambiguous += int(n > 1)
    return ids, ambiguous


def _logged_accuracy(store: Store, project: str, pairs: list[tuple[str, str]]) -> float | None:
    """How often the logged prediction agrees with the imported label (None when nothing matched)."""
    if not pairs:
        return None
    return store.predictions.agreement(project, pairs)
