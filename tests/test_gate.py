"""The promotion gate: the paired test, its interval and planner, non-inferiority checks, readable reasons."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.monitor.config import RetrainSettings
from tuneloop.retrain.evaluate import classification_metrics, with_rows
from tuneloop.retrain.gate import decide
from tuneloop.retrain.paired import detectable_gain, paired_difference, rows_needed

LABELS = ["negative", "neutral", "positive"]
S = RetrainSettings()


def scored(truth: list[str], pred: list[str]) -> dict:
    import pandas as pd

    df = pd.DataFrame({"id": [f"p{i}" for i in range(len(truth))], "label": truth})
    return with_rows(classification_metrics(truth, pred, LABELS), df, pred)


def pair(n: int, wins: int, losses: int, both_right: int | None = None, golden: tuple | None = None) -> tuple:
    """(challenger, champion) metrics on ``n`` rows: ``wins`` rows only the challenger gets right, ``losses`` only
    the champion, ``both_right`` both (default: half of the rest); classes cycle over the rows."""
    truth = [LABELS[i % 3] for i in range(n)]
    wrong = [LABELS[(LABELS.index(y) + 1) % 3] for y in truth]
    both = (n - wins - losses) // 2 if both_right is None else both_right
    ch_ok = [True] * wins + [False] * losses + [True] * both + [False] * (n - wins - losses - both)
    ref_ok = [False] * wins + [True] * losses + [True] * both + [False] * (n - wins - losses - both)
    ch = {"holdout": scored(truth, [t if ok else w for t, ok, w in zip(truth, ch_ok, wrong, strict=True)])}
    ref = {"holdout": scored(truth, [t if ok else w for t, ok, w in zip(truth, ref_ok, wrong, strict=True)])}
    if golden is not None:
        gch, gref = pair(*golden)
        ch["golden"], ref["golden"] = gch["holdout"], gref["holdout"]
    return ch, ref


def test_clearly_better_challenger_is_promoted_and_the_decision_records_its_statistics():
    ch, ref = pair(100, wins=25, losses=3)
    d = decide(ch, ref, S)
    assert d.promote, d.reasons
    st = d.stats
    assert st["test"].startswith("exact McNemar") and st["n"] == 100
    assert st["estimate"] == pytest.approx(0.22) and 0 < st["lower"] < 0.22 < st["upper"]
    assert st["p_value"] < 0.05 and 0 < st["detectable_gain"] < 0.5
    assert [c.name for c in d.checks] == ["holdout_size", "holdout_gain", "class_recall"]
    assert "holdout of 100 rows: can only detect gains ≥" in d.headline and "+22.0 pts" in d.headline
    js = d.as_json()
    assert js["stats"]["n"] == 100 and js["headline"] == d.headline and js["checks"][1]["stats"]["lower"] == st["lower"]


def test_noise_on_a_small_holdout_is_rejected_and_says_what_the_holdout_could_detect():
    ch, ref = pair(30, wins=3, losses=1)  # +6.7 points on 30 rows: two rows
    d = decide(ch, ref, S)
    assert not d.promote
    assert d.stats["lower"] < 0 < d.stats["estimate"] and d.stats["p_value"] > 0.05
    (reason,) = d.reasons
    assert reason.startswith("holdout of 30 rows: can only detect gains ≥ ") and "not a demonstrated gain" in reason


def test_false_promotion_rate_of_equal_challengers_stays_below_alpha():
    """400 seeded equal-quality pairs per size: the exact test promotes at most alpha of them."""
    rng = np.random.default_rng(7)
    for n in (30, 100, 300):
        promoted = 0
        for _ in range(400):
            ch_ok = rng.random(n) < 0.7
            ref_ok = np.where(rng.random(n) < 0.6, ch_ok, rng.random(n) < 0.7)  # correlated, same accuracy
            promoted += paired_difference(ch_ok.astype(int), ref_ok.astype(int)).p_greater() < 0.05
        assert promoted <= 0.05 * 400, (n, promoted)


def test_interval_and_p_value_give_the_same_verdict():
    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(10, 200))
        a, b = rng.random(n) < rng.uniform(0.3, 0.9), rng.random(n) < rng.uniform(0.3, 0.9)
        r = paired_difference(a.astype(int), b.astype(int))
        for margin in (0.0, 0.05):
            if r.wins + r.losses and abs(r.lower - margin) > 1e-9:
                assert (r.p_greater(margin) < 0.05) == (r.lower > margin)


def test_min_gain_raises_the_bar():
    ch, ref = pair(200, wins=30, losses=10)  # +10 points, lower bound about +5
    assert decide(ch, ref, S).promote
    assert not decide(ch, ref, S.model_copy(update={"min_gain": 0.08})).promote


def test_planner_inverts_the_detectable_gain_and_refuses_impossible_asks():
    for n in (50, 200, 1000):
        g = detectable_gain(n, 0.25)
        assert rows_needed(g, 0.25) in (n, n + 1)
    assert detectable_gain(5, 0.25) is None  # even a challenger winning every discordant row would not show
    assert rows_needed(0.15, 0.25) < rows_needed(0.10, 0.25) < rows_needed(0.05, 0.25)


def test_small_holdout_rejects_even_a_better_model():
    ch, ref = pair(29, wins=20, losses=0)
    d = decide(ch, ref, S)
    assert not d.promote and d.reasons == ["holdout has 29 labelled rows (needs at least 30)"]


def test_a_dip_in_one_class_on_few_rows_is_not_evidence_of_harm():
    """The old gate rejected 'recall 0.375 -> 0.188 on 16 rows'; three rows say nothing."""
    truth = ["negative"] * 16 + ["neutral"] * 40 + ["positive"] * 40
    champ = ["negative"] * 6 + ["neutral"] * 10 + ["neutral"] * 20 + ["positive"] * 20 + ["positive"] * 20 \
        + ["neutral"] * 20
    chall = ["negative"] * 3 + ["neutral"] * 13 + ["neutral"] * 38 + ["positive"] * 2 + ["positive"] * 38 \
        + ["neutral"] * 2
    ch, ref = {"holdout": scored(truth, chall)}, {"holdout": scored(truth, champ)}
    d = decide(ch, ref, S)
    assert d.promote, d.reasons
    assert "recall of negative" in d.checks[2].message or "no class worse" in d.checks[2].message


def test_a_class_that_collapses_on_many_rows_rejects_and_is_named():
    truth = ["negative"] * 60 + ["neutral"] * 60 + ["positive"] * 60
    champ = ["negative"] * 50 + ["neutral"] * 10 + ["neutral"] * 30 + ["positive"] * 30 + ["positive"] * 30 \
        + ["neutral"] * 30
    chall = ["negative"] * 10 + ["neutral"] * 50 + ["neutral"] * 60 + ["positive"] * 60  # overall much better
    d = decide({"holdout": scored(truth, chall)}, {"holdout": scored(truth, champ)}, S)
    assert d.checks[1].passed and not d.promote
    (reason,) = d.reasons
    assert "recall of negative" in reason and "worse beyond -10.0 pts" in reason
    assert "positive" not in reason


def test_golden_set_loss_with_evidence_rejects_a_small_dip_does_not():
    ch, ref = pair(100, wins=25, losses=3, golden=(100, 1, 20))  # golden: 19 points worse
    d = decide(ch, ref, S)
    assert not d.promote and any(r.startswith("golden set") and "worse beyond -2.0 pts" in r for r in d.reasons)
    ch, ref = pair(100, wins=25, losses=3, golden=(100, 1, 3))  # 2 points worse: no evidence beyond 2
    assert decide(ch, ref, S).promote


def test_missing_rows_fail_closed():
    ch, ref = pair(100, wins=25, losses=3)
    ref["holdout"].pop("rows")
    d = decide(ch, ref, S)
    assert not d.promote and "paired test cannot run" in d.reasons[0]
    ch, ref = pair(100, wins=25, losses=3, golden=(50, 0, 0))
    ch["golden"] = None
    d = decide(ch, ref, S)
    assert not d.promote and "golden set was not evaluated" in d.reasons[0]


def test_rows_must_be_the_same_rows():
    ch, ref = pair(50, wins=10, losses=1)
    ref["holdout"]["rows"]["id"] = list(reversed(ref["holdout"]["rows"]["id"]))
    with pytest.raises(ValueError, match="same rows"):
        decide(ch, ref, S)


def test_no_champion_compares_against_baseline_accuracy_with_an_exact_bound():
    ch, _ = pair(200, wins=60, losses=0, both_right=110)  # challenger accuracy 0.85
    assert decide(ch, None, S, baseline_accuracy=0.75).promote
    d = decide(ch, None, S, baseline_accuracy=0.82)
    assert not d.promote and "vs baseline 0.820" in d.reasons[0] and "lower bound" in d.reasons[0]


def test_no_champion_and_no_baseline_needs_only_a_big_enough_holdout():
    ch, _ = pair(40, wins=0, losses=30)
    assert decide(ch, None, S).promote
    ch, _ = pair(5, wins=5, losses=0)
    assert not decide(ch, None, S).promote
