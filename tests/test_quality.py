"""The data-quality report: each check names exactly the rows that have the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tuneloop.retrain.quality import near_duplicates, quality_report, summary_lines
from tuneloop.retrain.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, keyword_sentiment, make_tiny_base

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tuneloop.retrain.encoder import Encoder

    base = make_tiny_base(tmp_path_factory.mktemp("base"), POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS)
    return Encoder(base, max_length=32)


def by_check(report: dict) -> dict[str, dict]:
    return {f["check"]: f for f in report["findings"]}


def test_text_checks_name_their_rows() -> None:
    rows = [
        ("a perfectly ordinary sentence", "positive"),      # 1
        ("   ", "negative"),                                  # 2 empty
        ("ok", "neutral"),                                    # 3 too short
        ("The same text twice", "positive"),                  # 4
        ("the  same text TWICE ", "positive"),                # 5 exact duplicate of 4 (same label)
        ("flight was late", "negative"),                      # 6
        ("Flight was late", "positive"),                      # 7 conflicts with 6
        ("cafÃ© was closed", "neutral"),                      # 8 mojibake
        ("lost \ufffd characters", "neutral"),                # 9 replacement character
        ("tab\x07bell", "neutral"),                           # 10 control character
        ("это совсем другой алфавит", "negative"),           # 11 another script
        ("word " * 40, "positive"),                           # 12 over 32 tokens
    ]
    df = pd.DataFrame(rows, columns=["text", "label"])
    tokenizer = type("T", (), {"__call__": lambda self, texts, add_special_tokens=True: {
        "input_ids": [t.split() + ["[CLS]", "[SEP]"] for t in texts]}})()
    report = quality_report(df, LABELS, tokenizer=tokenizer, max_tokens=32)
    found = by_check(report)
    assert found["empty_text"]["rows"] == [2]
    assert found["too_short"]["rows"] == [3]
    assert found["exact_duplicate"]["rows"] == [5]
    assert found["conflicting_duplicate"]["rows"] == [6, 7]
    assert found["conflicting_duplicate"]["severity"] == "error"
    assert found["mojibake"]["rows"] == [8]
    assert found["replacement_char"]["rows"] == [9]
    assert found["control_chars"]["rows"] == [10]
    assert found["other_script"]["rows"] == [11]
    assert found["over_max_length"]["rows"] == [12]
    assert report["skipped"] == ["near_duplicate", "label_error"]
    fixes = {f["row_id"]: f["action"] for f in report["suggested_fixes"]}
    assert fixes == {2: "drop", 3: "drop", 5: "drop"}  # a conflict needs a human: no automatic fix
    assert report["class_counts"] == {"negative": 3, "neutral": 4, "positive": 5}
    assert any("empty" in line for line in summary_lines(report))


def test_class_balance_flags_missing_small_and_imbalanced_classes() -> None:
    df = pd.DataFrame({"text": [f"text number {i}" for i in range(66)], "label": ["negative"] * 60 + ["neutral"] * 6})
    found = by_check(quality_report(df, LABELS))
    assert "positive" in found["class_missing"]["message"]
    assert found["class_too_small"]["details"]["counts"] == {"neutral": 6}
    assert found["imbalance"]["details"]["ratio"] == 10.0
    balanced = pd.DataFrame({"text": [f"text number {i}" for i in range(60)], "label": LABELS * 20})
    assert by_check(quality_report(balanced, LABELS)) == {}


def test_near_duplicates_are_found_by_embedding_not_by_exact_text() -> None:
    emb = np.array([[1.0, 0.0], [0.999, 0.04], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    texts = ["rt great flight", "great flight!!", "something else", "RT great flight"]
    labels = np.array(["positive", "negative", "neutral", "positive"])
    (finding,) = near_duplicates(np.array([10, 11, 12, 13]), texts, labels, emb)
    # 10 and 13 are exact duplicates (another check's business): only the pairs with 11 count here.
    assert finding.rows == [10, 11, 13]
    assert sorted(finding.details["conflicting_pairs"]) == [(10, 11), (11, 13)]


def flip(df: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, set[int]]:
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(df), int(round(share * len(df))), replace=False)
    out = df.copy()
    for i in picked:
        out.loc[i, "label"] = rng.choice([lab for lab in LABELS if lab != out.loc[i, "label"]])
    return out, {int(i) + 1 for i in picked}


def test_label_errors_find_most_flipped_rows_and_suggest_the_true_label(tiny_encoder) -> None:
    clean = keyword_sentiment(300, seed=3)
    noisy, flipped = flip(clean, 0.15, seed=0)
    report = quality_report(noisy, LABELS, embed=tiny_encoder.encode, tokenizer=tiny_encoder.tokenizer,
                            max_tokens=tiny_encoder.max_length)
    finding = by_check(report)["label_error"]
    flagged = set(finding["rows"])
    hits = flagged & flipped
    precision, recall = len(hits) / len(flagged), len(hits) / len(flipped)
    # most flips are found; the list is at least twice as precise as chance (0.15)
    assert recall >= 0.6 and precision >= 0.3, (precision, recall)
    truth = clean["label"].to_numpy()
    right = [f for f in finding["fixes"] if f["row_id"] in flipped and f["label"] == truth[f["row_id"] - 1]]
    assert len(right) >= 0.8 * len(hits)
    assert report["seconds"]["label_errors"] > 0


def test_label_errors_on_clean_data_flag_few_rows(tiny_encoder) -> None:
    clean = keyword_sentiment(300, seed=3)
    found = by_check(quality_report(clean, LABELS, embed=tiny_encoder.encode))
    assert found.get("label_error", {"count": 0})["count"] <= 0.05 * len(clean)


def test_scorecard_fallback_uses_the_recorded_baseline_model_and_the_exact_paired_interval():
    import numpy as np

    from tuneloop.retrain.scorecard import difference_interval, tfidf_baseline
    from tuneloop.retrain.tiny import keyword_sentiment

    data = keyword_sentiment(120, seed=5)
    train, test = data.iloc[:90], data.iloc[90:]
    labels = sorted(data["label"].unique())
    pred = tfidf_baseline(train, test, labels)
    assert set(pred) <= set(labels) and np.mean(np.array(pred) == test["label"].to_numpy()) > 0.6
    a = np.array([1] * 25 + [0] * 5, dtype=bool)  # same rows, different correctness
    b = np.array([1] * 15 + [0] * 10 + [1] * 5, dtype=bool)
    lo, hi = difference_interval(a, b)
    assert lo < a.mean() - b.mean() < hi and lo >= -1 and hi <= 1


def test_each_distinct_text_is_encoded_once_and_rows_keep_their_order() -> None:
    from tuneloop.retrain.quality import embed_distinct

    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)

    texts = ["a longer text", "b", "a longer text", "cc", "b"]
    emb = embed_distinct(encode, texts)
    assert calls == [["b", "cc", "a longer text"]]  # distinct, shortest first
    assert emb.tolist() == [[13, 97], [1, 98], [13, 97], [2, 99], [1, 98]]


def test_later_dataset_versions_reuse_the_uploads_embeddings(tmp_path) -> None:
    from tuneloop.monitor.datasets import DatasetStore

    store = DatasetStore(tmp_path)
    rows = keyword_sentiment(30, seed=1)
    ds = store.create(rows.assign(row_id=range(1, 31)), LABELS, {"name": "t"})
    encoded: list[str] = []

    def encode(texts: list[str]) -> np.ndarray:
        encoded.extend(texts)
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    first = store.cached_encode(ds["id"], encode, "enc|32")(rows["text"].tolist())
    assert len(encoded) == rows["text"].nunique()
    store.apply_fixes(ds["id"], drop=[1, 2], relabel={})
    later = store.cached_encode(ds["id"], encode, "enc|32")(store.rows(ds["id"])["text"].tolist())
    assert len(encoded) == rows["text"].nunique()  # nothing encoded again
    assert later.tolist() == first[2:].tolist()
    store.cached_encode(ds["id"], encode, "other|32")(["new text"])
    assert encoded[-1] == "new text"  # another encoder has its own store


def test_label_errors_come_in_a_likely_tier_that_is_acted_on_and_a_possible_tier_that_is_not(tiny_encoder) -> None:
    noisy, flipped = flip(keyword_sentiment(300, seed=3), 0.2, seed=1)
    report = quality_report(noisy, LABELS, embed=tiny_encoder.encode)
    found = by_check(report)
    likely, possible = found["label_error"], found["possible_label_error"]
    assert likely["details"]["tier"] == "likely" and possible["details"]["tier"] == "possible"
    assert not set(likely["rows"]) & set(possible["rows"])
    # the likely tier is the top of the list: more of it is flipped than of the possible tier
    precision = {name: len(set(f["rows"]) & flipped) / len(f["rows"]) for name, f in found.items()
                 if name.endswith("label_error")}
    assert precision["label_error"] > precision["possible_label_error"], precision
    # its size is the list's expected number of real errors
    listed = likely["fixes"] + possible["fixes"]
    assert likely["count"] == round(sum(f["mislabel_probability"] for f in listed))
    suggested = {f["row_id"] for f in report["suggested_fixes"] if f["check"].endswith("label_error")}
    assert suggested == set(likely["rows"])  # possible rows are offered, not suggested


def test_report_encoder_is_a_quantised_copy_that_embeds_alike_and_keys_its_cache_apart(tiny_encoder) -> None:
    import torch

    from tuneloop.retrain.report_encoder import VARIANT, ReportEncoder
    from tuneloop.retrain.tiny import keyword_sentiment

    base = tiny_encoder.info.path
    report = ReportEncoder(base, 32)
    assert report.load() is report.load() and report.load() is not tiny_encoder  # once per process, its own copy
    layers = [type(m) for m in report.load().model.modules()]
    assert torch.ao.nn.quantized.dynamic.Linear in layers and torch.nn.Linear not in layers
    texts = keyword_sentiment(60, seed=1)["text"].tolist()
    cosine = (report.encode(texts) * tiny_encoder.encode(texts)).sum(axis=1)
    assert np.median(cosine) > 0.9, np.median(cosine)
    assert report.key == f"{base}|32|{VARIANT}" != f"{base}|32"


def misspelt_keyword_texts(n: int, seed: int) -> pd.DataFrame:
    """Texts whose label shows only in a word stem with a random ending ("greatqzx"): no whole word repeats."""
    rng = np.random.default_rng(seed)
    stems = {"negative": "awful", "neutral": "plain", "positive": "great"}
    filler = ["the", "a", "today", "my", "this", "city", "team", "phone", "weather", "car"]
    letters = list("bcdfghjkmnpqrvwxz")
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        word = stems[label] + "".join(rng.choice(letters, 3))
        rows.append((" ".join([*rng.choice(filler, 3), word, *rng.choice(filler, 2)]), label))
    return pd.DataFrame(rows, columns=["text", "label"])


def test_label_errors_read_word_pieces_the_encoder_cannot_see() -> None:
    """The character n-gram model shares a stem across spellings; a word model would see no repeated word."""
    from tuneloop.retrain.quality import label_errors

    noisy, flipped = flip(misspelt_keyword_texts(300, seed=4), 0.2, seed=2)
    blind = np.random.default_rng(0).normal(size=(len(noisy), 16))  # embeddings that carry no label
    found, _ = label_errors(np.arange(1, len(noisy) + 1), noisy["label"].to_numpy(), LABELS, blind,
                            texts=noisy["text"].tolist())
    likely = {f.check: f for f in found}["label_error"]
    hits = set(likely.rows) & flipped
    precision, recall = len(hits) / len(likely.rows), len(hits) / len(flipped)
    assert precision >= 0.9 and recall >= 0.5, (precision, recall)
    assert "character n-gram model" in likely.details["method"]
    without, _ = label_errors(np.arange(1, len(noisy) + 1), noisy["label"].to_numpy(), LABELS, blind)
    guessed = [set(f.rows) for f in without if f.check == "label_error"]
    assert not guessed or len(guessed[0] & flipped) / len(guessed[0]) < 0.5  # the embeddings alone: about chance
