"""Every training run is compared with simple baselines; a model that loses needs --force to become the first champion.

The data: long, unbalanced texts whose label hangs on one word in the middle. With max_length 32 the
encoder only ever sees the head and the tail of each text, so the fine-tuned model cannot learn the
task, while TF-IDF + logistic regression reads every word: a real loss, not a staged one.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from conftest import cli_in_process, free_port

from tuneloop.retrain import tiny
from tuneloop.retrain.baselines import Baselines, SparseModel, choose_blend, gap_to_best, served_model, summary, verdict
from tuneloop.retrain.trainer import train

LABELS = ["negative", "neutral", "positive"]
SHARES = {"positive": 0.65, "negative": 0.25, "neutral": 0.10}


def long_unbalanced(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` texts of 80 filler words with three of the label's keywords at the centre; classes 65/25/10 %."""
    rng = random.Random(seed)
    words = dict(zip(LABELS, (tiny.NEGATIVE_WORDS, tiny.NEUTRAL_WORDS, tiny.POSITIVE_WORDS), strict=True))
    rows = []
    for i in range(n):
        u = (i * 0.618034) % 1.0  # deterministic, evenly spread class draws
        label = "positive" if u < SHARES["positive"] else "negative" if u < 0.9 else "neutral"
        filler = [rng.choice(tiny.COMMON_WORDS[:12]) for _ in range(80)]
        filler[38:38] = [rng.choice(words[label]) for _ in range(3)]
        rows.append((" ".join(filler), label))
    return pd.DataFrame(rows, columns=["text", "label"])


@pytest.fixture(scope="module")
def losing_settings(sentiment_settings):  # type: ignore[no-untyped-def]
    return sentiment_settings.model_copy(update={"epochs": 2, "max_length": 32, "blend_tfidf": 0.0})


def test_a_losing_model_is_reported_beside_the_three_baselines(losing_settings):
    r = train(long_unbalanced(200), LABELS, losing_settings, progress=False)
    m = r.metrics
    assert set(m["baselines"]) == {"majority", "tfidf_logreg", "frozen_logreg"}
    for scores in m["baselines"].values():
        assert set(scores) == {"accuracy", "macro_f1"} and 0 <= scores["macro_f1"] <= 1
    assert m["baselines"]["majority"]["accuracy"] == pytest.approx(0.65, abs=0.05)
    assert m["baselines"]["tfidf_logreg"]["macro_f1"] > 0.9  # bag of words sees the keyword
    assert m["val_macro_f1"] < m["baselines"]["tfidf_logreg"]["macro_f1"]
    assert m["beats_baselines"] is False
    assert "does NOT beat the best simple baseline (TF-IDF + LR)" in m["baseline_verdict"]
    # the gap carries its paired interval on the validation rows, in the metrics and in the words
    gap = m["baseline_gap"]
    assert gap["baseline"] == "tfidf_logreg" and gap["n"] == m["n_val"] == 30
    assert gap["gap"] == pytest.approx(m["val_macro_f1"] - m["baselines"]["tfidf_logreg"]["macro_f1"], abs=1e-5)
    assert gap["interval"][0] <= gap["gap"] <= gap["interval"][1] < 0  # a loss beyond noise here
    assert m["baseline_verdict"].endswith(f"on validation (30 rows, 90 % interval {100 * gap['interval'][0]:+.1f} to "
                                          f"{100 * gap['interval'][1]:+.1f} points)")


def test_with_the_blend_chosen_on_validation_the_served_model_does_not_lose_to_tfidf(losing_settings):
    """400 rows: 60 validation rows. (At 200 rows, 30 validation rows, the even blend scored 0.887 macro-F1
    against TF-IDF alone's 1.0: too few rows for the paired test, so the even blend stays and the guard
    says the model does not beat TF-IDF + LR.)"""
    settings = losing_settings.model_copy(update={"blend_tfidf": 0.5, "blend_on_validation": True})
    m = train(long_unbalanced(400), LABELS, settings, progress=False).metrics
    assert m["fine_tuned_encoder"]["macro_f1"] < m["baselines"]["tfidf_logreg"]["macro_f1"]  # the encoder alone loses
    assert set(m["blend_scores"]) == {"0", "0.25", "0.5", "0.75", "1"}
    assert m["blend_tfidf"] > 0 and m["blend_scores"][f"{m['blend_tfidf']:g}"] == max(m["blend_scores"].values())
    assert m["blend_choice"]["served"] == f"{m['blend_tfidf']:g}" and m["blend_choice"]["n"] == m["n_val"] == 60
    assert m["val_macro_f1"] >= m["baselines"]["tfidf_logreg"]["macro_f1"]
    assert m["beats_baselines"] is True
    assert m["served"] == served_model(m["blend_tfidf"]) and "TF-IDF + LR" in m["served"]


def test_choose_blend_keeps_the_even_blend_unless_validation_shows_another_weight_is_better():
    labels = ["a", "b"]
    y = ["a", "a", "b", "b"]
    encoder = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4]])  # right on rows 0 and 2
    tfidf = np.array([[0.45, 0.55], [0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])  # right on rows 1, 2 and 3
    weight, scores, choice = choose_blend(encoder, tfidf, y, labels)
    assert scores["1"] == 0.733333 and scores["0"] == 0.5
    assert weight == 0.5 and scores["0.25"] == scores["0.5"] == scores["0.75"] == 1.0  # only blends get all
    assert not choice.replaced and choice.n == 4
    weight, scores, _ = choose_blend(tfidf, tfidf, y, labels)
    assert weight == 0.5 and len(set(scores.values())) == 1
    # TF-IDF alone one row better than the even blend on 81 rows: noise, the even blend stays
    near_tie = (np.vstack([np.tile(encoder, (20, 1)), [[0.3, 0.7]]]),
                np.vstack([np.tile(tfidf, (20, 1)), [[0.8, 0.2]]]))
    weight, scores, choice = choose_blend(*near_tie, y * 20 + ["b"], labels)
    assert scores["0.25"] > scores["0.5"] and weight == 0.5 and choice.p_value > 0.1
    # an encoder sure and always wrong on 40 rows: the served model falls back to TF-IDF alone
    y40 = y * 10
    unsure = np.tile([[0.45, 0.55], [0.6, 0.4], [0.3, 0.7], [0.4, 0.6]], (10, 1))  # right on 3 of 4, by a little
    weight, scores, choice = choose_blend(np.tile(np.eye(2)[[1, 1, 0, 0]], (10, 1)), unsure, y40, labels)
    assert weight == 1.0 and scores["0"] == 0.0 and choice.replaced and choice.p_value <= 0.1
    assert choice.words().startswith("1 replaces 0.5:")


def test_verdict_names_the_best_baseline_and_the_gap():
    base = {"majority": {"accuracy": 0.65, "macro_f1": 0.26}, "tfidf_logreg": {"accuracy": 0.75, "macro_f1": 0.50},
            "frozen_logreg": {"accuracy": 0.66, "macro_f1": 0.45}}
    assert verdict({"accuracy": 0.8, "macro_f1": 0.571}, base) == (
        True, "fine-tuning beats the best simple baseline (TF-IDF + LR) by 7.1 points of macro-F1")
    beats, words = verdict({"accuracy": 0.6, "macro_f1": 0.40}, base)
    assert not beats and "10.0 points" in words and "TF-IDF + LR" in words


def test_the_recorded_gap_is_the_verdicts_when_a_class_is_absent_from_validation():
    """Three labels, the rare one absent from the rows: the verdict averages over the classes the rows
    show, and ``baseline_gap`` must state the same gap, not one diluted by the absent class."""
    y = ["positive"] * 6 + ["negative"] * 4
    ours = ["positive"] * 6 + ["negative"] * 3 + ["positive"]
    theirs = ["positive"] * 6 + ["negative"] * 1 + ["positive"] * 3
    scores = {"majority": {"accuracy": 0.6, "macro_f1": 0.375}, "tfidf_logreg": {"accuracy": 0.7, "macro_f1": 0.6}}
    base = Baselines(scores, SparseModel.fit(["good day", "bad night"], ["positive", "negative"], LABELS),
                     predictions={"majority": ["positive"] * 10, "tfidf_logreg": theirs})
    gap = gap_to_best(y, ours, base, LABELS)
    beats, words = verdict({"accuracy": 0.9, "macro_f1": 0.890110}, scores)
    assert beats and gap is not None and gap["baseline"] == "tfidf_logreg"
    assert round(100 * gap["gap"], 1) == 29.0 and "by 29.0 points" in words
    assert gap["interval"][0] < gap["gap"] < gap["interval"][1]
    assert summary({"accuracy": 0.9, "macro_f1": 0.890110}, scores, gap)["baseline_verdict"].startswith(words)


def test_cli_prints_the_baselines_and_blocks_an_unforced_first_promotion(tmp_path, sentiment_base, monkeypatch):
    monkeypatch.chdir(tmp_path)
    long_unbalanced(120).to_csv(tmp_path / "data.csv", index=False)
    env = {"TUNELOOP_MODEL__BASE": str(sentiment_base), "TUNELOOP_MODEL__EPOCHS": "1",
           "TUNELOOP_MODEL__MAX_LENGTH": "32", "TUNELOOP_MODEL__BLEND_TFIDF": "0",
           "TUNELOOP_SERVER__PORT": str(free_port())}  # no server answers there: the offline path
    labels = ",".join(LABELS)

    r = cli_in_process("train", "data.csv", "--labels", labels, "--promote", cwd=tmp_path, env=env)
    assert r.exit_code == 1, r.output
    for name in ("majority class", "TF-IDF + LR", "frozen encoder + LR", "fine-tuned model"):
        assert name in r.stdout
    assert "does NOT beat" in r.stdout
    refusal = r.stderr.strip().splitlines()[-1]
    assert refusal.startswith("not promoting v1") and "--force" in refusal

    r = cli_in_process("train", "data.csv", "--labels", labels, "--promote", "--force", cwd=tmp_path, env=env)
    assert r.exit_code == 0, r.output
    assert "v2" in r.stdout and "as champion" in r.stdout
