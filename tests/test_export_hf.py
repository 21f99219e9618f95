"""``tuneloop models export V --format hf DEST``: a standard directory that transformers.pipeline loads.

Versions of a tiny real classifier are served by a real server on loopback; the export, loaded by
``transformers.pipeline`` without custom code, gives the labels ``/v1/predict`` answers when the
version serves the encoder alone, and the command says so when the version serves a TF-IDF blend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_LABELS, start_server

from tuneloop.retrain.export import ExportError, export_hf
from tuneloop.retrain.settings import ModelSettings
from tuneloop.retrain.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, keyword_sentiment, make_tiny_base
from tuneloop.retrain.trainer import train
from tuneloop.retrain.versions import write_version


def _settings(base, blend: float) -> ModelSettings:  # type: ignore[no-untyped-def]
    return ModelSettings(base=str(base), epochs=4, learning_rate=3e-3, batch_size=16, max_length=32, threads=1,
                         blend_tfidf=blend, blend_on_validation=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory, sentiment_base):  # type: ignore[no-untyped-def]
    """A server whose champion v1 serves the encoder alone; v2 (registered) blends TF-IDF in at 0.5."""
    srv = start_server(tmp_path_factory.mktemp("export"), model={"base": str(sentiment_base), "threads": 1},
                       retrain={"enabled": False})
    try:
        with srv.client("admin") as api:
            for version, blend in (("v1", 0.0), ("v2", 0.5)):
                r = train(keyword_sentiment(150), TINY_LABELS, _settings(sentiment_base, blend), progress=False)
                assert r.metrics["blend_tfidf"] == blend
                write_version(srv.settings.models_dir, version, r.classifier, r.metrics, r.manifest)
                assert api.post(f"/v1/models/{version}/register").status_code in (200, 201)
            assert api.post("/v1/models/v1/promote", json={}).status_code == 200
        yield srv
    finally:
        srv.close()


def tuneloop(server, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tuneloop.monitor.cli", "--config", str(server.config_path), *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_exported_version_loads_in_a_pipeline_and_agrees_with_predict_on_200_texts(server, tmp_path) -> None:
    from transformers import pipeline

    dest = tmp_path / "hf"
    r = tuneloop(server, "models", "export", "v1", "--format", "hf", str(dest))
    assert r.returncode == 0, r.stderr
    assert "the export gives the labels and probabilities /v1/predict serves" in r.stdout
    config = json.loads((dest / "config.json").read_text())
    assert config["id2label"] == {str(i): label for i, label in enumerate(TINY_LABELS)}
    assert config["architectures"] == ["BertForSequenceClassification"] and "auto_map" not in config

    texts = keyword_sentiment(200, seed=11)["text"].tolist()
    served = []
    with server.client("ingest") as api:
        for start in range(0, len(texts), 50):
            answer = api.post("/v1/predict", json={"texts": texts[start : start + 50]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == "v1"
            served += answer.json()["predictions"]
    exported = pipeline("text-classification", model=str(dest), top_k=None)(texts)
    assert [max(o, key=lambda x: x["score"])["label"] for o in exported] == [p["label"] for p in served]
    mine = np.array([[{x["label"]: x["score"] for x in o}[lab] for lab in TINY_LABELS] for o in exported])
    theirs = np.array([[p["probs"][lab] for lab in TINY_LABELS] for p in served])
    np.testing.assert_allclose(mine, theirs, atol=1e-4)
    assert len(set(p["label"] for p in served)) == 3  # a model that separates the classes, not a constant


def test_a_blended_version_is_exported_with_a_note_that_predict_may_differ(server, tmp_path) -> None:
    r = tuneloop(server, "models", "export", "v2", str(tmp_path / "hf"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["blend_tfidf"] == 0.5 and out["label_agreement"] == 1.0
    assert "serves a blend (0.5 TF-IDF + LR, 0.5 fine-tuned encoder)" in out["note"]
    assert "can differ from /v1/predict" in out["note"]


def test_export_refusals_are_one_line(server, tmp_path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    for args, words in ((["v9", str(tmp_path / "a")], "no complete version v9"),
                        (["v1", str(tmp_path / "taken")], "exists and is not empty"),
                        (["v1", str(tmp_path / "b"), "--format", "onnx"], "the only format is hf")):
        r = tuneloop(server, "models", "export", *args)
        assert r.returncode == 1 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_base_without_a_matching_standard_head_is_refused(tmp_path) -> None:
    base = make_tiny_base(tmp_path / "base", POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS, model_type="mpnet")
    settings = _settings(base, 0.0).model_copy(update={"epochs": 1})
    r = train(keyword_sentiment(60), TINY_LABELS, settings, progress=False)
    version = write_version(tmp_path / "models", "v1", r.classifier, r.metrics, r.manifest)
    with pytest.raises(ExportError, match="a mpnet base with mean pooling has no standard"):
        export_hf(version, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
