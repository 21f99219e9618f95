"""The label queue: ordering per strategy, diversity on a page, and the candidate pool in the store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tuneloop.monitor.label_queue import (
    DUPLICATE_COSINE,
    STRATEGIES,
    label_queue,
    queue_size,
    rank_pool,
    uncertainty,
)
from tuneloop.monitor.storage import Store

LABELS = ["negative", "neutral", "positive"]


def probs(*p: float) -> str:
    return json.dumps(dict(zip(LABELS, p, strict=True)))


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_uncertainty_orders_by_margin_then_entropy():
    pool = pd.DataFrame({
        "text": ["sure", "torn", "torn three ways", "fairly sure", "two-way tie"],
        "probs": [probs(0.9, 0.05, 0.05), probs(0.45, 0.40, 0.15), probs(0.34, 0.33, 0.33),
                  probs(0.7, 0.2, 0.1), probs(0.5, 0.5, 0.0)],
    })
    ranked = rank_pool(pool, "uncertainty", 5)
    # margins: .85 .05 .01 .5 0 -> tie-free order by margin
    assert ranked["text"].tolist() == ["two-way tie", "torn three ways", "torn", "fairly sure", "sure"]
    assert ranked["score"].is_monotonic_decreasing
    tie = pd.DataFrame({"text": ["low entropy", "high entropy"],
                        "probs": [probs(0.5, 0.4, 0.1), probs(0.4, 0.3, 0.3)]})  # both margin 0.1
    assert rank_pool(tie, "uncertainty", 2)["text"].tolist() == ["high entropy", "low entropy"]


def test_uncertainty_falls_back_to_margin_column_then_confidence():
    pool = pd.DataFrame({"text": ["a", "b", "c"], "probs": [None, None, None], "margin": [0.6, None, None],
                         "confidence": [None, 0.55, 0.99]})
    margin, _ = uncertainty(pool)
    np.testing.assert_allclose(margin, [0.6, 0.1, 0.98])
    assert rank_pool(pool, "uncertainty", 3)["text"].tolist() == ["b", "a", "c"]


def test_novelty_puts_rows_far_from_the_reference_first():
    reference = np.stack([unit([1, 0, 0]), unit([0.9, 0.1, 0])])
    pool = pd.DataFrame({
        "text": ["like the reference", "a bit off", "orthogonal", "opposite", "no embedding"],
        "embedding": [unit([1, 0.05, 0]), unit([1, 1, 0]), unit([0, 0, 1]), unit([-1, 0, 0]), None],
    })
    ranked = rank_pool(pool, "novelty", 5, reference=reference)
    assert ranked["text"].tolist() == ["opposite", "orthogonal", "a bit off", "like the reference", "no embedding"]
    assert ranked["score"].iloc[0] == pytest.approx(1 + 0.9 / np.hypot(0.9, 0.1), abs=1e-5)  # nearest reference
    assert ranked["score"].iloc[-1] == 0.0


def test_mix_blends_both_signals():
    reference = np.stack([unit([1, 0, 0])])
    pool = pd.DataFrame({
        "text": ["certain, familiar", "uncertain, familiar", "certain, novel", "uncertain, novel"],
        "probs": [probs(0.9, 0.05, 0.05), probs(0.4, 0.35, 0.25), probs(0.9, 0.05, 0.05), probs(0.4, 0.35, 0.25)],
        "embedding": [unit([1, 0.3, 0]), unit([1, 0, 0.3]), unit([0, 1, 0]), unit([0, 0, 1])],
    })
    ranked = rank_pool(pool, "mix", 4, reference=reference)
    assert ranked["text"].iloc[0] == "uncertain, novel"
    assert ranked["text"].iloc[-1] == "certain, familiar"


def test_mix_keeps_near_duplicates_off_one_page():
    rng = np.random.default_rng(0)
    hot = unit(rng.standard_normal(16))
    rows = []
    for i in range(10):  # ten near-copies of one very uncertain, very novel text
        rows.append({"text": f"copy {i}", "probs": probs(0.34, 0.33, 0.33),
                     "embedding": unit(hot + 0.01 * rng.standard_normal(16))})
    for i in range(30):
        rows.append({"text": f"other {i}", "probs": probs(0.5, 0.3, 0.2),
                     "embedding": unit(rng.standard_normal(16))})
    pool = pd.DataFrame(rows)
    reference = np.stack([unit(rng.standard_normal(16)) for _ in range(50)])
    page = rank_pool(pool, "mix", 10, reference=reference)
    assert len(page) == 10
    assert page["text"].str.startswith("copy").sum() == 1
    emb = np.stack(page["embedding"].to_numpy())
    sims = emb @ emb.T
    np.fill_diagonal(sims, 0)
    assert sims.max() <= DUPLICATE_COSINE
    # without the diversity rule, uncertainty alone fills the page with the copies
    assert rank_pool(pool, "uncertainty", 10)["text"].str.startswith("copy").sum() == 10


def test_every_strategy_drops_exact_duplicate_texts():
    pool = pd.DataFrame({"text": ["Same text! http://t.co/a", "same text http://t.co/b", "another"],
                         "probs": [probs(0.34, 0.33, 0.33)] * 3,
                         "embedding": [unit([1, 0]), unit([1, 0.001]), unit([0, 1])]})
    for strategy in STRATEGIES:
        assert len(rank_pool(pool, strategy, 3, reference=np.stack([unit([1, 1])]))) == 2, strategy


def test_random_is_seeded():
    pool = pd.DataFrame({"text": [f"t{i}" for i in range(100)]})
    a = rank_pool(pool, "random", 10, seed=1)["text"].tolist()
    assert a == rank_pool(pool, "random", 10, seed=1)["text"].tolist()
    assert a != rank_pool(pool, "random", 10, seed=2)["text"].tolist()


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        rank_pool(pd.DataFrame({"text": ["x"]}), "smart", 1)


# ---- from the store --------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    with Store(tmp_path / "q.duckdb") as s:
        rows = []
        for i in range(60):
            p = rng.dirichlet([1, 1, 1])
            rows.append({"id": f"p{i}", "text": f"text number {i}", "label": LABELS[int(p.argmax())],
                         "confidence": float(p.max()), "probs": json.dumps(dict(zip(LABELS, p.tolist(),
                                                                                       strict=True))),
                         "embedding": unit(rng.standard_normal(8)).tolist()})
        for start in range(0, 60, 10):  # six batches: arrival order is known
            s.append_predictions(rows[start:start + 10])
        s.append_feedback([{"prediction_id": f"p{i}", "label": "neutral"} for i in range(0, 60, 3)])
        s.append_feedback([{"prediction_id": "future", "label": "neutral"}])  # pending: harmless
        yield s


def test_queue_excludes_labelled_and_returns_items(store):
    items = label_queue(store, "default", "uncertainty", 100)
    ids = {it["prediction_id"] for it in items}
    assert len(items) == 40 and queue_size(store) == 40
    assert not ids & {f"p{i}" for i in range(0, 60, 3)}
    first = items[0]
    assert set(first) >= {"prediction_id", "text", "label", "confidence", "probs", "score"}
    assert set(first["probs"]) == set(LABELS)
    margins = [sorted(it["probs"].values())[-1] - sorted(it["probs"].values())[-2] for it in items]
    assert margins == sorted(margins)


def test_queue_pool_is_the_most_recent_rows(store):
    recent = label_queue(store, "default", "random", 100, pool_size=10)
    assert len(recent) == 10
    got = {it["prediction_id"] for it in recent}
    assert got >= {f"p{i}" for i in range(50, 60)} - {"p51", "p54", "p57"}  # the newest batch's unlabelled rows
    assert got <= {f"p{i}" for i in range(40, 60)}  # topped up from the batch before


def test_novelty_uses_the_champion_reference(store):
    ref_dir = unit([1, 0, 0, 0, 0, 0, 0, 0])
    store.execute("INSERT INTO model_versions (project, version, created_at, status, path) "
                  "VALUES ('default', 'v1', now(), 'champion', '/x')")
    from tuneloop.monitor.registry import load_reference

    load_reference(store, "default", "v1", pd.DataFrame({"text": ["r"] * 5, "embedding": [ref_dir] * 5}))
    store.append_predictions([{"id": "far", "text": "far away", "label": "neutral",
                               "embedding": (-ref_dir).tolist()},
                              {"id": "near", "text": "close by", "label": "neutral", "embedding": ref_dir.tolist()}])
    items = label_queue(store, "default", "novelty", 100)
    assert items[0]["prediction_id"] == "far" and items[0]["score"] == pytest.approx(2.0, abs=1e-5)
    assert items[-1]["prediction_id"] == "near"
    assert [it["prediction_id"] for it in label_queue(store, "default", "mix", 5)][0] != "near"


def test_prob_matrix_reads_every_shape_and_survives_bad_rows():
    from tuneloop.monitor.label_queue import prob_matrix

    m = prob_matrix([probs(0.2, 0.5, 0.3), "[0.1, 0.9]", np.array([0.6, 0.4]), None, "{not json", {"a": 1.0,
                                                                                                  "b": 0.0}])
    np.testing.assert_allclose(m[0][:3], [0.2, 0.5, 0.3])  # dict rows: one column per label seen on the page
    np.testing.assert_allclose(m[1], [0.1, 0.9] + [0.0] * (m.shape[1] - 2))
    np.testing.assert_allclose(m[2], [0.6, 0.4] + [0.0] * (m.shape[1] - 2))
    assert np.isnan(m[3]).all() and np.isnan(m[4]).all()
    assert sorted(m[5][m[5] > 0].tolist()) == [1.0]
    margin, _ = uncertainty(pd.DataFrame({"text": list("abcdef"), "probs": [probs(0.2, 0.5, 0.3), "[0.1, 0.9]",
                                                                          None, None, "{not json", None]}))
    np.testing.assert_allclose(margin, [0.2, 0.8, 1, 1, 1, 1])


def test_the_reference_embedding_cache_stays_bounded(tmp_path):
    from tuneloop.monitor import label_queue

    with Store(tmp_path / "cache.duckdb") as store:
        for i in range(4):
            store.execute("INSERT INTO reference_rows (project, reference, text, embedding) "
                          "VALUES ('default', 'imported', ?, ?)", [f"r{i}", [float(i), 1.0]])
        for seed in range(3 * label_queue.REFERENCE_CACHE_MAX):
            assert label_queue.reference_embeddings(store, size=2, seed=seed).shape == (2, 2)
    assert len(label_queue._reference_cache) <= label_queue.REFERENCE_CACHE_MAX



# ---- the random evaluation slice ------------------------------------------------------------------


def test_a_share_of_each_page_is_random_slice_traffic_marked_as_such(store):
    from tuneloop.retrain.evaluation_slice import in_slice

    page = label_queue(store, "default", "uncertainty", 10, random_share=0.2)
    unlabelled = [f"p{i}" for i in range(60) if i % 3]
    members = {i for i, m in zip(unlabelled, in_slice(unlabelled, 0.2), strict=True) if m}
    assert len(members) >= 2
    assert [it["slice"] for it in page] == ["queue"] * 4 + ["random"] + ["queue"] * 4 + ["random"]
    randoms = [it for it in page if it["slice"] == "random"]
    assert {it["prediction_id"] for it in randoms} <= members and all(it["score"] is None for it in randoms)
    picks = [it["prediction_id"] for it in page if it["slice"] == "queue"]
    assert not set(picks) & members  # strategies never take slice rows: the slice stays a uniform sample
    everything = label_queue(store, "default", "uncertainty", 100)
    assert picks == [it["prediction_id"] for it in everything if it["prediction_id"] not in members][:8]
    again = label_queue(store, "default", "uncertainty", 10, random_share=0.2)
    assert [it["prediction_id"] for it in again] == [it["prediction_id"] for it in page]  # stable between loads
    assert all(it["slice"] == "queue" for it in everything)  # random_share 0: no slice


def test_labels_saved_compares_error_rates_of_queue_picks_and_random_rows(tmp_path):
    from tuneloop.monitor.label_queue import labels_saved
    from tuneloop.retrain.evaluation_slice import in_slice

    ids = [f"r{i}" for i in range(600)]
    members = in_slice(ids, 0.2)
    with Store(tmp_path / "s.duckdb") as s:
        s.append_predictions([{"id": i, "text": f"t {i}", "label": "neutral"} for i in ids])
        few = labels_saved(s, "default", 0.2)
        assert not few["measurable"] and few["saved"] is None and "not yet measurable" in few["message"]
        # the model is wrong on every 4th random row and on every 2nd queue pick
        truth = [("positive" if k % 4 == 0 else "neutral") if m else ("positive" if k % 2 == 0 else "neutral")
                 for k, m in enumerate(members)]
        s.append_feedback([{"prediction_id": i, "label": y} for i, y in zip(ids, truth, strict=True)])
        out = labels_saved(s, "default", 0.2)
    assert out["measurable"] and out["random"]["n"] == int(members.sum()) and out["queue"]["n"] == 600 - members.sum()
    assert out["random"]["error_rate"] == pytest.approx(0.25, abs=0.03)
    assert out["queue"]["error_rate"] == pytest.approx(0.5, abs=0.03)
    assert out["saved"] == pytest.approx(1 - out["random"]["error_rate"] / out["queue"]["error_rate"])
    lo, hi = out["random"]["interval"]
    assert lo < out["random"]["error_rate"] < hi and "the queue saves" in out["message"]


def test_cluster_spreads_a_page_over_every_new_region():
    """Three new regions of traffic, the first the most uncertain, and uncertain rows near the reference:
    uncertainty alone fills the page from the first region and the familiar rows; cluster takes the most
    uncertain row of each new region."""
    rng = np.random.default_rng(0)

    def near(centre: list[float]) -> np.ndarray:
        return unit(np.asarray(centre, np.float32) + 0.05 * rng.standard_normal(4))

    reference = np.stack([near([1, 0, 0, 0]) for _ in range(20)])
    rows = [{"text": f"familiar {i}", "probs": probs(0.34, 0.33, 0.33), "embedding": near([1, 0, 0, 0])}
            for i in range(60)]
    for name, centre, p in (("a", [0, 1, 0, 0], probs(0.34, 0.33, 0.33)), ("b", [0, 0, 1, 0], probs(0.5, 0.3, 0.2)),
                            ("c", [0, 0, 0, 1], probs(0.6, 0.3, 0.1))):
        rows += [{"text": f"{name} {i}", "probs": p, "embedding": near(centre)} for i in range(20)]
    pool = pd.DataFrame(rows)
    page = rank_pool(pool, "cluster", 3, reference=reference)
    assert sorted(t.split()[0] for t in page["text"]) == ["a", "b", "c"]
    assert page["score"].tolist() == sorted(page["score"].tolist(), reverse=True)  # most uncertain first
    plain = rank_pool(pool, "uncertainty", 3)
    assert not any(t.split()[0] in ("b", "c") for t in plain["text"])
    assert rank_pool(pool, "cluster", 3, reference=reference)["text"].tolist() == page["text"].tolist()  # seeded
