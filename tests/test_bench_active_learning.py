"""bench/active_learning.py's real-model mode: the label ratio credits random with the labels it really
needed, and each fine-tune trains with the settings a retrain job of the demo uses."""

from __future__ import annotations

import pytest

from bench import active_learning as al
from tuneloop.monitor.config import load_settings
from tuneloop.monitor.demo import DemoPlan, demo_settings


def test_ratio_counts_the_labels_random_needed_not_its_whole_budget() -> None:
    random_curve = [(40, 0.45), (80, 0.55), (160, 0.53), (320, 0.55)]  # reached its final accuracy at 80
    strategy = [(40, 0.50), (80, 0.60)]  # reaches 0.55 half way between 40 and 80
    assert al.ratio_at(strategy, random_curve) == pytest.approx(80 / 60)
    assert al.ratio_at([(40, 0.40), (80, 0.50)], random_curve) is None


def test_fine_tunes_use_the_retrain_jobs_epoch_and_blend_settings() -> None:
    plan = DemoPlan()
    demo = al.retrain_model_settings(demo_settings(load_settings(), plan))
    assert (demo.epochs, demo.min_steps, demo.blend_on_validation) == (0, plan.step_budget, False)
    assert demo_settings(load_settings(), plan).retrain.refit_head is plan.refit_head is True
    assert al.training_key(demo_settings(load_settings(), plan)) != al.training_key(
        demo_settings(load_settings(), DemoPlan(refit_head=False)))  # results of either are cached apart
    plain = load_settings()
    default = al.retrain_model_settings(plain)
    assert (default.epochs, default.blend_on_validation) == (plain.retrain.epochs, True)
    assert plain.model.epochs == 0  # the settings passed in are left alone


def test_lora_mode_has_small_defaults_but_keeps_explicit_values() -> None:
    small = al.parse_args(["--model", "lora"])
    assert (small.seeds, small.pool, small.test) == (2, 600, 400)
    asked = al.parse_args(["--model", "lora", "--seeds", "3", "--pool", "3000", "--test", "1500"])
    assert (asked.seeds, asked.pool, asked.test) == (3, 3000, 1500)
    stand_in = al.parse_args([])
    assert (stand_in.seeds, stand_in.pool, stand_in.test) == (3, 3000, 1500)
