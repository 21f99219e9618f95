"""Label quality in the running loop: feedback that looks mislabelled, and how often annotators agree.

The same confident-learning check as the upload report (:func:`tuneloop.retrain.quality.label_errors`)
runs on a project's latest labels, with the embeddings the store already holds for the labelled
predictions. Agreement is measured where two or more annotators labelled the same prediction.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from tuneloop.monitor.storage import Store
from tuneloop.retrain.quality import label_errors
from tuneloop.retrain.scorecard import accuracy_interval

MAX_ROWS = 5000
"""The newest labels checked: enough for the classifier, bounded cost."""


def suspected_feedback(store: Store, project: str, labels: list[str], limit: int = MAX_ROWS) -> dict[str, Any]:
    """The latest labels whose out-of-fold prediction confidently disagrees with them, most suspect first."""
    df = store.feedback.latest_with_embeddings(project, labels, limit)
    if len(df) < 10 or df["label"].nunique() < 2:
        return {"n_checked": len(df), "items": [], "note": "too few labelled predictions with embeddings to check"}
    emb = np.stack([np.asarray(e, dtype=np.float32) for e in df["embedding"]])
    found, _ = label_errors(np.arange(len(df)), df["label"].to_numpy(), labels, emb,
                            texts=df["text"].astype(str).tolist())
    items = []
    likely = [f for f in found if f.check == "label_error"]  # the "possible" tier is not marked
    for fix in likely[0].fixes if likely else []:
        row = df.iloc[fix["row_id"]]
        items.append({"prediction_id": row["prediction_id"], "feedback_id": row["feedback_id"], "text": row["text"],
                      "label": row["label"], "suggested": fix["label"], "confidence": fix["confidence"],
                      "annotator": row["annotator"], "source": row["source"]})
    return {"n_checked": len(df), "items": items}


def suspected_ids(store: Store, project: str, labels: list[str], limit: int = MAX_ROWS) -> set[str]:
    """Prediction ids whose latest label the check flags: left out of retraining when
    ``retrain.exclude_suspected_labels`` is on (a relabel by a person makes a new latest label, checked anew)."""
    return {str(item["prediction_id"]) for item in suspected_feedback(store, project, labels, limit)["items"]}


def annotator_agreement(store: Store, project: str) -> dict[str, Any]:
    """Pairwise agreement on predictions labelled by two or more annotators: overall, per annotator, per class."""
    df = store.feedback.latest_per_annotator(project)
    pairs: list[tuple[str, str, str, str]] = []  # (annotator a, label a, annotator b, label b)
    for _, group in df.groupby("prediction_id"):
        rows = list(zip(group["annotator"], group["label"], strict=True))
        pairs += [(a, la, b, lb) for (a, la), (b, lb) in combinations(rows, 2)]
    if not pairs:
        return {"n_items": 0, "n_pairs": 0, "overall": None, "per_annotator": {}, "per_class": {}}
    agree = np.array([la == lb for _, la, _, lb in pairs])

    def rate(mask: np.ndarray) -> dict[str, Any]:
        n, k = int(mask.sum()), int(agree[mask].sum())
        return {"agreement": k / n if n else None, "ci95": accuracy_interval(k, n), "n_pairs": n}

    annotators = sorted({p[0] for p in pairs} | {p[2] for p in pairs})
    classes = sorted({p[1] for p in pairs} | {p[3] for p in pairs})
    return {
        "n_items": int(df.groupby("prediction_id")["annotator"].nunique().ge(2).sum()), "n_pairs": len(pairs),
        "overall": rate(np.ones(len(pairs), dtype=bool)),
        "per_annotator": {a: rate(np.array([a in (p[0], p[2]) for p in pairs])) for a in annotators},
        "per_class": {c: rate(np.array([c in (p[1], p[3]) for p in pairs])) for c in classes},
    }
