"""Classification quality of a model on labelled rows: what the trainer reports and the gate compares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

if TYPE_CHECKING:
    from tuneloop.retrain.model import TextClassifier


def check_labels(found: Sequence[str], labels: Sequence[str]) -> None:
    """Raise ValueError naming every label in ``found`` that is not one of ``labels``."""
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise ValueError(f"unknown labels {unknown} (the model knows {list(labels)})")


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """accuracy, macro_f1, per_class_recall, support, n and the confusion matrix.

    macro_f1 averages over the labels that occur in ``y_true`` or ``y_pred`` (a class absent from
    both says nothing about the model); per_class_recall only lists labels present in ``y_true``.
    Confusion rows are true labels, columns predicted labels, both in ``labels`` order.
    """
    y_true, y_pred, labels = list(y_true), list(y_pred), list(labels)
    n = len(y_true)
    if n == 0:
        return {"accuracy": None, "macro_f1": None, "per_class_recall": {}, "support": {}, "n": 0,
                "confusion": {"labels": labels, "matrix": [[0] * len(labels) for _ in labels]}}
    present = [lab for lab in labels if lab in set(y_true) | set(y_pred)]
    in_true = [lab for lab in labels if lab in set(y_true)]
    recalls = recall_score(y_true, y_pred, labels=in_true, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class_recall": {lab: float(r) for lab, r in zip(in_true, recalls, strict=True)},
        "support": {lab: int(sum(1 for y in y_true if y == lab)) for lab in in_true},
        "n": n,
        "confusion": {"labels": labels,
                      "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
    }


def scored_rows(ids: Sequence[Any], y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, list[Any]]:
    """Per-row outcomes ``{id, label, correct}``: what the gate's paired test compares row by row."""
    return {"id": [str(i) for i in ids], "label": [str(y) for y in y_true],
            "correct": [int(t == p) for t, p in zip(y_true, y_pred, strict=True)]}


def with_rows(metrics: dict[str, Any], df: pd.DataFrame, y_pred: Sequence[str]) -> dict[str, Any]:
    """``metrics`` plus the per-row outcomes of ``y_pred`` on ``df`` (ids from ``df.id`` or positions)."""
    ids = df["id"].tolist() if "id" in df.columns else list(range(len(df)))
    return {**metrics, "rows": scored_rows(ids, df["label"].astype(str).tolist(), list(y_pred))}


def evaluate(classifier: TextClassifier, df: pd.DataFrame, batch_size: int = 64,
             rows: bool = False) -> dict[str, Any]:
    """Predict ``df.text`` and score against ``df.label`` (labels outside the model's map: ValueError).

    ``rows``: also return the per-row outcomes (:func:`scored_rows`) for a paired comparison.
    """
    missing = {"text", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"evaluation data lacks column(s) {sorted(missing)}")
    y_true = df["label"].astype(str).tolist()
    check_labels(y_true, classifier.labels)
    pred = classifier.predict(df["text"].astype(str).tolist(), batch_size=batch_size)
    metrics = classification_metrics(y_true, pred.labels, classifier.labels)
    return with_rows(metrics, df, pred.labels) if rows else metrics
