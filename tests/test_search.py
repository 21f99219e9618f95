"""The optional search over training settings: the defaults first, a trial replaces them only when the
paired test on the validation rows says so, the time budget stops it, and ``tuneloop train --auto`` writes
the kept trial."""

import json

import pytest

from tuneloop.retrain.search import search_train
from tuneloop.retrain.settings import SearchSettings
from tuneloop.retrain.tiny import keyword_sentiment

THREE = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return keyword_sentiment(90, seed=3)


def test_the_search_keeps_the_best_trial_and_the_defaults_unless_beaten(data, sentiment_settings):
    # one short epoch of the encoder alone, so that the step size and the loss change the validation score
    settings = sentiment_settings.model_copy(update={"epochs": 1, "blend_tfidf": 0.0, "warm_start_head": False,
                                                     "learning_rate": 3e-4, "head_learning_rate": 1e-3})
    result = search_train(data, THREE, settings, SearchSettings(trials=4, alpha=0.5))
    facts = result.metrics["search"]
    trials = facts["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2, 3]
    assert trials[0]["changes"]["contrastive_weight"] == 0.0 and trials[0]["changes"]["learning_rate"] == 3e-4
    assert trials[1]["changes"]["contrastive_weight"] == 1.0  # the one alternative measured to matter
    scores = [t["val_macro_f1"] for t in trials]
    first_best = 1 + scores[1:].index(max(scores[1:]))  # the best other trial; a later tie does not replace it
    choice = facts["choice"]
    assert choice["best_other"] == f"trial {first_best + 1}" and choice["default"] == "the defaults"
    assert choice["gain"] == pytest.approx(scores[first_best] - scores[0], abs=1e-5)
    assert choice["n"] == result.metrics["n_val"] and choice["interval"][0] <= choice["gain"] <= choice["interval"][1]
    replaced = choice["p_value"] <= 0.5 and choice["gain"] > 0
    assert facts["kept_trial"] == (first_best if replaced else 0)
    assert choice["words"].startswith(f"trial {first_best + 1} {'replaces' if replaced else 'does not replace'}")
    assert result.metrics["val_macro_f1"] == pytest.approx(scores[facts["kept_trial"]], abs=1e-6)
    kept = trials[facts["kept_trial"]]["changes"]
    assert result.classifier.settings.contrastive_weight == kept["contrastive_weight"]
    assert result.classifier.settings.learning_rate == pytest.approx(kept["learning_rate"])

    unbeatable = search_train(data, THREE, settings, SearchSettings(trials=3, min_gain=0.99)).metrics["search"]
    assert unbeatable["kept_trial"] == 0 and len(unbeatable["trials"]) == 3


def test_the_time_budget_stops_the_search_before_a_trial_would_overrun(data, sentiment_settings):
    settings = sentiment_settings.model_copy(update={"epochs": 1})
    facts = search_train(data, THREE, settings, SearchSettings(trials=5, minutes=0.001)).metrics["search"]
    assert len(facts["trials"]) == 1 and facts["kept_trial"] == 0


def test_cli_train_auto_writes_the_kept_trial(tmp_path, sentiment_base, data):
    from conftest import cli_in_process, free_port

    data.to_csv(tmp_path / "data.csv", index=False)
    env = {"TUNELOOP_MODEL__BASE": str(sentiment_base), "TUNELOOP_MODEL__EPOCHS": "1",
           "TUNELOOP_MODEL__MAX_LENGTH": "32", "TUNELOOP_SERVER__PORT": str(free_port()),
           "TUNELOOP_SEARCH__TRIALS": "2"}
    r = cli_in_process("train", str(tmp_path / "data.csv"), "--labels", ",".join(THREE), "--auto",
                       cwd=tmp_path, env=env)
    assert r.exit_code == 0, r.output
    assert "search: kept trial" in r.output and "paired permutation test" in r.output
    metrics = json.loads((tmp_path / "d" / "models" / "v1" / "metrics.json").read_text())
    assert len(metrics["search"]["trials"]) == 2 and "baselines" in metrics
    saved = json.loads((tmp_path / "d" / "models" / "v1" / "training_config.json").read_text())
    assert saved["settings"]["contrastive_weight"] == metrics["search"]["kept_changes"]["contrastive_weight"]
