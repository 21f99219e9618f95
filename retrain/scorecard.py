"""An evaluation a domain expert can read: how good is the new model, compared with a simple one?

Built from what the training job wrote (the version's ``metrics.json`` and the holdout rows of
its ``reference.parquet``, or the model's predictions on the snapshot's holdout) and from the
snapshot: accuracy and macro-F1 on the held-out split with 95 % intervals, the same for a TF-IDF +
logistic-regression baseline trained on the same rows, a confusion matrix, per-class precision
and recall, the most confident mistakes with their texts, and a verdict in plain words.

The holdout is a seeded stratified random split of the dataset, never trained on, so the
figures are unbiased estimates for data like the upload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

MISTAKES = 20


def accuracy_interval(correct: int, n: int) -> list[float] | None:
    """Wilson 95 % interval of an accuracy from ``n`` rows."""
    if n == 0:
        return None
    ci = binomtest(correct, n).proportion_ci(0.95, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def tfidf_baseline(train: pd.DataFrame, test: pd.DataFrame, labels: list[str]) -> list[str]:
    """Predictions of the TF-IDF + logistic regression baseline every training run records, fit on ``train``."""
    from tuneloop.retrain.baselines import SparseModel

    model = SparseModel.fit(train["text"].astype(str).tolist(), train["label"].astype(str).tolist(), labels)
    return [labels[i] for i in model.predict_proba(test["text"].astype(str).tolist()).argmax(axis=1)]


def difference_interval(a_correct: np.ndarray, b_correct: np.ndarray) -> list[float]:
    """95 % interval of accuracy(a) - accuracy(b) on the same rows: the gate's exact paired bounds at 2.5 % each."""
    from tuneloop.retrain.paired import paired_difference

    r = paired_difference(a_correct.astype(int).tolist(), b_correct.astype(int).tolist(), alpha=0.025)
    return [round(float(r.lower), 4), round(float(r.upper), 4)]


def holdout_predictions(version_dir: Path, holdout: pd.DataFrame) -> pd.DataFrame:
    """The model's holdout rows (text, true_label, label, confidence): from the reference file, else predicted."""
    ref_path = version_dir / "reference.parquet"
    if ref_path.is_file():
        ref = pd.read_parquet(ref_path, columns=["text", "label", "true_label", "confidence", "split"])
        ref = ref[ref["split"] == "holdout"]
        if len(ref) == len(holdout):
            return ref.drop(columns="split").reset_index(drop=True)
    from tuneloop.retrain.versions import load_version

    clf = load_version(version_dir)
    pred = clf.predict(holdout["text"].astype(str).tolist())
    return pd.DataFrame({"text": holdout["text"].astype(str), "label": pred.labels,
                         "true_label": holdout["label"].astype(str), "confidence": pred.confidence.astype(float)})


def _summary(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict[str, Any]:
    correct = int(sum(t == p for t, p in zip(y_true, y_pred, strict=True)))
    n = len(y_true)
    return {"accuracy": correct / n if n else None, "accuracy_ci95": accuracy_interval(correct, n),
            "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)) if n else None,
            "n": n}


def scorecard(version_dir: Path, snapshot_dir: Path | None) -> dict[str, Any]:
    """The evaluation of one version trained from a dataset (see the module docstring)."""
    metrics = json.loads((version_dir / "metrics.json").read_text(encoding="utf-8"))
    labels = list((metrics.get("holdout") or {}).get("confusion", {}).get("labels") or [])
    train = holdout = None
    if snapshot_dir is not None and (snapshot_dir / "holdout.parquet").is_file():
        train = pd.read_parquet(snapshot_dir / "train.parquet")
        holdout = pd.read_parquet(snapshot_dir / "holdout.parquet")
    if holdout is None or not len(holdout):
        raise ValueError(f"version {version_dir.name} has no held-out rows to evaluate on")
    rows = holdout_predictions(version_dir, holdout)
    y_true, y_pred = rows["true_label"].astype(str).tolist(), rows["label"].astype(str).tolist()
    labels = labels or sorted(set(y_true) | set(y_pred))
    model = _summary(y_true, y_pred, labels)

    # the simple baseline: the trainer's own figures when it recorded them, else TF-IDF + LR here
    recorded = (metrics.get("baselines") or {}).get("tfidf_logreg")
    difference_ci = None
    if recorded:
        baseline = {**recorded, "source": "recorded by the training run"}
    else:
        base_pred = tfidf_baseline(train, holdout, labels)
        baseline = {**_summary(y_true, base_pred, labels), "source": "TF-IDF + logistic regression on the same rows"}
        truth = np.array(y_true)
        difference_ci = difference_interval(truth == np.array(y_pred), truth == np.array(base_pred))

    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {lab: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                       "support": int(s)} for lab, p, r, f, s in zip(labels, prec, rec, f1, support, strict=True)}
    wrong = rows[rows["label"] != rows["true_label"]].sort_values("confidence", ascending=False).head(MISTAKES)
    mistakes = [{"text": t, "true_label": y, "predicted": p, "confidence": round(float(c), 4)}
                for t, y, p, c in zip(wrong["text"], wrong["true_label"], wrong["label"], wrong["confidence"],
                                      strict=True)]
    out = {
        "version": version_dir.name, "labels": labels, "model": model, "baseline": baseline,
        "difference_ci95": difference_ci,
        "confusion": {"labels": labels, "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
        "per_class": per_class, "confident_mistakes": mistakes,
        "n_train": metrics.get("n_train"), "train_seconds": metrics.get("train_seconds"),
        "training": training_facts(metrics),
    }
    out["verdict"] = verdict(out)
    return out


def training_facts(metrics: dict[str, Any]) -> dict[str, Any]:
    """How the version was trained, for the evaluation page: what it serves, the pseudo-labels it learnt
    from (self-training) and the search's choice, each None when not used."""
    pseudo, search = metrics.get("self_training"), metrics.get("search")
    return {
        "served": metrics.get("served"),
        "pseudo_labels": None if not pseudo else {"picked": pseudo.get("picked"), "offered": pseudo.get("pool")},
        "search": None if not search else {"trials": len(search["trials"]), "kept_trial": search["kept_trial"],
                                           "kept_changes": search["kept_changes"],
                                           "why": (search.get("choice") or {}).get("words")},
    }


def verdict(card: dict[str, Any]) -> str:
    """One or two plain sentences: better than the simple baseline or not, and the weakest class."""
    acc, base = card["model"]["accuracy"], card["baseline"].get("accuracy")
    n = card["model"]["n"]
    parts = []
    if acc is not None and base is not None:
        points = round(100 * (acc - base))
        ci = card.get("difference_ci95")
        sure = ci is None or ci[0] > 0 or ci[1] < 0
        if points > 0:
            parts.append(f"fine-tuning beats the simple baseline by {points} point{'s' if abs(points) != 1 else ''}"
                         + ("" if sure else f" (not yet certain with {n} test rows)"))
        elif points < 0:
            parts.append(f"the simple baseline is better by {-points} point{'s' if abs(points) != 1 else ''}: "
                         "more or cleaner data, or more epochs, may help"
                         + ("" if sure else f" (uncertain with {n} test rows)"))
        else:
            parts.append("fine-tuning and the simple baseline are level")
    if card["per_class"]:
        weakest = min(card["per_class"], key=lambda k: card["per_class"][k]["recall"])
        parts.append(f"{weakest} is the weakest class (recall {card['per_class'][weakest]['recall']:.0%})")
    return "; ".join(parts) + "." if parts else "no evaluation available."
