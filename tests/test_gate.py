"""The promotion gate: every rule, its boundary, and readable reasons."""

from __future__ import annotations

import pytest

from tuneloop.monitor.config import RetrainSettings
from tuneloop.retrain.evaluate import classification_metrics
from tuneloop.retrain.gate import decide


def m(acc: float, n: int = 100, recall: dict[str, float] | None = None, golden: float | None = None,
      n_golden: int = 50) -> dict:
    recall = recall if recall is not None else {"negative": acc, "neutral": acc, "positive": acc}
    holdout = {"accuracy": acc, "n": n, "per_class_recall": recall, "support": {k: n // 3 for k in recall}}
    return {"holdout": holdout, "golden": None if golden is None else {"accuracy": golden, "n": n_golden}}


S = RetrainSettings(min_holdout=30, gate_margin=0.02, golden_tolerance=0.02, recall_tolerance=0.10)


def test_clear_improvement_is_promoted_with_every_check_listed():
    d = decide(m(0.85), m(0.70), S)
    assert d.promote
    assert [c.name for c in d.checks] == ["holdout_size", "holdout_accuracy", "class_recall"]
    assert any("0.850" in r and "0.700" in r and "+0.150" in r for r in d.reasons)
    assert d.summary.startswith("promote")


@pytest.mark.parametrize("challenger, champion, promote", [
    (0.72, 0.70, True),     # exactly the margin
    (0.7199, 0.70, False),  # just below it
    (0.70, 0.70, False),    # a tie is not an improvement
    (0.60, 0.70, False),
])
def test_margin_boundary(challenger, champion, promote):
    d = decide(m(challenger), m(champion), S)
    assert d.promote is promote
    if not promote:
        assert d.checks[1].name == "holdout_accuracy" and not d.checks[1].passed
        assert "needs +0.020" in d.reasons[0]


def test_zero_margin_accepts_a_tie():
    assert decide(m(0.70), m(0.70), S.model_copy(update={"gate_margin": 0.0})).promote


def test_small_holdout_rejects_even_a_better_model():
    d = decide(m(0.95, n=29), m(0.50, n=29), S)
    assert not d.promote
    assert d.reasons == ["holdout has 29 labelled rows (needs at least 30)"]
    assert decide(m(0.95, n=30), m(0.50, n=30), S).promote


def test_golden_set_regression_beyond_tolerance_rejects():
    d = decide(m(0.90, golden=0.77), m(0.70, golden=0.80), S)
    assert not d.promote
    assert any("golden-set accuracy 0.770 vs champion 0.800" in r for r in d.reasons)
    assert decide(m(0.90, golden=0.78), m(0.70, golden=0.80), S).promote  # within tolerance
    assert decide(m(0.90, golden=0.95), m(0.70, golden=0.80), S).promote


def test_golden_missing_for_challenger_fails_closed():
    d = decide(m(0.90), m(0.70, golden=0.80), S)
    assert not d.promote and "golden set was not evaluated" in d.reasons[0]


def test_recall_drop_of_one_class_rejects_and_names_it():
    ch = m(0.85, recall={"negative": 0.95, "neutral": 0.90, "positive": 0.55})
    champ = m(0.75, recall={"negative": 0.70, "neutral": 0.70, "positive": 0.80})
    d = decide(ch, champ, S)
    assert not d.promote
    (reason,) = d.reasons
    assert "positive 0.800 -> 0.550 (-0.250" in reason and "negative" not in reason


def test_recall_drop_at_tolerance_passes():
    ch = m(0.85, recall={"negative": 0.90, "neutral": 0.90, "positive": 0.70})
    champ = m(0.75, recall={"negative": 0.70, "neutral": 0.70, "positive": 0.80})
    assert decide(ch, champ, S).promote


def test_several_failures_are_all_reported():
    ch = m(0.65, n=20, recall={"negative": 0.2, "neutral": 0.9, "positive": 0.9}, golden=0.5)
    champ = m(0.70, n=20, recall={"negative": 0.9, "neutral": 0.6, "positive": 0.6}, golden=0.9)
    d = decide(ch, champ, S)
    assert not d.promote
    assert {c.name for c in d.checks if not c.passed} == {"holdout_size", "holdout_accuracy", "golden_accuracy",
                                                          "class_recall"}
    assert len(d.reasons) == 4 and "4 of 4 checks failed" in d.summary


def test_no_champion_compares_against_baseline_accuracy():
    assert decide(m(0.80), None, S, baseline_accuracy=0.75).promote
    d = decide(m(0.76), None, S, baseline_accuracy=0.75)
    assert not d.promote and "vs baseline 0.750" in d.reasons[0]


def test_no_champion_and_no_baseline_needs_only_a_big_enough_holdout():
    assert decide(m(0.40), None, S).promote
    assert not decide(m(0.99, n=5), None, S).promote


def test_logged_model_metrics_as_baseline_include_recall():
    labels = ["negative", "neutral", "positive"]
    truth = ["negative"] * 20 + ["neutral"] * 20 + ["positive"] * 20
    logged = ["negative"] * 20 + ["neutral"] * 10 + ["positive"] * 10 + ["positive"] * 10 + ["neutral"] * 10
    better = ["negative"] * 5 + ["neutral"] * 15 + ["neutral"] * 20 + ["positive"] * 20  # negative recall collapses
    base = {"holdout": classification_metrics(truth, logged, labels)}
    ch = {"holdout": classification_metrics(truth, better, labels)}
    d = decide(ch, base, S)
    assert ch["holdout"]["accuracy"] > base["holdout"]["accuracy"] + 0.02
    assert not d.promote and "negative 1.000 -> 0.250" in d.reasons[0]
    assert "baseline" not in d.reasons[0]  # a metrics dict counts as the champion


def test_decision_serialises():
    d = decide(m(0.9), m(0.7), S).as_json()
    assert d["promote"] is True and {"name", "passed", "message", "value", "threshold"} <= set(d["checks"][0])
