"""Self-training's label savings: the labels a curve without it needs, over the labels given with it."""

from __future__ import annotations

import pandas as pd
import pytest

from bench import active_learning as al
from bench import retrain_recipes as rr
from bench import self_training as st


def test_savings_interpolate_on_the_curve_and_say_when_it_never_gets_there() -> None:
    curve = [(1200, 0.66), (300, 0.60), (600, 0.62)]  # unsorted on purpose
    assert al.savings(curve, 300, 0.64) == pytest.approx(900 / 300)
    assert al.savings(curve, 300, 0.59) == pytest.approx(1.0)  # the smallest k already reaches it
    assert al.savings(curve, 300, 0.70) is None


def test_both_benches_report_savings_per_seed(capsys: pytest.CaptureFixture[str]) -> None:
    frozen = pd.DataFrame({"seed": [0, 0, 0, 0, 1, 1, 1, 1], "k": [300, 600, 1200, 300] * 2,
                           "pool": [1500] * 8, "rounds": [0, 0, 0, 3] * 2,
                           "test_accuracy": [0.60, 0.62, 0.66, 0.64, 0.60, 0.62, 0.66, 0.70]})
    st.label_savings(frozen, 3)
    assert "k=300, pool 1500: 3.00x, beyond the largest k (not reached on every seed)" in capsys.readouterr().out
    recipes = pd.DataFrame({"seed": [0, 0, 0], "k": [300, 600, 1200], "refit": [0.60, 0.62, 0.66],
                            "refit_selftrain": [0.65, None, None]})
    rr.label_savings(recipes, "refit_selftrain", "refit")
    out = capsys.readouterr().out
    assert "k=300: 3.50 (one seed" in out and "k=600" not in out  # only where the self-training recipe ran
