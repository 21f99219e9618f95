"""Any supported encoder family as the base: real training steps, prediction, pooled embeddings, versions.

Each family is a tiny random checkpoint built from its own config and tokenizer class (no download);
what is not a supported encoder gets one line naming what was found and what is supported, in the
library, on the command line and over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_LABELS, start_server

from tuneloop.retrain.architectures import LORA_TARGETS, UnsupportedBase, inspect_base
from tuneloop.retrain.model import TextClassifier
from tuneloop.retrain.settings import ModelSettings
from tuneloop.retrain.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, keyword_sentiment, make_tiny_base
from tuneloop.retrain.trainer import train
from tuneloop.retrain.versions import load_version, write_version

WORDS = POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS
FAMILIES = ["bert", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "modernbert", "mpnet"]


def settings_for(base: Path, **kw) -> ModelSettings:  # type: ignore[no-untyped-def]
    return ModelSettings(**{"base": str(base), "epochs": 4, "learning_rate": 3e-3, "batch_size": 16,
                            "max_length": 32, "blend_tfidf": 0, "threads": 1, **kw})


@pytest.mark.parametrize("model_type", FAMILIES)
def test_each_family_trains_predicts_embeds_and_reloads(tmp_path, model_type) -> None:
    base = make_tiny_base(tmp_path / "base", WORDS, model_type=model_type)
    info = inspect_base(base)
    hidden = json.loads((base / "config.json").read_text())
    assert info.model_type == model_type and info.hidden_size == hidden.get("hidden_size", hidden.get("dim")) == 64

    result = train(keyword_sentiment(150), TINY_LABELS, settings_for(base), progress=False)
    clf = result.classifier
    # LoRA sits on exactly the family's attention projections, under its own module names
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in clf.encoder.named_parameters() if ".lora_A" in n}
    assert adapted == set(LORA_TARGETS[model_type])
    assert result.metrics["epochs_run"] >= 1 and all(h["train_loss"] is not None for h in result.history[1:])

    test = keyword_sentiment(60, seed=7)
    pred = clf.predict(test["text"].tolist())
    accuracy = float(np.mean(np.array(pred.labels) == test["label"].to_numpy()))
    assert accuracy >= 0.6, (model_type, accuracy)  # chance is 1/3: the keywords were learnt
    assert pred.embeddings.shape == (60, info.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(pred.embeddings, axis=1), 1.0, atol=1e-5)

    # without the warm-started head as a candidate the kept epoch is a trained one: a non-zero adapter,
    # which the version must carry exactly
    moved = train(keyword_sentiment(150), TINY_LABELS, settings_for(base, epochs=2, warm_start_head=False),
                  progress=False)
    assert moved.metrics["best_epoch"] >= 1
    lora_b = [p for n, p in moved.classifier.encoder.named_parameters() if ".lora_B" in n]
    assert lora_b and max(float(p.detach().abs().max()) for p in lora_b) > 1e-3
    before = moved.classifier.predict(test["text"].tolist())
    path = write_version(tmp_path / "models", "v1", moved.classifier, moved.metrics, moved.manifest)
    config = json.loads((path / "training_config.json").read_text())
    assert config["base_model_type"] == model_type
    assert config["lora"]["target_modules"] == sorted(LORA_TARGETS[model_type])
    again = load_version(path, threads=1).predict(test["text"].tolist())
    assert again.labels == before.labels
    np.testing.assert_allclose(again.probs, before.probs, atol=1e-4)
    np.testing.assert_allclose(again.embeddings, before.embeddings, atol=1e-4)


def test_sentence_transformers_pooling_is_read_from_the_checkpoint(tmp_path) -> None:
    base = make_tiny_base(tmp_path / "base", WORDS)
    assert inspect_base(base).pooling == "mean"  # no modules.json: mean pooling
    (base / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (base / "1_Pooling").mkdir()
    (base / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert inspect_base(base).pooling == "cls"
    clf = TextClassifier.from_base(base, TINY_LABELS, settings_for(base))
    texts = ["i love this movie", "the weather report"]
    enc = clf.tokenize(texts)
    first_token = clf.encoder(**enc).last_hidden_state[:, 0]
    np.testing.assert_allclose(clf.base_pooled(texts), first_token.detach().numpy(), atol=1e-5)


def _gpt2(directory: Path) -> Path:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(directory)
    return directory


def _unsupported(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Directories that are not supported encoders, with the words their error must name."""
    from transformers import T5Config

    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    (weights_only / "model.safetensors").write_bytes(b"\0")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "my-encoder", "architectures": ["MyModel"]}))
    T5Config(num_layers=1, d_model=32).save_pretrained(tmp_path / "t5")
    return {
        "no config": (weights_only, "no config.json (found files model.safetensors)"),
        "unknown": (unknown, "unsupported architecture (model_type my-encoder, MyModel)"),
        "decoder-only": (_gpt2(tmp_path / "gpt2"), "decoder-only model (model_type gpt2"),
        "encoder-decoder": (tmp_path / "t5", "encoder-decoder model (model_type t5"),
    }


def test_unsupported_bases_get_one_line_naming_what_was_found_and_what_is_supported(tmp_path) -> None:
    for name, (path, found) in _unsupported(tmp_path).items():
        with pytest.raises(UnsupportedBase) as e:
            TextClassifier.from_base(path, TINY_LABELS, ModelSettings(base=str(path)))
        message = str(e.value)
        assert "\n" not in message and str(path) in message and found in message, (name, message)
        assert "supported encoders:" in message and all(t in message for t in LORA_TARGETS), message
    with pytest.raises(FileNotFoundError, match="neither a directory nor an installed package"):
        TextClassifier.from_base(tmp_path / "missing", TINY_LABELS, ModelSettings())


def test_cli_train_on_a_decoder_only_base_prints_one_line(tmp_path) -> None:
    gpt2 = _gpt2(tmp_path / "gpt2")
    keyword_sentiment(30).to_csv(tmp_path / "data.csv", index=False)
    env = {**os.environ, "TUNELOOP_MODEL__BASE": str(gpt2), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "tuneloop.monitor.cli", "--data-dir", "d", "train", "data.csv",
                        "--labels", ",".join(TINY_LABELS)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "decoder-only model (model_type gpt2" in lines[0] and "supported encoders:" in lines[0]


def test_http_training_from_an_unsupported_base_is_refused_with_a_4xx(tmp_path) -> None:
    gpt2 = _gpt2(tmp_path / "gpt2")
    server = start_server(tmp_path / "server", model={"base": str(gpt2)}, retrain={"enabled": False})
    try:
        with server.client("admin") as api:
            data = keyword_sentiment(60).to_csv(index=False).encode()
            ds = api.post("/v1/datasets", params={"filename": "data.csv"}, content=data)
            assert ds.status_code == 201, ds.text
            r = api.post(f"/v1/datasets/{ds.json()['id']}/train", json={"project": "p", "create_project": True})
            assert r.status_code == 409, r.text
            detail = r.json()["detail"]
            assert detail.startswith("model.base: ") and "decoder-only model (model_type gpt2" in detail
            assert api.get("/v1/retrain/runs").json()["items"] == []  # refused before any run was recorded
    finally:
        server.close()


def test_device_setting_cpu_auto_and_an_absent_gpu(tmp_path) -> None:
    import torch
    from pydantic import ValidationError

    from tuneloop.retrain.device import resolve_device

    base = make_tiny_base(tmp_path / "base", WORDS)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    clf = TextClassifier.from_base(base, TINY_LABELS, settings_for(base, device="cpu"))
    assert clf.device.type == "cpu" and {p.device.type for p in clf.parameters()} == {"cpu"}
    with pytest.raises(ValidationError, match="device"):
        settings_for(base, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="model.device is cuda but torch sees no CUDA device"):
            TextClassifier.from_base(base, TINY_LABELS, settings_for(base, device="cuda"))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_training_and_serving_on_the_gpu_in_mixed_precision(tmp_path) -> None:
    base = make_tiny_base(tmp_path / "base", WORDS)
    result = train(keyword_sentiment(150), TINY_LABELS, settings_for(base, device="cuda"), progress=False)
    clf = result.classifier
    assert {p.device.type for p in clf.parameters()} == {"cuda"}
    test = keyword_sentiment(60, seed=7)
    pred = clf.predict(test["text"].tolist())
    assert pred.probs.dtype == np.float32 and np.mean(np.array(pred.labels) == test["label"].to_numpy()) >= 0.6
    path = write_version(tmp_path / "models", "v1", clf, result.metrics, result.manifest)
    on_cpu = load_version(path, device="cpu").predict(test["text"].tolist())
    assert np.mean(np.array(on_cpu.labels) == np.array(pred.labels)) >= 0.95  # bf16/fp16 vs fp32 rounding
