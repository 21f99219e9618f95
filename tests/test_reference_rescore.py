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
    rows = promote_and_wait_for_rescoring(server, client)

    rescored = rows[rows["split"] == RESCORED_SPLIT]
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
