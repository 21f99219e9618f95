"""Version directories: round trip, atomic writes (also under a crash), names, listing, clean-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tuneloop.retrain import versions
from tuneloop.retrain.tiny import keyword_sentiment
from tuneloop.retrain.versions import (
    data_manifest,
    list_versions,
    load_version,
    new_version_name,
    read_version_info,
    remove_stale_temp,
    validate_version_name,
    write_version,
)

TEXTS = ["i love it", "awful weather report", "the team meeting"]


def test_round_trip_gives_the_same_predictions_and_records_its_origin(tmp_path, sentiment_trained):
    r = sentiment_trained
    path = write_version(tmp_path, "v7", r.classifier, r.metrics, r.manifest, parent="v6", ids=["a", "b"])
    assert path == tmp_path / "v7" and list_versions(tmp_path) == ["v7"]
    assert {p.name for p in path.iterdir()} >= {"adapter", "head.safetensors", "labels.json", "COMPLETE", "ids.txt",
                                                "training_config.json", "metrics.json", "manifest.json"}
    loaded = load_version(path)
    assert loaded.labels == r.classifier.labels and loaded.base == r.classifier.base
    a, b = r.classifier.predict(TEXTS), loaded.predict(TEXTS)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    info = read_version_info(path)
    cfg = info["training_config"]
    assert cfg["parent"] == "v6" and cfg["base"] == r.classifier.base and cfg["labels"] == r.classifier.labels
    assert cfg["settings"]["lora_r"] == r.classifier.settings.lora_r
    assert info["metrics"]["val_accuracy"] == pytest.approx(r.metrics["val_accuracy"])
    assert info["manifest"]["n_rows"] == 240 and info["manifest"]["n_ids"] == 2
    assert (path / "ids.txt").read_text() == "a\nb\n"
    with pytest.raises(FileExistsError):
        write_version(tmp_path, "v7", r.classifier, r.metrics, r.manifest)


def test_manifest_hash_ignores_row_order_but_not_content():
    df = keyword_sentiment(30)
    m = data_manifest(df)
    assert m["n_rows"] == 30 and m["label_counts"] == {"negative": 10, "neutral": 10, "positive": 10}
    assert data_manifest(df.sample(frac=1, random_state=0))["sha256"] == m["sha256"]
    changed = df.copy()
    changed.loc[0, "label"] = "positive" if df.loc[0, "label"] != "positive" else "negative"
    assert data_manifest(changed)["sha256"] != m["sha256"]


def test_failure_while_writing_leaves_nothing_visible(tmp_path, sentiment_trained, monkeypatch):
    r = sentiment_trained
    real = versions._write_json

    def failing(path, obj):  # the disk fills up while writing metrics.json
        if path.name == "metrics.json":
            raise OSError(28, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(versions, "_write_json", failing)
    with pytest.raises(OSError, match="No space"):
        write_version(tmp_path, "v1", r.classifier, r.metrics, r.manifest)
    assert list(tmp_path.iterdir()) == [] and list_versions(tmp_path) == []
    monkeypatch.setattr(versions, "_write_json", real)
    write_version(tmp_path, "v1", r.classifier, r.metrics, r.manifest)
    assert list_versions(tmp_path) == ["v1"]


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tuneloop.retrain import versions
    from tuneloop.retrain.versions import load_version, write_version

    clf = load_version(sys.argv[1])
    real = versions._write_json
    def slow(path, obj):
        real(path, obj)
        if path.name == "metrics.json":  # half-way through: adapter, head and config are on disk
            print("writing", flush=True)
            time.sleep(60)
    versions._write_json = slow
    write_version(sys.argv[2], "v2", clf, {}, {})
""")


def test_killed_writer_leaves_only_a_temp_dir_that_listing_ignores(tmp_path, sentiment_version):
    models = tmp_path / "models"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(sentiment_version), str(models)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()
        proc.wait(30)
    (leftover,) = list(models.iterdir())
    assert leftover.name.startswith(".tmp-v2-") and (leftover / "adapter").is_dir()
    assert list_versions(models) == [] and not (models / "v2").exists()
    assert new_version_name(models) == "v3"  # the interrupted write's name is not reused while its temp dir lives
    assert remove_stale_temp(models, older_than_seconds=3600) == []
    assert remove_stale_temp(models) == [leftover.name] and list(models.iterdir()) == []


@pytest.mark.parametrize("bad", ["", "../v1", "a/b", ".tmp-v1", ".hidden", "-v1", "v1 ", "v1\n", "x" * 65, "v1/..",
                                 "é", None])
def test_bad_version_names_are_rejected(bad, tmp_path, sentiment_trained):
    with pytest.raises(ValueError, match="invalid version name"):
        validate_version_name(bad)
    r = sentiment_trained
    with pytest.raises(ValueError):
        write_version(tmp_path, bad, r.classifier, r.metrics, r.manifest)
    assert list(tmp_path.iterdir()) == []


def test_good_names_listing_order_and_next_name(tmp_path, sentiment_version):
    for good in ["v1", "V2", "2024-05-01_a", "x" * 64, "a.b"]:
        assert validate_version_name(good) == good
    assert new_version_name(tmp_path / "missing") == "v1" and list_versions(tmp_path / "missing") == []
    for name in ["v10", "v2", "v9"]:
        (tmp_path / name).symlink_to(sentiment_version, target_is_directory=True)
    (tmp_path / "v11").mkdir()  # an unfinished directory someone left behind
    (tmp_path / "v11" / "labels.json").write_text(json.dumps({"labels": ["a", "b"]}))
    assert list_versions(tmp_path) == ["v2", "v9", "v10"]
    assert new_version_name(tmp_path) == "v12"
    with pytest.raises(FileNotFoundError, match="not a complete model version"):
        load_version(tmp_path / "v11")
