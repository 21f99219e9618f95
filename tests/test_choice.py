"""The validation-split choice rule: the default stays unless another candidate is better by a paired test;
the gain's interval holds the population's gain about as often as it says."""

import numpy as np

from tuneloop.retrain.choice import Candidate, gain_interval, keep_default_unless_better, macro_f1


def _noisy(y: np.ndarray, right: float, rng: np.random.Generator, k: int = 3) -> np.ndarray:
    """Predictions right with probability ``right``, else a random class."""
    return np.where(rng.random(len(y)) < right, y, rng.integers(0, k, len(y)))


def test_macro_f1_matches_sklearn_on_every_leading_axis():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, (5, 60)), rng.integers(0, 4, (5, 60))
    pred[0] = np.where(pred[0] == 3, 0, pred[0])  # a class never predicted scores 0, as in sklearn
    ours = macro_f1(y, pred, 4)
    assert ours.shape == (5,)
    for row in range(5):
        assert abs(ours[row] - f1_score(y[row], pred[row], average="macro", labels=range(4), zero_division=0)) < 1e-12


def test_a_clear_gain_on_many_rows_replaces_the_default_and_says_so():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    choice = keep_default_unless_better(y, [Candidate("defaults", _noisy(y, 0.5, rng)),
                                            Candidate("trial 2", _noisy(y, 0.9, rng))], 3)
    assert choice.name == "trial 2" and choice.replaced and choice.low > 0.2 and choice.p_value < 0.01
    assert choice.words().startswith("trial 2 replaces defaults:") and "400 validation rows" in choice.words()


def test_the_same_gain_on_45_rows_is_not_enough():
    """Four rows more right on 45 (eight won, four lost) is inside the noise: the default stays, in words."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 45)
    default = _noisy(y, 0.6, rng)
    better = default.copy()
    wrong, right = np.flatnonzero(default != y)[:8], np.flatnonzero(default == y)[:4]
    better[wrong] = y[wrong]
    better[right] = (y[right] + 1) % 3
    choice = keep_default_unless_better(y, [Candidate("defaults", default), Candidate("trial 2", better)], 3)
    assert choice.gain > 0.05 and choice.p_value > 0.1 and choice.name == "defaults" and not choice.replaced
    assert choice.low < 0 < choice.high and choice.needed > choice.gain
    assert "does not replace" in choice.words()
    again = keep_default_unless_better(y, [Candidate("defaults", default), Candidate("trial 2", better)], 3)
    assert again == choice  # seeded: the same rows give the same choice


def test_equal_candidates_and_a_lone_default_keep_the_default():
    y = np.array([0, 1, 2, 0, 1, 2])
    same = keep_default_unless_better(y, [Candidate("a", y.copy()), Candidate("b", y.copy())], 3)
    assert same.name == "a" and same.gain == 0
    assert same.low < 0 < same.high  # six rows cannot show two models equal: the interval says so
    alone = keep_default_unless_better(y, [Candidate("a", y.copy())], 3)
    assert alone.name == "a" and alone.best_other is None


def test_false_replacement_rate_under_the_null_is_at_most_alpha():
    """Three candidates exactly as good as the default, different per row (each row's answers are
    exchangeable): over 600 seeded validation sets of 45 rows the rule replaces the default in at most
    alpha of them (plus three binomial standard errors), where the best point score nearly always would."""
    alpha, draws, replaced, point_best = 0.10, 600, 0, 0
    for seed in range(draws):
        rng = np.random.default_rng(100 + seed)
        y = rng.choice(3, 45, p=[0.6, 0.3, 0.1])
        cands = [Candidate(str(i), _noisy(y, 0.6, rng)) for i in range(4)]
        choice = keep_default_unless_better(y, cands, 3, alpha=alpha, seed=seed)
        replaced += choice.replaced
        point_best += choice.gain > 0
    assert point_best > 0.6 * draws
    assert replaced <= alpha * draws + 3 * np.sqrt(alpha * (1 - alpha) * draws)  # 60 + 22


def test_the_stated_90_percent_interval_holds_the_population_gap_on_45_rows():
    # two paired classifiers on a 400-row population (3 classes, 60/30/10 %); 45-row samples drawn from it
    hits, draws = 0, 300
    for seed in (0, 2):
        rng = np.random.default_rng(seed)
        y = rng.choice(3, size=400, p=[0.6, 0.3, 0.1])
        b = np.where(rng.random(400) < 0.7, y, rng.integers(0, 3, 400))
        a = b.copy()
        fixed, broken = rng.random(400) < 0.25, rng.random(400) < 0.08
        a[fixed] = y[fixed]
        a[broken] = rng.integers(0, 3, int(broken.sum()))
        true = macro_f1(y, a, 3) - macro_f1(y, b, 3)
        for d in range(draws // 2):
            pick = rng.choice(400, size=45)
            lo, hi = gain_interval(y[pick], a[pick], b[pick], 3, seed=d)
            hits += lo <= true <= hi
    assert 0.86 <= hits / draws <= 0.97  # about what it says, and not uselessly wide


def test_models_that_agree_on_every_row_still_get_an_honest_interval():
    y = np.array([0] * 30 + [1] * 12 + [2] * 3)
    same = y.copy()
    same[[0, 31]] = [1, 0]  # two errors both models make
    lo, hi = gain_interval(y, same, same, 3)
    assert lo < 0 < hi  # 45 rows cannot show the models are equal: not [0, 0]
    assert hi - lo < 0.4
    wider = gain_interval(y[:15], same[:15], same[:15], 3)
    assert wider[1] - wider[0] > hi - lo  # fewer rows, less known
