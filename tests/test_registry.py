"""The model registry: transitions, promotion history, rollback, reference rows (real DuckDB files)."""

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tuneloop.monitor import registry
from tuneloop.monitor.config import load_settings
from tuneloop.monitor.storage import MIGRATIONS, Store
from tuneloop.retrain.build import train_version
from tuneloop.retrain.reference import REFERENCE_FILE

P = "default"


@pytest.fixture
def store(store_backend):
    with store_backend() as s:
        yield s


def _register(store, tmp_path, *versions, project=P):
    for v in versions:
        registry.register_version(store, project, v, tmp_path / "models" / v, metrics={"val_accuracy": 0.5})


def _statuses(store, project=P):
    return {r["version"]: r["status"] for r in registry.list_versions(store, project)}


def test_promotions_table_comes_from_a_numbered_migration(store):
    assert any("CREATE TABLE promotions" in sql for _, sql in MIGRATIONS)
    assert store.query("SELECT count(*) AS n FROM promotions")["n"][0] == 0


def test_register_list_get(store, tmp_path):
    row = registry.register_version(store, P, "v1", tmp_path / "v1", metrics={"val_accuracy": 0.8}, parent=None)
    assert row["status"] == "challenger" and row["metrics"] == {"val_accuracy": 0.8}
    assert registry.register_version(store, P, "v1", tmp_path / "v1") == row  # same path again: no-op
    with pytest.raises(registry.VersionConflict, match="already registered"):
        registry.register_version(store, P, "v1", tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="then promote"):
        registry.register_version(store, P, "v2", tmp_path / "v2", status="champion")
    with pytest.raises(ValueError, match="invalid version name"):
        registry.register_version(store, P, "../x", tmp_path / "x")
    assert [r["version"] for r in registry.list_versions(store, P)] == ["v1"]
    assert registry.list_versions(store, "other") == []
    assert registry.get_version(store, P, "v1")["path"] == str((tmp_path / "v1").resolve())
    with pytest.raises(LookupError, match="no version 'v9'"):
        registry.get_version(store, P, "v9")
    assert registry.champion(store, P) is None


def test_promote_keeps_one_champion_and_records_history(store, tmp_path):
    _register(store, tmp_path, "v1", "v2", "v3")
    first = registry.promote(store, P, "v1", "alice", "first model")
    assert first["status"] == "champion" and first["previous"] is None and first["promoted_at"] is not None
    second = registry.promote(store, P, "v2", "bob", "better")
    assert second["previous"] == "v1"
    assert _statuses(store) == {"v1": "archived", "v2": "champion", "v3": "challenger"}
    again = registry.promote(store, P, "v2", "bob")
    assert again["changed"] is False  # already champion: nothing written
    history = registry.promotions(store, P)
    assert [(h["version"], h["actor"], h["previous"], h["kind"]) for h in history] == [
        ("v2", "bob", "v1", "promote"), ("v1", "alice", None, "promote")]
    assert [h["version"] for h in registry.promotions(store, P, version="v1")] == ["v2", "v1"]
    with pytest.raises(LookupError, match="no version 'nope'"):
        registry.promote(store, P, "nope", "alice")
    assert registry.champion(store, P)["version"] == "v2"


def test_projects_are_independent(store, tmp_path):
    _register(store, tmp_path, "v1", project="a")
    _register(store, tmp_path, "v1", project="b")
    registry.promote(store, "a", "v1", "x")
    assert registry.champion(store, "b") is None
    assert _statuses(store, "b") == {"v1": "challenger"}


def test_rollback_walks_back_through_earlier_champions(store, tmp_path):
    _register(store, tmp_path, "v1", "v2", "v3")
    with pytest.raises(LookupError, match="there is no champion"):
        registry.rollback(store, P, "ops")
    for v in ("v1", "v2", "v3"):
        registry.promote(store, P, v, "ops")
    assert registry.rollback_target(store, P) == "v2"
    back = registry.rollback(store, P, "ops")
    assert back["version"] == "v2" and back["previous"] == "v3"
    assert _statuses(store) == {"v1": "archived", "v2": "champion", "v3": "archived"}
    assert registry.promotions(store, P)[0]["kind"] == "rollback"
    assert registry.promotions(store, P)[0]["reason"] == "rollback from v3"
    assert registry.rollback(store, P, "ops")["version"] == "v1"  # keeps walking back, no ping-pong
    with pytest.raises(registry.NothingToRollBack, match="no earlier champion"):
        registry.rollback(store, P, "ops")
    assert registry.champion(store, P)["version"] == "v1"


def test_rollback_undoes_a_manual_repromotion_and_skips_rejected(store, tmp_path):
    _register(store, tmp_path, "v1", "v2", "v3")
    registry.promote(store, P, "v1", "ops")
    registry.promote(store, P, "v2", "ops")
    registry.promote(store, P, "v1", "ops")  # back to v1 by hand
    assert registry.rollback(store, P, "ops")["version"] == "v2"  # undo that promotion
    registry.promote(store, P, "v3", "ops")
    registry.reject(store, P, "v2", ["found broken later"])
    assert registry.rollback(store, P, "ops")["version"] == "v1"  # v2 is rejected: skipped


def test_rejected_versions_need_force(store, tmp_path):
    _register(store, tmp_path, "v1", "v2")
    registry.promote(store, P, "v1", "ops")
    rejected = registry.reject(store, P, "v2", ["holdout accuracy 0.61 < champion 0.70 + margin 0.02"])
    assert rejected["status"] == "rejected" and "holdout accuracy" in rejected["reasons"][0]
    with pytest.raises(registry.PromotionRefused, match="holdout accuracy 0.61.*force"):
        registry.promote(store, P, "v2", "ops")
    assert registry.champion(store, P)["version"] == "v1"
    forced = registry.promote(store, P, "v2", "ops", "override", force=True)
    assert forced["status"] == "champion" and forced["previous"] == "v1"
    with pytest.raises(registry.PromotionRefused, match="is the champion"):
        registry.reject(store, P, "v2", "no")


def test_load_reference_replaces_rows_and_feeds_drift_reference(store, tmp_path):
    from tuneloop.monitor.checks import reference_frame

    _register(store, tmp_path, "v1")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "text": [f"text {i}" for i in range(30)],
        "label": ["positive", "negative", "neutral"] * 10,
        "true_label": ["positive"] * 30,
        "confidence": rng.random(30),
        "probs": [{"negative": 0.2, "neutral": 0.3, "positive": 0.5}] * 30,
        "embedding": list(rng.standard_normal((30, 8), dtype=np.float32)),
        "split": ["train"] * 25 + ["val"] * 5,
    })
    assert registry.load_reference(store, P, "v1", frame) == 30
    assert registry.load_reference(store, P, "v1", frame.iloc[:20]) == 20  # replaced, not appended
    rows = store.query("SELECT * FROM reference_rows WHERE reference = 'v1' ORDER BY text")
    assert len(rows) == 20 and set(rows["split"]) == {"train"}
    assert json.loads(rows["probs"][0]) == {"negative": 0.2, "neutral": 0.3, "positive": 0.5}
    assert len(rows["embedding"][0]) == 8
    registry.promote(store, P, "v1", "ops")
    settings = load_settings(paths={"data_dir": str(tmp_path)})
    name, ref = reference_frame(store, settings, P)
    assert name == "v1" and len(ref) == 20


# -- a real (tiny) training run: the version dir carries reference.parquet, register_dir loads it ----------


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory):
    from tuneloop.retrain.tiny import make_tiny_base

    root = tmp_path_factory.mktemp("registry")
    base = make_tiny_base(root / "base")
    return load_settings(paths={"data_dir": str(root / "data")},
                         model={"base": str(base), "epochs": 1, "threads": 1})


def _labelled(n, seed=0):
    words = {"negative": ["terrible", "awful", "hate"], "neutral": ["fine", "okay", "day"],
             "positive": ["great", "love", "excellent"]}
    rng = random.Random(seed)
    labels = [rng.choice(sorted(words)) for _ in range(n)]
    return pd.DataFrame({"text": [f"the {rng.choice(words[y])} film {i}" for i, y in enumerate(labels)],
                         "label": labels})


def test_train_version_writes_reference_and_register_dir_loads_it(tiny_settings):
    s = tiny_settings
    data = _labelled(80)
    trained = train_version(s.models_dir, s.model, data, ["negative", "neutral", "positive"])
    assert trained.version == "v1" and (trained.path / REFERENCE_FILE).is_file()
    ref = pd.read_parquet(trained.path / REFERENCE_FILE)
    assert len(ref) == 80 and set(ref["split"]) == {"train", "val"}
    dim = json.loads((Path(s.model.base) / "config.json").read_text())["hidden_size"]
    assert sorted(ref["text"]) == sorted(data["text"]) and len(ref["embedding"][0]) == dim
    child = train_version(s.models_dir, s.model, _labelled(40, seed=1), from_version="v1")
    assert child.version == "v2" and child.parent == "v1"
    with Store(s.db_path) as store:
        row = registry.register_dir(store, P, s.models_dir, "v1")
        assert row["reference_rows"] == 80 and row["metrics"]["n_train"] == trained.metrics["n_train"]
        assert registry.register_dir(store, P, s.models_dir, "v2")["parent"] == "v1"
        with pytest.raises(FileNotFoundError, match="no complete model version 'v7'"):
            registry.register_dir(store, P, s.models_dir, "v7")
        counts = store.query("SELECT reference, count(*) AS n FROM reference_rows GROUP BY ALL ORDER BY 1")
        assert counts.to_dict("list") == {"reference": ["v1", "v2"], "n": [80, 40]}
