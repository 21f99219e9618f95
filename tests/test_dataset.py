"""Snapshot assembly: random-slice holdout (fresh per run), replay buffer, golden set, no leaks, files on disk."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pandas as pd
import pytest

from tuneloop.monitor.config import RetrainSettings
from tuneloop.retrain.dataset import allocate, assemble_snapshot, read_snapshot, write_snapshot
from tuneloop.retrain.evaluation_slice import in_slice

LABELS = ["negative", "neutral", "positive"]


def frame(n: int, prefix: str, start: datetime | None = None, mix=(0.5, 0.3, 0.2)) -> pd.DataFrame:
    start = start or datetime(2025, 1, 1)
    counts = [round(n * f) for f in mix]
    labels = [lab for lab, c in zip(LABELS, counts, strict=True) for _ in range(c)]
    return pd.DataFrame({
        "id": [f"{prefix}{i}" for i in range(len(labels))],
        "text": [f"{prefix} text number {i}" for i in range(len(labels))],
        "label": labels,
        "ts": [start + timedelta(minutes=i) for i in range(len(labels))],
    })


S = RetrainSettings(holdout_fraction=0.25, replay_ratio=1.0, replay_max=2000)


def test_holdout_is_exactly_the_random_slice_never_a_queue_pick():
    new = frame(400, "n")
    slice_ids = set(new["id"][in_slice(new["id"], S.holdout_fraction)])
    snap = assemble_snapshot(new, None, S)
    assert set(snap.holdout["id"]) == slice_ids  # queue picks (rows outside the slice) are never held out
    assert 0.15 < len(slice_ids) / 400 < 0.35  # the slice is about holdout_fraction of the rows
    assert not set(snap.holdout["id"]) & set(snap.train["id"])
    assert snap.n_new == 400 and snap.n_new_train == 400 - len(slice_ids) and snap.n_replay == 0


def test_rows_an_earlier_decision_tested_on_are_never_a_holdout_again():
    first = assemble_snapshot(frame(300, "n"), None, S)
    used = set(first.holdout["id"])
    later = pd.concat([frame(300, "n"), frame(300, "m", start=datetime(2025, 2, 1))])  # a rejection, more labels
    second = assemble_snapshot(later, None, S, used_holdout=used)
    assert len(second.holdout) > 30 and not set(second.holdout["id"]) & used
    assert set(second.holdout["id"]) <= set(frame(300, "m")["id"])
    assert used <= set(second.train["id"])  # the used rows still teach the next challenger


def test_replay_is_stratified_ratio_and_capped():
    new, older = frame(200, "n"), frame(1000, "o", mix=(0.2, 0.2, 0.6))
    snap = assemble_snapshot(new, older, S)
    replay = snap.train[snap.train["origin"] == "replay"]
    assert len(replay) == snap.n_new_train == 160  # replay_ratio x new training rows (200 minus 40 in the slice)
    assert replay["label"].value_counts().to_dict() == {"positive": 96, "negative": 32, "neutral": 32}
    assert replay["id"].str.startswith("o").all()
    capped = assemble_snapshot(new, older, S.model_copy(update={"replay_max": 40, "replay_ratio": 2.0}))
    assert capped.n_replay == 40
    none = assemble_snapshot(new, older, S.model_copy(update={"replay_ratio": 0.0}))
    assert none.n_replay == 0 and none.n_replay_available == 1000


def test_replay_is_seeded():
    new, older = frame(100, "n"), frame(500, "o")
    a = assemble_snapshot(new, older, S, seed=1).train
    b = assemble_snapshot(new, older, S, seed=1).train
    c = assemble_snapshot(new, older, S, seed=2).train
    assert a["id"].tolist() == b["id"].tolist()
    assert set(a["id"]) != set(c["id"])


def test_newer_label_of_a_prediction_beats_its_older_one():
    new = frame(40, "p")
    older = new.iloc[:10].assign(label="positive")  # the same predictions, labelled earlier
    snap = assemble_snapshot(new, older, S)
    assert snap.n_replay_available == 0
    assert not (snap.train["origin"] == "replay").any()


def test_evaluation_texts_never_leak_into_training():
    new = frame(80, "n")
    dup = new.iloc[-1:].assign(id="dup", ts=datetime(2024, 1, 1))  # an older retweet of a holdout text
    older = pd.concat([frame(50, "o"), new.iloc[-1:].assign(id="old-dup")])
    golden = pd.DataFrame({"text": ["o text number 3", "n text number 0"], "label": ["negative", "negative"]})
    snap = assemble_snapshot(pd.concat([new, dup]), older, S, golden=golden)
    trained = set(snap.train["text"].str.lower())
    assert not trained & set(snap.holdout["text"].str.lower())
    assert not trained & set(golden["text"])
    assert len(snap.golden) == 2


def test_golden_path_is_read_from_settings(tmp_path):
    path = tmp_path / "golden.csv"
    pd.DataFrame({"text": ["good", "bad", "meh"], "label": ["positive", "negative", "neutral"]}).to_csv(path)
    snap = assemble_snapshot(frame(20, "n"), None, S.model_copy(update={"golden_path": str(path)}))
    assert snap.golden["label"].tolist() == ["positive", "negative", "neutral"]
    with pytest.raises(FileNotFoundError):
        assemble_snapshot(frame(20, "n"), None, S.model_copy(update={"golden_path": str(tmp_path / "none.csv")}))


def test_allocate_is_exact_and_bounded():
    assert allocate(10, {"a": 5, "b": 3, "c": 2}) == {"a": 5, "b": 3, "c": 2}
    assert sum(allocate(7, {"a": 5, "b": 3, "c": 2}).values()) == 7
    assert allocate(100, {"a": 1, "b": 2}) == {"a": 1, "b": 2}
    assert allocate(0, {"a": 1}) == {"a": 0}


def test_write_read_roundtrip_with_manifest(tmp_path):
    new, older = frame(120, "n"), frame(300, "o")
    golden = pd.DataFrame({"text": ["g1", "g2"], "label": ["positive", "negative"]})
    snap = assemble_snapshot(new, older, S, seed=3, golden=golden, meta={"project": "default"})
    manifest = write_snapshot(snap, tmp_path / "snap")
    assert {p.name for p in (tmp_path / "snap").iterdir()} == {
        "train.parquet", "holdout.parquet", "golden.parquet", "manifest.json"}
    on_disk = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest, default=str))
    assert on_disk["parts"]["train"]["origin_counts"] == {"new": snap.n_new_train, "replay": snap.n_replay}
    assert on_disk["parts"]["holdout"]["label_counts"] == snap.holdout["label"].value_counts().sort_index().to_dict()
    assert on_disk["parts"]["holdout"]["ids"] == snap.holdout["id"].tolist()
    assert len(on_disk["sha256"]) == 64

    back = read_snapshot(tmp_path / "snap")
    pd.testing.assert_frame_equal(back.train.drop(columns="ts"), snap.train.drop(columns="ts"), check_dtype=False)
    assert back.holdout["id"].tolist() == snap.holdout["id"].tolist()
    assert back.meta == {"seed": 3, "project": "default"}
    assert write_snapshot(back, tmp_path / "again")["sha256"] == manifest["sha256"]


def test_read_detects_a_changed_file(tmp_path):
    write_snapshot(assemble_snapshot(frame(40, "n"), None, S), tmp_path / "s")
    df = pd.read_parquet(tmp_path / "s" / "train.parquet")
    df.loc[0, "label"] = "positive" if df.loc[0, "label"] != "positive" else "negative"
    df.to_parquet(tmp_path / "s" / "train.parquet", index=False)
    with pytest.raises(ValueError, match="does not match"):
        read_snapshot(tmp_path / "s")
