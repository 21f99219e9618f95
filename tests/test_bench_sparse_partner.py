"""bench/sparse_partner.py: its word candidate is the served TF-IDF model, its character candidates see
what word n-grams cannot, and its weight rules score blends from cached probabilities."""

from __future__ import annotations

import numpy as np

from bench import sparse_partner as sp
from tuneloop.retrain.baselines import SparseModel, choose_blend

STEMS = {"good": ("glorb", "plimt", "sunwa"), "bad": ("drakk", "morgu", "vexil")}
FILLER = ("the", "a", "this", "was", "it", "very", "quite", "and")


def _stem_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Texts whose label is carried only by word stems with random endings: no whole word repeats."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = ("good", "bad")[i % 2]
        stem = STEMS[label][rng.integers(3)]
        ending = "".join(rng.choice(list("qwxzjk"), 4))
        texts.append(" ".join([*rng.choice(FILLER, 3), stem + ending, *rng.choice(FILLER, 3)]))
        labels.append(label)
    return texts, labels


def test_the_word_candidate_is_the_served_tfidf_model() -> None:
    texts, y = _stem_texts(80, 0)
    texts = [t + (" great" if label == "good" else " awful") for t, label in zip(texts, y, strict=True)]
    labels = ["bad", "good"]
    fitted = sp.Fitted(sp.CANDIDATES["word"], texts, y, labels, seed=0)
    served = SparseModel.fit(texts, y, labels, seed=0)
    probe, _ = _stem_texts(20, 1)
    np.testing.assert_allclose(fitted.predict_proba(probe), served.predict_proba(probe), atol=1e-5)


def test_character_ngrams_find_a_label_carried_by_stems_with_random_endings() -> None:
    texts, y = _stem_texts(120, 0)
    test_texts, test_y = _stem_texts(200, 1)
    labels = ["bad", "good"]
    accuracy = {}
    for name in ("word", "char_cv", "word_char_avg"):
        probs = sp.Fitted(sp.CANDIDATES[name], texts, y, labels, seed=0).predict_proba(test_texts)
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)
        accuracy[name] = np.mean([labels[i] == t for i, t in zip(probs.argmax(1), test_y, strict=True)])
    assert accuracy["word"] < 0.65  # no whole word of the test texts was seen in training with its label
    assert accuracy["char_cv"] > 0.95 and accuracy["word_char_avg"] > 0.9


def test_rules_pick_weights_from_validation_probabilities() -> None:
    labels, y = ["a", "b"], ["a", "b"] * 20
    partner = np.array([[0.6, 0.4] if v == "a" else [0.4, 0.6] for v in y])  # right, not sure
    encoder = partner[:, ::-1] ** 8 / (partner[:, ::-1] ** 8).sum(axis=1, keepdims=True)  # sure, and wrong
    # only the partner alone is right: the current rule and the log-loss rule serve it alone
    assert sp.RULES["current"](encoder, partner, y, labels) == 1.0
    assert sp.RULES["current"](encoder, partner, y, labels) == choose_blend(encoder, partner, y, labels)[0]
    assert sp.RULES["log_loss"](encoder, partner, y, labels) == 1.0
    assert sp.RULES["inner_weights"](encoder, partner, y, labels) == 0.5  # never a single model
    assert sp.RULES["fixed_0.5"](encoder, partner, y, labels) == 0.5
