"""After a promotion the server re-scores earlier traffic into the new champion's reference (real server,
real DuckDB, real tiny training): like-with-like output checks, and pre-promotion drift is never absorbed."""

from __future__ import annotations

import random
import shutil
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_LABELS

from tuneloop.monitor import checks, drift
from tuneloop.monitor.projects import settings_for
from tuneloop.retrain import tiny
from tuneloop.retrain.reference import RESCORED_SPLIT, reference_rows
from tuneloop.retrain.versions import load_version

WINDOW = 300
INPUT_CHECKS = {c.name for c in drift.DEFAULT_CHECKS if c.scope == "input"}
OUTPUT_CHECKS = {c.name for c in drift.DEFAULT_CHECKS if c.scope == "output"}
DRIFT = {"window_size": WINDOW, "interval_seconds": 3600, "open_after": 1}


@pytest.fixture(scope="module")
def versions(tmp_path_factory, sentiment_settings):
    """v1 trained from the tiny base on keyword sentiment, v2 continued from it on more of the same."""
    from tuneloop.retrain.build import train_version

    models = tmp_path_factory.mktemp("rescore-models")
    train_version(models, sentiment_settings, tiny.keyword_sentiment(240), TINY_LABELS, version="v1")
    more = sentiment_settings.model_copy(update={"epochs": 2})
    train_version(models, more, tiny.keyword_sentiment(120, seed=5), version="v2", from_version="v1")
    return models


def same_distribution(n: int, seed: int) -> list[str]:
    return tiny.keyword_sentiment(n, seed=seed)["text"].tolist()


def drifted(n: int, seed: int) -> list[str]:
    """Longer texts of foreign words holding a positive and a negative keyword: new inputs, unsure outputs."""
    rng = random.Random(seed)
    foreign = ["über", "straße", "café", "naïve", "façade", "señor", "smörgås"]
    return [" ".join([rng.choice(tiny.POSITIVE_WORDS), *rng.choices(foreign, k=rng.randint(8, 14)),
                      rng.choice(tiny.NEGATIVE_WORDS)]) for _ in range(n)]


def serve(client: httpx.Client, texts: list[str]) -> None:
    for i in range(0, len(texts), 50):
        r = client.post("/v1/predict", json={"texts": texts[i:i + 50]})
        assert r.status_code == 200, r.text


def check(client: httpx.Client) -> dict[str, dict]:
    r = client.post("/v1/checks")
    assert r.status_code == 200, r.text
    return {res["metric"]: res for res in r.json()["results"]}


def start(running_server, sentiment_base, versions):
    server = running_server(model={"base": str(sentiment_base), "threads": 1}, drift=DRIFT,
                            retrain={"enabled": False})
    shutil.copytree(versions, server.settings.models_dir, dirs_exist_ok=True)
    client = server.client("admin")
    for v in ("v1", "v2"):
        assert client.post(f"/v1/models/{v}/register").status_code == 200
    assert client.post("/v1/models/v1/promote").status_code == 200
    return server, client


def promote_and_wait_for_rescoring(server, client: httpx.Client, timeout: float = 90) -> pd.DataFrame:
    assert client.post("/v1/models/v2/promote").json()["serving"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = server.store.references.rows("default", "v2")
        if (rows["split"] == RESCORED_SPLIT).any():
            return rows
        time.sleep(0.5)
    raise AssertionError("the new champion's reference was not re-scored in time")


def test_reference_grows_by_rescored_traffic_and_compares_like_with_like(running_server, sentiment_base, versions):
    server, client = start(running_server, sentiment_base, versions)
    before_traffic = same_distribution(WINDOW, seed=11)
    serve(client, before_traffic)
    assert not any(r["drifted"] for r in check(client).values())  # the window the re-scoring may use is clean
    held_out = server.store.references.rows("default", "v2")
    traffic = server.store.count_predictions()
    rows = promote_and_wait_for_rescoring(server, client)

    rescored = rows[rows["split"] == RESCORED_SPLIT]
    assert server.store.count_predictions() == traffic  # re-scoring is not traffic: nothing new is logged
    expected = set(before_traffic) - set(held_out["text"])
    assert len(rows) == len(held_out) + len(rescored)  # appended, the held-out rows kept
    assert sorted(rescored["text"]) == sorted(expected) and rescored["true_label"].isna().all()
    v2 = load_version(versions / "v2")  # the rows carry the new version's own outputs
    fresh = v2.predict(rescored["text"].tolist())
    assert rescored["label"].tolist() == fresh.labels
    np.testing.assert_allclose(rescored["confidence"].to_numpy(), fresh.confidence, atol=1e-4)
    np.testing.assert_allclose(np.stack(rescored["embedding"].to_list()), fresh.embeddings, atol=1e-4)

    serve(client, same_distribution(WINDOW, seed=12))  # served by v2, the same distribution
    results = check(client)
    sources = results["confidence_drift"]["details"]["reference_rows_by_source"]
    assert sources == {RESCORED_SPLIT: len(rescored), "val": int((held_out["split"] == "val").sum())}
    assert results["confidence_drift"]["details"]["model_version"] == "v2"
    assert OUTPUT_CHECKS & set(results) >= {"prediction_drift", "confidence_drift"}
    assert not [m for m, r in results.items() if r["drifted"]]
    assert client.get("/v1/alerts", params={"status": "open"}).json()["items"] == []

    serve(client, drifted(WINDOW, seed=13))
    results = check(client)
    assert {m for m, r in results.items() if r["drifted"]} & OUTPUT_CHECKS
    assert client.get("/v1/alerts", params={"status": "open"}).json()["items"]


def test_drift_present_before_the_promotion_is_not_rescored_into_the_reference(running_server, sentiment_base,
                                                                               versions):
    server, client = start(running_server, sentiment_base, versions)
    clean, shifted = same_distribution(WINDOW, seed=21), drifted(WINDOW, seed=22)
    serve(client, clean)
    assert not any(r["drifted"] for m, r in check(client).items() if m in INPUT_CHECKS)
    serve(client, shifted)
    assert any(r["drifted"] for m, r in check(client).items() if m in INPUT_CHECKS)  # flagged before promotion
    rows = promote_and_wait_for_rescoring(server, client)

    rescored = set(rows.loc[rows["split"] == RESCORED_SPLIT, "text"])
    assert rescored and rescored <= set(clean) and not rescored & set(shifted)

    serve(client, drifted(WINDOW, seed=23))  # the shift goes on under v2
    results = check(client)
    flagged = {m for m, r in results.items() if r["drifted"]} & OUTPUT_CHECKS
    assert flagged, {m: (r["value"], r["threshold"]) for m, r in results.items()}

    # Re-scoring the newest pre-promotion traffic regardless (all of it shifted) would have hidden it.
    store, settings = server.store, settings_for(server.store, server.settings, "default")
    ref = checks.reference_frames(store, settings, "default")
    current = checks.current_frame(store, settings, "default")
    held_out = ref.outputs[ref.outputs["split"] != RESCORED_SPLIT]
    absorbed, _ = reference_rows(load_version(versions / "v2"), pd.DataFrame({"text": shifted}), RESCORED_SPLIT)
    masked = drift.run_checks(ref.inputs, current, settings.drift, TINY_LABELS, version="v2",
                              output_reference=pd.concat([held_out, absorbed], ignore_index=True))
    assert not {r.metric for r in masked if r.drifted} & flagged


# -- which traffic may be re-scored, and the bounds of one re-scoring (library, real store and model) ------


def _traffic(n: int, start: str, prefix: str) -> pd.DataFrame:
    rng = np.random.default_rng(len(prefix))
    return pd.DataFrame({
        "id": [f"{prefix}{i}" for i in range(n)], "text": [f"{prefix} text {i}" for i in range(n)],
        "label": "neutral", "confidence": 0.5, "model_version": "v1",
        "ts": pd.Timestamp(start) + pd.to_timedelta(np.arange(n), unit="s"),
        "embedding": list(rng.standard_normal((n, 4), dtype=np.float32)),
    })


def _record_check(store, check_id: int, window: pd.DataFrame, drifted: set[str]) -> None:
    start, end = window["ts"].min().to_pydatetime(), window["ts"].max().to_pydatetime()
    store.checks.record([[check_id, "default", end, start, end, "v1", m, 0.1, 0.2, m in drifted, "{}", None]
                         for m in ("embedding_drift", "text_length_drift", "confidence_drift")])


def test_only_checked_clean_untrained_new_traffic_is_eligible(store_backend, tmp_path):
    from tuneloop.monitor import registry
    from tuneloop.monitor.rescore import eligible_traffic
    from tuneloop.retrain.versions import IDS_FILE

    early, clean, shifted = (_traffic(10, "2026-01-01 00:00", "early"), _traffic(30, "2026-01-01 01:00", "clean"),
                             _traffic(20, "2026-01-01 02:00", "shift"))
    path = tmp_path / "models" / "v2"
    path.mkdir(parents=True)
    (path / IDS_FILE).write_text("clean0\nclean1\nclean2\n")  # v2 was trained on three of the clean rows
    with store_backend() as store:
        store.append_predictions(pd.concat([early, clean, shifted], ignore_index=True))
        _record_check(store, 1, clean, drifted={"confidence_drift"})  # an output check does not count
        _record_check(store, 2, shifted.iloc[5:], drifted={"text_length_drift"})
        registry.register_version(store, "default", "v2", path)
        registry.load_reference(store, "default", "v2", pd.DataFrame({"text": ["held out", "clean text 4"],
                                                                      "split": "val"}))
        assert eligible_traffic(store, "default", {"version": "v2", "path": str(path)})[1] == 0  # not promoted
        version = registry.promote(store, "default", "v2", "ops")
        eligible, candidates, left_out = eligible_traffic(store, "default", version)
        assert candidates == 60 and left_out == {"trained_on": 3, "already_in_reference": 1,
                                                 "in_a_flagged_window": 15, "not_in_a_checked_window": 15,
                                                 "duplicate_text": 0}
        assert eligible["id"].tolist() == ["clean3", *(f"clean{i}" for i in range(5, 30))]  # in time order
        assert eligible_traffic(store, "default", version, limit=20)[1] == 20  # the newest 20 only


def test_appended_rows_keep_the_held_out_ones_and_drop_training_rows_first(tmp_path):
    from tuneloop.monitor import registry
    from tuneloop.monitor.storage import Store

    with Store(tmp_path / "t.duckdb") as store:
        registry.load_reference(store, "default", "v1", pd.DataFrame({
            "text": [f"t{i}" for i in range(40)], "split": ["train", "val"] * 20, "confidence": 0.9}))
        added = pd.DataFrame({"text": [f"r{i}" for i in range(20)], "split": RESCORED_SPLIT, "confidence": 0.5})
        assert registry.add_reference_rows(store, "default", "v1", added, max_rows=45) == 45
        rows = store.references.rows("default", "v1")
        assert drift.rows_by_source(rows) == {RESCORED_SPLIT: 20, "train": 5, "val": 20}
        assert rows["text"].tolist()[-20:] == added["text"].tolist()  # appended after the earlier rows


def test_a_rescoring_is_bounded_in_time_and_stops_when_the_version_changes(tmp_path, sentiment_version):
    from tuneloop.monitor import registry
    from tuneloop.monitor.rescore import rescore
    from tuneloop.monitor.serving import ModelServer
    from tuneloop.monitor.storage import Store

    texts = tiny.keyword_sentiment(40, seed=3)
    traffic = _traffic(40, "2026-01-01 00:00", "row").assign(text=texts["text"].to_numpy())
    server = ModelServer("default").start()
    try:
        server.swap("v1", sentiment_version)
        with Store(tmp_path / "t.duckdb") as store:
            store.append_predictions(traffic.drop_duplicates("text"))
            _record_check(store, 1, traffic, drifted=set())
            registry.register_version(store, "default", "v1", sentiment_version)
            held_out = pd.DataFrame({"text": ["a held-out row"], "split": "val"})
            registry.load_reference(store, "default", "v1", held_out)
            version = registry.promote(store, "default", "v1", "ops")
            late = rescore(store, server, "default", version, seconds=0)
            assert (late.rescored, late.complete) == (0, False) and late.candidates == len(set(texts["text"]))
            server.swap("v1b", sentiment_version)  # serving moved on before the re-scoring ran
            moved = rescore(store, server, "default", version)
            assert (moved.rescored, moved.complete) == (0, False)
            server.swap("v1", sentiment_version)
            assert store.references.count("default", "v1") == 1
            done = rescore(store, server, "default", version, chunk=7)
            assert done.complete and done.rescored == late.candidates == done.reference_rows - 1
            rows = store.references.rows("default", "v1")
            assert rows["text"].tolist()[1:] == traffic.drop_duplicates("text")["text"].tolist()
            again = rescore(store, server, "default", version)  # everything is in the reference now
            assert again.rescored == 0 and again.left_out["already_in_reference"] == done.rescored
    finally:
        server.stop()


def test_the_job_waits_for_the_grace_period_then_rescores_each_promotion_once(tmp_path, sentiment_version):
    from tuneloop.monitor import registry
    from tuneloop.monitor.config import load_settings
    from tuneloop.monitor.rescore import ReferenceRescorer
    from tuneloop.monitor.serving import Serving
    from tuneloop.monitor.storage import Store

    settings = load_settings(paths={"data_dir": str(tmp_path / "data")}, model={"threads": 1})
    traffic = _traffic(30, "2026-01-01 00:00", "row").assign(text=tiny.keyword_sentiment(30, seed=4)["text"].to_numpy())
    with Store(tmp_path / "t.duckdb") as store:
        store.append_predictions(traffic)
        _record_check(store, 1, traffic, drifted=set())
        registry.register_version(store, "default", "v1", sentiment_version)
        registry.load_reference(store, "default", "v1", pd.DataFrame({"text": ["held out"], "split": "val"}))
        registry.promote(store, "default", "v1", "ops")
        serving = Serving(store, settings)
        try:
            assert ReferenceRescorer(store, serving, grace=0).run("default") is None  # nothing served yet
            serving.server("default")
            assert ReferenceRescorer(store, serving, grace=3600).run("default") is None  # just promoted
            assert store.references.count("default", "v1") == 1
            job = ReferenceRescorer(store, serving, grace=0)
            job.run_all()
            assert [(r.version, r.rescored, r.complete) for r in job.results] == [("v1", 30, True)]
            assert job.run("default") is None and ReferenceRescorer(store, serving, grace=0).run("default") is None
            assert store.references.count("default", "v1") == 31  # once, also for a restarted job
        finally:
            serving.stop()
