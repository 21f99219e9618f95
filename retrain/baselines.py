"""Simple baselines fitted on every training run's own split, and the verdict against them.

A fine-tuned model is only worth serving if it beats what a few lines of scikit-learn give on the
same rows: always predicting the majority class, TF-IDF (1–2-grams) + logistic regression, and
logistic regression on the frozen base encoder's pooled embeddings. All three fit in seconds.

:class:`SparseModel` is the TF-IDF + logistic regression model in a form that a version directory
can carry without pickle (vocabulary, idf and coefficients as JSON and safetensors): the served
classifier can blend its probabilities with the fine-tuned encoder's (see
:mod:`tuneloop.retrain.model`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy.special import softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from tuneloop.retrain.choice import ALPHA, Candidate, Choice, gain_interval, keep_default_unless_better
from tuneloop.retrain.evaluate import classification_metrics

TFIDF_FILE, TFIDF_WEIGHTS_FILE = "tfidf.json", "tfidf.safetensors"
TFIDF_MAX_FEATURES = 50_000  # 1,000 long reviews give ~60k 1–2-grams; the rarest add nothing but size
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # TF-IDF shares tried on validation (model.blend_on_validation)
BASELINE_NAMES = {"majority": "majority class", "tfidf_logreg": "TF-IDF + LR", "frozen_logreg": "frozen encoder + LR"}


class _OneClass:
    """What a logistic fit on a single class amounts to: that class, always (sklearn refuses the fit)."""

    def __init__(self, label: str) -> None:
        self.classes_ = [label]


def _fit_logreg(x: Any, y: list[str], seed: int, c: float, balanced: bool = True) -> LogisticRegression | _OneClass:
    """A logistic fit, or the constant model when the rows carry one class only (a fully relabelled set)."""
    return _logreg(seed, c, balanced).fit(x, y) if len(set(y)) > 1 else _OneClass(y[0])


def _logreg(seed: int = 0, c: float = 10.0, balanced: bool = True) -> LogisticRegression:
    """Balanced class weights: the same choice as the fine-tuned model's weighted loss (macro-F1 counts).

    C = 10 for TF-IDF rows (unit-norm, sparse: sklearn's C = 1 underfits them), 1 on standardised embeddings.
    """
    return LogisticRegression(C=c, max_iter=2000, class_weight="balanced" if balanced else None, random_state=seed)


@dataclass
class SparseModel:
    """TF-IDF (1–2-grams, sublinear tf) + multinomial logistic regression over a fixed label order."""

    vectorizer: TfidfVectorizer
    coef: np.ndarray  # [k, n_features], one row per label in ``labels`` order
    intercept: np.ndarray  # [k]
    labels: list[str]

    @classmethod
    def fit(cls, texts: Sequence[str], y: Sequence[str], labels: Sequence[str], seed: int = 0,
            balanced: bool = True) -> SparseModel:
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=TFIDF_MAX_FEATURES)
        x = vec.fit_transform(list(texts))
        lr = _fit_logreg(x, list(y), seed, c=10.0, balanced=balanced)
        return cls(vec, *_full_coef(lr, x.shape[1], labels), list(labels))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities [n, k] in ``labels`` order (a label unseen in training gets a tiny share)."""
        x = self.vectorizer.transform(list(texts))
        return softmax(np.asarray(x @ self.coef.T) + self.intercept, axis=1).astype(np.float32)

    def save(self, path: Path) -> list[Path]:
        from safetensors.numpy import save_file

        vocab = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.__getitem__)
        (path / TFIDF_FILE).write_text(json.dumps({"labels": self.labels, "ngram_range": [1, 2],
                                                   "vocabulary": vocab}, ensure_ascii=False), encoding="utf-8")
        save_file({"idf": self.vectorizer.idf_.astype(np.float32), "coef": self.coef.astype(np.float32),
                   "intercept": self.intercept.astype(np.float32)}, path / TFIDF_WEIGHTS_FILE)
        return [path / TFIDF_FILE, path / TFIDF_WEIGHTS_FILE]

    @classmethod
    def load(cls, path: Path) -> SparseModel | None:
        """The model saved in version dir ``path``, or None when the version carries none."""
        from safetensors.numpy import load_file

        if not (path / TFIDF_FILE).is_file():
            return None
        meta = json.loads((path / TFIDF_FILE).read_text(encoding="utf-8"))
        weights = load_file(path / TFIDF_WEIGHTS_FILE)
        vec = TfidfVectorizer(ngram_range=tuple(meta["ngram_range"]), sublinear_tf=True,
                              vocabulary={w: i for i, w in enumerate(meta["vocabulary"])})
        vec._validate_vocabulary()  # what fit() would do with a given vocabulary
        vec.idf_ = weights["idf"].astype(np.float64)
        return cls(vec, weights["coef"], weights["intercept"], list(meta["labels"]))


def _full_coef(lr: LogisticRegression | _OneClass, n_features: int,
               labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients for every label in ``labels`` order (binary fits give one row; absent labels -inf-ish)."""
    k = len(labels)
    coef, intercept = np.zeros((k, n_features), np.float64), np.full(k, -30.0)
    classes = list(lr.classes_)
    if isinstance(lr, _OneClass):
        rows = {classes[0]: (np.zeros(n_features), 0.0)}
    elif len(classes) == 2:
        half_w, half_b = lr.coef_[0] / 2, lr.intercept_[0] / 2
        rows = {classes[0]: (-half_w, -half_b), classes[1]: (half_w, half_b)}
    else:
        rows = {c: (lr.coef_[i], lr.intercept_[i]) for i, c in enumerate(classes)}
    for c, (w, b) in rows.items():
        coef[labels.index(c)], intercept[labels.index(c)] = w, b
    return coef, intercept


def frozen_logreg(train_x: np.ndarray, train_y: Sequence[str], labels: Sequence[str],
                  seed: int = 0, balanced: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(coef [k, dim], intercept [k]) of a logistic fit on frozen embeddings, in ``labels`` order.

    Fitted on standardised features, then folded back to act on raw vectors, so the same weights can
    warm-start the classifier's linear head.
    """
    mu, sd = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    lr = _fit_logreg((train_x - mu) / sd, list(train_y), seed, c=1.0, balanced=balanced)
    coef, intercept = _full_coef(lr, train_x.shape[1], labels)
    coef = coef / sd
    return coef, intercept - coef @ mu


def _scores(y_true: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    m = classification_metrics(list(y_true), list(pred), list(labels))
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def _argmax_labels(probs_or_logits: np.ndarray, labels: Sequence[str]) -> list[str]:
    return [labels[i] for i in np.asarray(probs_or_logits).argmax(axis=1)]


@dataclass
class Baselines:
    """Validation scores per baseline, the fitted TF-IDF model and the frozen-embedding logistic weights."""

    scores: dict[str, dict[str, float]]
    sparse: SparseModel
    frozen_coef: np.ndarray | None = None  # [k, dim]
    frozen_intercept: np.ndarray | None = None  # [k]
    predictions: dict[str, list[str]] = field(default_factory=dict)  # per baseline, on the validation rows


def fit_baselines(train_texts: Sequence[str], train_y: Sequence[str], val_texts: Sequence[str],
                  val_y: Sequence[str], labels: Sequence[str], train_emb: np.ndarray | None = None,
                  val_emb: np.ndarray | None = None, seed: int = 0) -> Baselines:
    """Score majority, TF-IDF + LR and (given embeddings) frozen-encoder + LR on the validation rows."""
    labels = list(labels)
    counts = {c: list(train_y).count(c) for c in labels}
    majority = max(labels, key=lambda c: (counts[c], -labels.index(c)))
    sparse = SparseModel.fit(train_texts, train_y, labels, seed)
    predictions = {"majority": [majority] * len(val_y),
                   "tfidf_logreg": _argmax_labels(sparse.predict_proba(val_texts), labels)}
    out = Baselines({}, sparse, predictions=predictions)
    if train_emb is not None and val_emb is not None:
        out.frozen_coef, out.frozen_intercept = frozen_logreg(train_emb, train_y, labels, seed)
        predictions["frozen_logreg"] = _argmax_labels(val_emb @ out.frozen_coef.T + out.frozen_intercept, labels)
    out.scores.update({name: _scores(val_y, pred, labels) for name, pred in predictions.items()})
    return out


class BlendChoice(NamedTuple):
    """The TF-IDF weight served, validation macro-F1 per weight, and the test behind the choice."""

    weight: float
    scores: dict[str, float]
    choice: Choice


def blend_order(weights: Sequence[float] = BLEND_WEIGHTS) -> list[float]:
    """The weights as :func:`choose_blend` tests them: the default, the even blend, first."""
    return [0.5, *(w for w in weights if w != 0.5)] if 0.5 in weights else list(weights)


def choose_blend(encoder_probs: np.ndarray, sparse_probs: np.ndarray, y: Sequence[str], labels: Sequence[str],
                 weights: Sequence[float] = BLEND_WEIGHTS, seed: int = 0) -> BlendChoice:
    """The TF-IDF weight to serve: the even blend unless another weight is better on validation by the
    paired test of :mod:`tuneloop.retrain.choice`.

    Weight 0 serves the fine-tuned encoder alone, 1 the TF-IDF model alone, so a model whose encoder learnt
    nothing falls back to the bag of words once validation shows it. Smaller differences stay with the even
    blend: on 45 validation rows (300 labels) the best weight by point score lost on unseen rows
    (bench/choice_rules.py, ten 300-row fine-tunes: with a 3-point margin, 24 % of 2,000 draws served a
    weight more than a point below the even blend on unseen rows, -0.5 points on average; with the test,
    4 % and -0.1).
    """
    order = blend_order(weights)
    index = {c: i for i, c in enumerate(labels)}
    blends = {w: ((1 - w) * encoder_probs + w * sparse_probs).argmax(1) for w in order}
    truth = np.array([index[v] for v in y])
    choice = keep_default_unless_better(truth, [Candidate(f"{w:g}", blends[w]) for w in order], len(labels),
                                        seed=seed)
    scores = {f"{w:g}": round(_scores(y, [labels[i] for i in blends[w]], labels)["macro_f1"], 6) for w in weights}
    return BlendChoice(float(choice.name), scores, choice)


def served_model(blend_tfidf: float) -> str:
    """What a classifier with this TF-IDF weight serves, in plain words (for metrics and logs)."""
    if blend_tfidf <= 0:
        return "the fine-tuned encoder alone"
    if blend_tfidf >= 1:
        return "TF-IDF + LR alone (the fine-tuned encoder only gives the drift embedding)"
    return f"a blend: {1 - blend_tfidf:g} fine-tuned encoder + {blend_tfidf:g} TF-IDF + LR"


def best_baseline(baselines: dict[str, dict[str, float]]) -> str:
    """The baseline with the highest validation macro-F1 (the first on ties)."""
    return max(baselines, key=lambda k: baselines[k]["macro_f1"])


def verdict(model: dict[str, float], baselines: dict[str, dict[str, float]]) -> tuple[bool, str]:
    """(beats, plain words): does ``model`` beat (or at least match) the best baseline on validation macro-F1?"""
    best = best_baseline(baselines)
    gap = round(100 * (model["macro_f1"] - baselines[best]["macro_f1"]), 6)
    name = BASELINE_NAMES.get(best, best)
    if gap > 0:
        return True, f"fine-tuning beats the best simple baseline ({name}) by {gap:.1f} points of macro-F1"
    if gap == 0:  # a tie is not a loss: nothing simpler would serve better (e.g. every model scores 1.0)
        return True, f"fine-tuning matches the best simple baseline ({name}) on validation macro-F1"
    return False, (f"fine-tuning does NOT beat the best simple baseline ({name}): "
                   f"{-gap:.1f} points of macro-F1 behind it on validation")


def baseline_table(model: dict[str, float], baselines: dict[str, dict[str, float]]) -> list[str]:
    """Readable lines: each baseline and the model side by side (accuracy, macro-F1)."""
    rows = [(BASELINE_NAMES.get(k, k), v) for k, v in baselines.items()] + [("fine-tuned model", model)]
    return [f"  {name:<22} accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}" for name, m in rows]


def summary(model: dict[str, Any], baselines: dict[str, dict[str, float]],
            gap: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics.json entries: ``baselines``, ``beats_baselines``, ``baseline_verdict`` and, given the
    paired interval of the model's gap to the best baseline (:func:`gap_to_best`), ``baseline_gap``; the
    verdict then says on how many rows and within what interval."""
    beats, words = verdict(model, baselines)
    if gap is not None:
        lo, hi = gap["interval"]
        level = 100 * (1 - gap["alpha"])
        words += f" ({gap['n']} rows, {level:g} % interval {100 * lo:+.1f} to {100 * hi:+.1f} points)"
    return {"baselines": baselines, "beats_baselines": beats, "baseline_verdict": words, "baseline_gap": gap}


def gap_to_best(y: Sequence[str], served: Sequence[str], base: Baselines, labels: Sequence[str],
                seed: int = 0) -> dict[str, Any] | None:
    """The served model's validation macro-F1 minus the best baseline's, with its paired interval
    (:func:`gain_interval`): on a few dozen rows a gap of a few points either way is within noise, and the
    verdict says so."""
    best = best_baseline(base.scores)
    if best not in base.predictions or not len(y):
        return None
    index = {c: i for i, c in enumerate(labels)}
    truth, ours, theirs = (np.array([index[v] for v in rows]) for rows in (y, served, base.predictions[best]))
    lo, hi = gain_interval(truth, ours, theirs, len(labels), seed=seed)
    # the verdict's gap: macro-F1 over the classes these rows show (classification_metrics), as printed
    gap = classification_metrics(list(y), list(served), list(labels))["macro_f1"] - base.scores[best]["macro_f1"]
    return {"baseline": best, "gap": round(gap, 6), "interval": [round(lo, 6), round(hi, 6)], "alpha": ALPHA,
            "n": len(y)}
