"""Self-training: the rounds label more of the pool once the views learn from their own picks; the picks keep
the training rows' class proportions; ``tuneloop train --unlabelled`` self-trains a first training."""

import json

import numpy as np
import pandas as pd

from tuneloop.retrain.selftrain import SelfTraining, _in_proportion, agreed_labels
from tuneloop.retrain.tiny import keyword_sentiment
from tuneloop.retrain.trainer import train

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
    one = agreed_labels(texts, y, x, pool, x_pool, LABELS,
                        SelfTraining(pool, rounds=1, min_confidence=0.8, balance=False))
    three = agreed_labels(texts, y, x, pool, x_pool, LABELS,
                          SelfTraining(pool, rounds=3, min_confidence=0.8, balance=False))
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


def test_balanced_picks_keep_the_training_rows_class_proportions():
    texts, y, x, pool, x_pool = _setting()  # training rows 20 a / 20 b; the pool's agreed picks 15 a / 30 b
    free = agreed_labels(texts, y, x, pool, x_pool, LABELS, SelfTraining(pool, rounds=3, min_confidence=0.8,
                                                                          balance=False))
    kept = agreed_labels(texts, y, x, pool, x_pool, LABELS, SelfTraining(pool, rounds=3, min_confidence=0.8))
    assert free[3]["label_counts"] == {"a": 15, "b": 30}
    assert kept[3]["label_counts"] == {"a": 15, "b": 22}  # floor(45 / 2) of each class at most
    ranked, classes = np.array([5, 3, 9, 1, 7, 8]), np.array([0, 0, 0, 1, 1, 1])  # most confident first
    assert _in_proportion(ranked, classes, np.array([0.5, 0.5]), 4).tolist() == [5, 3, 1, 7]
    assert _in_proportion(ranked, classes, np.array([0.75, 0.25]), 4).tolist() == [5, 3, 9, 1]


THREE = ["negative", "neutral", "positive"]


def test_the_guard_fits_its_baselines_on_the_human_labels_only(sentiment_settings):
    data, pool = keyword_sentiment(90, seed=0), keyword_sentiment(300, seed=1)["text"].tolist()
    settings = sentiment_settings.model_copy(update={"epochs": 1})
    plain = train(data, THREE, settings, progress=False).metrics
    self_trained = train(data, THREE, settings, progress=False, self_training=SelfTraining(pool)).metrics
    assert self_trained["self_training"]["picked"] > 100
    assert self_trained["n_train"] == plain["n_train"] + self_trained["self_training"]["picked"]
    assert self_trained["n_val"] == plain["n_val"]
    assert self_trained["baselines"] == plain["baselines"]  # what a sceptic fits on the same human rows


def test_a_search_labels_the_pool_once_for_all_its_trials(sentiment_settings):
    from tuneloop.retrain.search import search_train
    from tuneloop.retrain.settings import SearchSettings

    data, pool = keyword_sentiment(90, seed=0), keyword_sentiment(300, seed=1)["text"].tolist()
    settings = sentiment_settings.model_copy(update={"epochs": 1})
    plan = SelfTraining(pool)
    lines: list[str] = []
    result = search_train(data, THREE, settings, SearchSettings(trials=3), log=lines.append, self_training=plan)
    assert len(result.metrics["search"]["trials"]) == 3
    assert len(plan.done) == 1  # one start model, one split: one labelling of the pool
    picked = [line for line in lines if line.startswith("self-training")]
    assert len(picked) == 3 and len({line.split(": ", 1)[1] for line in picked}) == 1  # the same pseudo-labels
    fresh = train(data, THREE, settings, progress=False, self_training=SelfTraining(pool)).metrics
    assert result.metrics["self_training"] == fresh["self_training"]  # what a single run would have picked


def test_cli_train_self_trains_on_an_unlabelled_file(tmp_path, sentiment_base, monkeypatch):
    from conftest import cli_in_process, free_port

    monkeypatch.chdir(tmp_path)
    data = keyword_sentiment(60, seed=0)
    data.to_csv("data.csv", index=False)
    pool = keyword_sentiment(200, seed=2)[["text"]]
    pool = pd.concat([pool, data[["text"]].head(5), pd.DataFrame({"text": ["", "  "]})])  # 5 labelled texts, 2 blank
    pool.to_csv("pool.csv", index=False)
    env = {"TUNELOOP_MODEL__BASE": str(sentiment_base), "TUNELOOP_MODEL__EPOCHS": "1",
           "TUNELOOP_MODEL__MAX_LENGTH": "32", "TUNELOOP_SERVER__PORT": str(free_port())}

    r = cli_in_process("train", "data.csv", "--labels", ",".join(THREE), "--unlabelled", "pool.csv",
                       cwd=tmp_path, env=env)
    assert r.exit_code == 0, r.output
    assert "pseudo-labels of" in r.stderr
    facts = json.loads((tmp_path / "d" / "models" / "v1" / "metrics.json").read_text())["self_training"]
    distinct = set(keyword_sentiment(200, seed=2)["text"]) - set(data["text"])
    assert facts["pool"] == len(distinct)  # no blank, no duplicate, no labelled text
    assert 0 < facts["picked"] <= 5 * 51 and facts["rounds"] == 3
    counts = list(facts["label_counts"].values())
    assert len(counts) == 3 and max(counts) <= min(facts["cap"], facts["confident"]) / 3  # the rows' even mix

    pd.DataFrame({"body": ["a text"]}).to_csv("wrong.csv", index=False)
    r = cli_in_process("train", "data.csv", "--labels", ",".join(THREE), "--unlabelled", "wrong.csv",
                       cwd=tmp_path, env=env)
    assert r.exit_code == 1 and "no column 'text'" in r.output and "Traceback" not in r.output
