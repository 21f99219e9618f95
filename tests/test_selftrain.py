"""Self-training's rounds: the two frozen views label more of the pool once they learn from their own picks."""

import numpy as np

from tuneloop.retrain.selftrain import SelfTraining, agreed_labels

LABELS = ["a", "b"]


def _rows(rng: np.random.Generator, texts: list[str], centre: np.ndarray) -> tuple[list[str], np.ndarray]:
    return texts, centre + 0.3 * rng.standard_normal((len(texts), len(centre)))


def _setting() -> tuple[list[str], list[str], np.ndarray, list[str], np.ndarray]:
    """Training rows say 'alpha' (a) or 'beta' (b). In the pool, 'beta gamma' rows teach the TF-IDF view
    that 'gamma' means b; rows that say only 'gamma' are b too, which the embedding view sees at once and
    the TF-IDF view learns only from the first round's pseudo-labels."""
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0] * 3, np.eye(8)[1] * 3
    ta, xa = _rows(rng, [f"alpha x{i}" for i in range(20)], a)
    tb, xb = _rows(rng, [f"beta y{i}" for i in range(20)], b)
    pa, pxa = _rows(rng, [f"alpha q{i}" for i in range(15)], a)
    pbg, pxbg = _rows(rng, [f"beta gamma z{i}" for i in range(15)], b)
    pg, pxg = _rows(rng, [f"gamma w{i}" for i in range(15)], b)
    return ta + tb, ["a"] * 20 + ["b"] * 20, np.vstack([xa, xb]), pa + pbg + pg, np.vstack([pxa, pxbg, pxg])


def test_later_rounds_label_what_only_the_first_rounds_pseudo_labels_taught():
    texts, y, x, pool, x_pool = _setting()
    truth = ["a"] * 15 + ["b"] * 30
    one = agreed_labels(texts, y, x, pool, x_pool, LABELS, SelfTraining(pool, rounds=1, min_confidence=0.8))
    three = agreed_labels(texts, y, x, pool, x_pool, LABELS, SelfTraining(pool, rounds=3, min_confidence=0.8))
    gamma_only = set(range(30, 45))
    assert not gamma_only & set(one[0].tolist())  # the TF-IDF view has never seen 'gamma' with a label
    assert gamma_only <= set(three[0].tolist())  # ... until it trains on the 'beta gamma' pseudo-labels
    assert three[3]["per_round"][0] == one[3]["picked"] < three[3]["per_round"][-1] == three[3]["picked"] == 45
    assert [LABELS[k] for k in three[1]] == [truth[i] for i in three[0]]  # and every pseudo-label is right
    assert three[3]["label_counts"] == {"a": 15, "b": 30}


def test_the_cap_keeps_the_most_confident_pseudo_labels():
    texts, y, x, pool, x_pool = _setting()
    every = agreed_labels(texts, y, x, pool, x_pool, LABELS, SelfTraining(pool, rounds=1, min_confidence=0.5))
    capped = agreed_labels(texts, y, x, pool, x_pool, LABELS, SelfTraining(pool, rounds=1, min_confidence=0.5,
                                                                            ratio=10 / len(texts)))
    assert capped[3]["cap"] == 10 and capped[3]["picked"] == 10 < every[3]["picked"]
    assert capped[2].min() >= np.sort(every[2])[-10]  # the ten most confident of the uncapped picks
