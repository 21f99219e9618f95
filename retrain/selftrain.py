"""Self-training: confident, agreed predictions on unlabelled recent traffic as extra training rows.

A retrain on a few hundred labels sees a small part of the traffic it must serve. After the usual
training pass, the challenger labels the newest unlabelled predictions; a row becomes a pseudo-label
only when the fine-tuned encoder and the TF-IDF model (two views of the text that fail differently)
name the same class and the served blend is confident. At most ``pseudo_ratio`` pseudo-labels per
new human label are kept, the same number per class at most (the most confident first), so that
the majority class the model already favours cannot swamp the human labels. A second pass from the
same start then trains on the human labels plus the pseudo-labels.

The pool never holds rows of the evaluation slice (the server leaves them out, as they may be
labelled later and become a gate's holdout) nor texts of this run's holdout or golden set: the gate
still decides on labelled random rows the challenger never trained on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tuneloop.retrain.baselines import SparseModel
from tuneloop.retrain.model import TextClassifier

UNLABELLED_FILE = "unlabelled.parquet"
"""The pool of unlabelled recent traffic (columns id, text) beside a run's snapshot."""


def _key(texts: pd.Series) -> pd.Series:
    return texts.astype(str).str.strip().str.lower()


def usable_pool(pool: pd.DataFrame, *blocked: pd.DataFrame | None) -> pd.DataFrame:
    """``pool`` without duplicate texts and without any text of the ``blocked`` frames (holdout, golden, train)."""
    keys = set()
    for frame in blocked:
        if frame is not None and len(frame):
            keys |= set(_key(frame["text"]))
    out = pool[~_key(pool["text"]).isin(keys)]
    return out[~_key(out["text"]).duplicated()].reset_index(drop=True)


def pseudo_label(clf: TextClassifier, texts: list[str], n_new: int, min_confidence: float, ratio: float,
                 sparse: SparseModel | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(rows text/label/confidence, facts): the pseudo-labels ``clf`` and its TF-IDF model agree on.

    ``sparse`` is the TF-IDF model to check against when ``clf`` serves none (blend weight 0).
    """
    empty = pd.DataFrame({"text": pd.Series(dtype=object), "label": pd.Series(dtype=object),
                          "confidence": pd.Series(dtype=float)})
    sparse = clf.sparse or sparse
    if not texts or sparse is None or n_new <= 0 or ratio <= 0:
        return empty, {"pool": len(texts), "agreed": 0, "confident": 0, "picked": 0}
    served_sparse, clf.sparse = clf.sparse, None
    try:
        encoder = clf.predict(texts).probs
    finally:
        clf.sparse = served_sparse
    tfidf = sparse.predict_proba(texts)
    weight = clf.settings.blend_tfidf if served_sparse is not None else 0.5
    blend = (1 - weight) * encoder + weight * tfidf
    agreed = encoder.argmax(1) == tfidf.argmax(1)
    confidence = blend.max(1)
    keep = agreed & (blend.argmax(1) == encoder.argmax(1)) & (confidence >= min_confidence)
    per_class = int(ratio * n_new) // len(clf.labels)
    picked: list[int] = []
    for k in range(len(clf.labels)):
        idx = np.flatnonzero(keep & (blend.argmax(1) == k))
        picked += idx[np.argsort(-confidence[idx], kind="stable")][:per_class].tolist()
    picked.sort()
    rows = pd.DataFrame({"text": [texts[i] for i in picked], "label": [clf.labels[blend[i].argmax()] for i in picked],
                         "confidence": confidence[picked].astype(float)}) if picked else empty
    facts = {"pool": len(texts), "agreed": int(agreed.sum()), "confident": int(keep.sum()), "picked": len(rows),
             "per_class_cap": per_class, "min_confidence": min_confidence,
             "label_counts": {str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()}}
    return rows, facts
