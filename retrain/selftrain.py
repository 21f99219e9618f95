"""Self-training: agreed, confident predictions on unlabelled recent traffic as extra training rows.

A retrain on a few hundred labels sees a small part of the traffic it must serve. Before training,
two cheap views of the text label the newest unlabelled predictions: logistic regression on the
start model's frozen embeddings (the champion's, adapter on; the base's for a first training) and
the TF-IDF model, both fitted on the training rows. A row becomes a pseudo-label only when the two
views, which fail differently, name the same class and their even blend is confident. Both views are
then refitted on the training rows plus those pseudo-labels, and the pool is labelled again, for
``rounds`` rounds: each round's larger vocabulary and denser cover of the new traffic label more of
the pool, and better. Training then runs once, on the training rows plus the last round's
pseudo-labels; its validation rows stay human labels only.

Measured with bench/self_training.py on the demo's shifted topics (300 random labels plus replay,
v1's embeddings, 800–3,000 unlabelled stream tweets, 1,500 test tweets, 3 seeds): the two views'
even blend scores 0.608 test accuracy without pseudo-labels, 0.628–0.633 after one round and
0.635–0.650 after three, at confidence 0.7 (every one of the 8,487 stream labels: 0.729). Each round
keeps the pseudo-labels in the training rows' class proportions (``balance``): on a first training of
airline tweets (63 % negative) unbalanced rounds leaned to the majority and cost 1.9 points of
macro-F1; balanced, four datasets gain +0.6 to +4.8 points (bench/self_training.py --domains). It
costs about three times a retrain's CPU, so it runs only when asked for.

The pool never holds rows of the evaluation slice (the server leaves them out, as they may be
labelled later and become a gate's holdout) nor texts of this run's holdout or golden set: the gate
still decides on labelled random rows the challenger never trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from tuneloop.retrain import baselines as bl
from tuneloop.retrain.model import TextClassifier

UNLABELLED_FILE = "unlabelled.parquet"
"""The pool of unlabelled recent traffic (columns id, text) beside a run's snapshot."""


@dataclass(frozen=True)
class SelfTraining:
    """What a training run self-trains on: the unlabelled texts and the retrain settings' knobs."""

    pool: list[str] = field(default_factory=list)
    rounds: int = 3
    min_confidence: float = 0.7
    ratio: float = 5.0  # at most this many pseudo-labels per training row, the most confident first
    balance: bool = True  # pseudo-labels per class in the training rows' class proportions
    # pseudo_label()'s results by start model and rows: the trials of a search label the same pool once
    done: dict[str, tuple[pd.DataFrame, dict[str, Any], np.ndarray | None]] = field(
        default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_settings(cls, pool: list[str], settings: Any) -> SelfTraining:
        """The knobs of ``settings`` (a RetrainSettings: pseudo_rounds, pseudo_min_confidence, ...)."""
        return cls(pool, settings.pseudo_rounds, settings.pseudo_min_confidence, settings.pseudo_ratio,
                   settings.pseudo_balance)


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


def _done_key(clf: TextClassifier, start: str, train: pd.DataFrame, plan: SelfTraining, adapter: bool,
              seed: int) -> str:
    h = hashlib.sha256(repr((start, clf.settings.max_length, clf.settings.truncation, adapter, seed, plan.rounds,
                             plan.min_confidence, plan.ratio, plan.balance)).encode())
    for column in (train["text"], train["label"].astype(str), pd.Series(plan.pool, dtype=object)):
        h.update("\x1f".join(map(str, column)).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def pseudo_label(clf: TextClassifier, train: pd.DataFrame, plan: SelfTraining, adapter: bool,
                 seed: int = 0, start: str | None = None) -> tuple[pd.DataFrame, dict[str, Any], np.ndarray | None]:
    """(rows text/label/confidence, facts, embeddings): the pseudo-labels the two frozen views agree on
    after ``plan.rounds`` rounds. ``adapter``: embed with the encoder as it is (a continued version)
    rather than the bare base. The embeddings are those of ``train``'s rows and then of the rows
    returned (None when nothing was embedded), so that training need not embed them again.
    With ``start`` (what ``clf`` was loaded from), the result is kept in ``plan.done`` and a later call
    with the same start, text length, rows and plan (another trial of a search) returns it without
    embedding again."""
    key = None if start is None else _done_key(clf, start, train, plan, adapter, seed)
    if key is not None and key in plan.done:
        rows, facts, embedded = plan.done[key]
        return rows, dict(facts), embedded
    result = _pseudo_label(clf, train, plan, adapter, seed)
    if key is not None:
        plan.done[key] = result
    return result


def _pseudo_label(clf: TextClassifier, train: pd.DataFrame, plan: SelfTraining, adapter: bool,
                  seed: int) -> tuple[pd.DataFrame, dict[str, Any], np.ndarray | None]:
    seen = set(train["text"])
    texts = [t for t in dict.fromkeys(plan.pool) if t not in seen]
    if not texts or plan.rounds <= 0 or plan.ratio * len(train) < 1 or train["label"].nunique() < 2:
        empty = pd.DataFrame({"text": pd.Series(dtype=object), "label": pd.Series(dtype=object),
                              "confidence": pd.Series(dtype=float)})
        return empty, {"pool": len(texts), "rounds": plan.rounds, "min_confidence": plan.min_confidence,
                       "per_round": [], "agreed": 0, "confident": 0, "picked": 0}, None
    x_train = clf.base_pooled(train["text"].tolist(), adapter=adapter)
    x_pool = clf.base_pooled(texts, adapter=adapter)
    picked, label_idx, confidence, facts = agreed_labels(train["text"].tolist(), train["label"].astype(str).tolist(),
                                                         x_train, texts, x_pool, clf.labels, plan, seed)
    rows = pd.DataFrame({"text": [texts[i] for i in picked], "label": [clf.labels[k] for k in label_idx],
                         "confidence": confidence.astype(float)})
    return rows, facts, np.vstack([x_train, x_pool[picked]])


def agreed_labels(train_texts: list[str], train_labels: list[str], x_train: np.ndarray, pool_texts: list[str],
                  x_pool: np.ndarray, labels: list[str], plan: SelfTraining,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(pool rows picked, their label indices, their confidence, facts) after ``plan.rounds`` rounds of
    fitting both views on the training rows plus the previous round's picks: ``x_*`` are the frozen
    embeddings of the texts."""
    cap = int(plan.ratio * len(train_texts))
    prior = pd.Series(train_labels).value_counts(normalize=True).reindex(labels, fill_value=0.0).to_numpy()
    picked, label_idx = np.array([], dtype=int), np.array([], dtype=int)
    facts: dict[str, Any] = {"pool": len(pool_texts), "rounds": plan.rounds, "min_confidence": plan.min_confidence,
                             "cap": cap, "per_round": []}
    for _ in range(plan.rounds):
        predict = fit_views(train_texts + [pool_texts[i] for i in picked],
                            train_labels + [labels[k] for k in label_idx],
                            np.vstack([x_train, x_pool[picked]]), labels, seed)
        frozen, tfidf = predict(pool_texts, x_pool)
        blend = 0.5 * frozen + 0.5 * tfidf
        confidence = blend.max(1)
        agreed = frozen.argmax(1) == tfidf.argmax(1)
        keep = np.flatnonzero(agreed & (confidence >= plan.min_confidence))
        ranked = keep[np.argsort(-confidence[keep], kind="stable")]
        if plan.balance:
            ranked = _in_proportion(ranked, blend[ranked].argmax(1), prior, min(cap, len(ranked)))
        picked = np.sort(ranked[:cap])
        label_idx = blend[picked].argmax(1)
        facts["per_round"].append(int(len(picked)))
    counts = np.bincount(label_idx, minlength=len(labels))
    facts.update({"agreed": int(agreed.sum()), "confident": int(len(keep)), "picked": int(len(picked)),
                  "label_counts": {labels[k]: int(n) for k, n in enumerate(counts) if n}})
    return picked, label_idx, confidence[picked], facts


def _in_proportion(ranked: np.ndarray, label_idx: np.ndarray, prior: np.ndarray, total: int) -> np.ndarray:
    """The first rows of ``ranked`` (most confident first) with at most ``prior[c] * total`` of each class c,
    so that the pseudo-labels do not tilt the training rows further towards the classes the views favour."""
    quota = np.floor(prior * total).astype(int)
    rank_in_class = pd.Series(label_idx).groupby(label_idx).cumcount().to_numpy()
    return ranked[rank_in_class < quota[label_idx]]


def fit_views(texts: list[str], y: list[str], x: np.ndarray, labels: list[str],
              seed: int = 0) -> Callable[[list[str], np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fit both views on the rows (texts, their frozen embeddings ``x``); returns texts, embeddings ->
    (embedding-view probabilities, TF-IDF probabilities), each [n, k] in ``labels`` order."""
    sparse = bl.SparseModel.fit(texts, y, labels, seed)
    coef, intercept = bl.frozen_logreg(x, y, labels, seed)
    return lambda t, e: (softmax(e @ coef.T + intercept, axis=1), sparse.predict_proba(t))
