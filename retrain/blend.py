"""How much the served model trusts the TF-IDF model against the fine-tuned encoder.

The served probabilities are ``(1 - w) * encoder + w * tfidf`` (see
:meth:`tuneloop.retrain.model.TextClassifier.predict`); the weight ``w`` is chosen once, after
training, on the validation rows neither model was fitted on.

The weight is chosen by the validation log-loss of the blend, not by its validation macro-F1. At 300
labels the validation split holds about 45 rows, and macro-F1 only counts the rows whose top class
changes: two weights that differ by one or two rows look 3–5 points apart, and the choice follows that
noise (it lost 2.5 points of test macro-F1 on 300 tweets on five topics and 4.8 on 300 drug reviews,
against the best simple baseline). The log-loss reads every row's probabilities, so it sees how sure
each model is when it is wrong: the fine-tuned encoder is far more confident than it is right on so
few labels (a fitted temperature of about 5 on those tweets), and the log-loss moves weight to the
TF-IDF model accordingly, which the macro-F1 of 45 rows did not. Ties go to the weight nearest the
even blend. Weight 0 serves the encoder alone, 1 the TF-IDF model alone, so an encoder that learnt
nothing still falls back to the bag of words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tuneloop.retrain.evaluate import classification_metrics

BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # TF-IDF shares tried on validation (model.blend_on_validation)
_FLOOR = 1e-6  # probability floor in the log-loss: one confidently wrong row costs at most -log(1e-6)


def log_loss(probs: np.ndarray, y: Sequence[int]) -> float:
    """Mean negative log-probability of the true class (probabilities floored at ``_FLOOR``)."""
    picked = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(picked, _FLOOR, 1.0))))


def blend(encoder_probs: np.ndarray, sparse_probs: np.ndarray, weight: float) -> np.ndarray:
    """The served probabilities for TF-IDF weight ``weight``."""
    return (1 - weight) * np.asarray(encoder_probs) + weight * np.asarray(sparse_probs)


def choose_blend(encoder_probs: np.ndarray, sparse_probs: np.ndarray, y: Sequence[str], labels: Sequence[str],
                 weights: Sequence[float] = BLEND_WEIGHTS) -> tuple[float, dict[str, dict[str, float]]]:
    """(TF-IDF weight, {"log_loss": {weight: ...}, "macro_f1": {weight: ...}} on validation).

    The weight with the lowest validation log-loss (ties: nearest 0.5); the macro-F1 per weight is
    recorded beside it for the reader.
    """
    labels = list(labels)
    idx = [labels.index(v) for v in y]
    losses, f1s = {}, {}
    for w in weights:
        probs = blend(encoder_probs, sparse_probs, w)
        losses[w] = log_loss(probs, idx)
        pred = [labels[i] for i in probs.argmax(axis=1)]
        f1s[w] = classification_metrics(list(y), pred, labels)["macro_f1"]
    weight = min(weights, key=lambda w: (round(losses[w], 9), abs(w - 0.5)))
    return weight, {"log_loss": {f"{w:g}": round(v, 6) for w, v in losses.items()},
                    "macro_f1": {f"{w:g}": round(v, 6) for w, v in f1s.items()}}
