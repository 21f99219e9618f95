"""A version's drift reference: the model's own predictions and embeddings on rows it saw or held out.

Written as ``reference.parquet`` inside the version directory before its atomic rename; the server
loads it when the version is registered, and the drift checks compare live traffic with it (their
model-output checks use the rows the model was not trained on only). After the version is promoted,
the server adds recent traffic re-scored by it (split :data:`RESCORED_SPLIT`): rows it was not
trained on that look like what it serves, unlike the held-out labelled rows alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_FILE = "reference.parquet"
REFERENCE_MAX_ROWS = 5000
"""Reference rows kept per version: the drift checks sample 2 000 per side, more only costs time."""
RESCORED_SPLIT = "rescored"
"""The ``split`` of reference rows that are earlier traffic scored again by the version after its promotion."""


def not_trained_on(reference: pd.DataFrame) -> pd.DataFrame:
    """The reference rows the version was not trained on (``split`` other than "train"; all without ``split``).

    Held-out rows and re-scored traffic: unlike training rows (label-queue picks, replayed rows, in-sample
    predictions) they look like what the version serves.
    """
    if "split" not in reference.columns:
        return reference
    return reference[reference["split"].astype(str) != "train"].reset_index(drop=True)


def _probs_json(labels: list[str], row: np.ndarray) -> str:
    return json.dumps({lab: round(float(p), 6) for lab, p in zip(labels, row, strict=True)})


def reference_rows(clf: Any, df: pd.DataFrame, split: str | Sequence[str | None]) -> tuple[pd.DataFrame, list[str]]:
    """The classifier's predictions on ``df`` in the drift-reference layout (+ the predicted labels).

    ``split`` names the part every row comes from ("train", "holdout"…), or gives one name per row.
    Without a ``label`` column (unlabelled traffic) ``true_label`` is empty.
    """
    pred = clf.predict(df["text"].astype(str).tolist())
    out = pd.DataFrame({
        "id": df["id"].astype(str).to_numpy() if "id" in df.columns else [None] * len(df),
        "text": df["text"].astype(str).to_numpy(),
        "label": pred.labels,
        "true_label": df["label"].astype(str).to_numpy() if "label" in df.columns else [None] * len(df),
        "confidence": pred.confidence.astype(float),
        "probs": [_probs_json(clf.labels, p) for p in pred.probs],
        "embedding": list(pred.embeddings.astype(np.float32)),
        "split": split if isinstance(split, str) else pd.Series(list(split), dtype=object).to_numpy(),
    })
    return out, pred.labels


def reference_sample(splits: Sequence[str | None], max_rows: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``max_rows`` reference rows: every row the model was not trained on
    first (the drift checks' model-output reference is made of those only), training rows after."""
    splits = np.asarray([str(s) for s in splits])
    rng = np.random.default_rng(seed)
    held_out = rng.permutation(np.flatnonzero(splits != "train"))
    trained = rng.permutation(np.flatnonzero(splits == "train"))
    return np.sort(np.concatenate([held_out, trained])[:max_rows])


def build_reference(classifier: Any, data: pd.DataFrame, split: Sequence[str | None] | None = None,
                    max_rows: int = REFERENCE_MAX_ROWS, seed: int = 0) -> pd.DataFrame:
    """Run ``classifier`` over labelled ``data`` (text, label): the rows a version's reference holds.

    At most ``max_rows`` rows (a seeded sample, rows not trained on first) are kept, so the cost stays
    bounded for big data sets.
    """
    data = data.reset_index(drop=True)
    splits: list[str | None] = list(split) if split is not None else [None] * len(data)
    if len(data) > max_rows:
        keep = reference_sample(splits, max_rows, seed)
        data, splits = data.iloc[keep].reset_index(drop=True), [splits[i] for i in keep]
    return reference_rows(classifier, data, splits)[0]
