"""Feedback in the store: ids repeated within one request, and pending rows that wait for a prediction."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tuneloop.monitor.operations import run_retention
from tuneloop.monitor.storage import Store, utcnow


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "t.duckdb") as s:
        yield s


def prediction(pid: str) -> dict:
    return {"id": pid, "text": f"text {pid}", "label": "neutral"}


def test_an_id_repeated_within_one_request_is_stored_once_and_counted_as_a_duplicate(store):
    store.append_predictions([prediction("p1")])
    r = store.append_feedback([
        {"id": "f1", "prediction_id": "p1", "label": "positive"},
        {"id": "f1", "prediction_id": "p1", "label": "negative"},   # the same id again: the first row wins
        {"id": "f2", "prediction_id": "ghost", "label": "negative"},
        {"id": "f2", "prediction_id": "ghost", "label": "positive"},
    ])
    assert (r.accepted, r.duplicates, r.pending, r.unknown_ids) == (1, 2, 1, ["ghost"])
    assert store.query("SELECT id, label FROM feedback").values.tolist() == [["f1", "positive"]]
    assert store.query("SELECT id, label FROM pending_feedback").values.tolist() == [["f2", "negative"]]


def test_a_prediction_resolves_only_its_own_pending_feedback(store):
    store.append_feedback([{"id": f"f{i}", "prediction_id": f"later{i}", "label": "positive"} for i in range(3)])
    store.append_predictions([prediction("later1"), prediction("unrelated")])
    assert sorted(store.query("SELECT prediction_id FROM pending_feedback")["prediction_id"]) == ["later0", "later2"]
    assert store.query("SELECT id FROM feedback")["id"].tolist() == ["f1"]
    store.append_predictions([prediction("later0"), prediction("later2")])
    assert store.table_counts()["pending_feedback"] == 0 and store.table_counts()["feedback"] == 3


def test_pending_feedback_expires_after_its_ttl_long_before_raw_retention(store):
    now = utcnow()
    store.append_feedback([
        {"id": "old", "prediction_id": "never", "label": "positive", "ts": now - timedelta(hours=200)},
        {"id": "new", "prediction_id": "soon", "label": "positive", "ts": now - timedelta(hours=1)},
    ], token_id="t1")
    result = run_retention(store, raw_days=90, now=now, pending_hours=168)
    assert result.pending_feedback == 1
    assert store.query("SELECT id FROM pending_feedback")["id"].tolist() == ["new"]
    assert store.query("SELECT id FROM feedback_writers")["id"].tolist() == ["new"]  # no orphan left
