"""Repository behaviour of the storage layer (what the services' tests do not reach), on both backends:
a real DuckDB file and a real PostgreSQL database (tests/postgres_server.py)."""

from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tuneloop.monitor.storage import (
    FeedbackNotFound,
    ProjectExistsError,
    RetractRefused,
    Store,
    StoreError,
    import_export,
    is_missing,
    records,
    utcnow,
)


@pytest.fixture
def store(store_backend):
    with store_backend() as s:
        yield s


def test_is_missing_covers_every_null_pandas_returns_and_nothing_else():
    for null in (None, float("nan"), np.float64("nan"), pd.NaT, pd.NA):
        assert is_missing(null), null
    for value in (0, 0.0, "", "nan", [], np.zeros(3), datetime(2025, 1, 1), False):
        assert not is_missing(value), value


def test_records_turn_nulls_into_none_and_parse_the_named_json_columns(store):
    store.alerts.open("p", "embedding_drift", "warning", "m", {"value": 0.5})
    df = store.query("SELECT *, NULL::FLOAT8 AS nothing FROM alerts")
    [row] = records(df, ("details",))
    assert row["details"] == {"value": 0.5}
    assert row["closed_at"] is None and row["acked_by"] is None and row["nothing"] is None
    assert isinstance(row["ts"], datetime)


def test_one_open_alert_per_kind_and_counts_by_kind(store):
    first = store.alerts.open("p", "embedding_drift", "warning", "drift", {"value": 1.0})
    store.alerts.open("p", "labelled_accuracy", "critical", "accuracy", {})
    store.alerts.open("q", "embedding_drift", "warning", "other project", {})
    assert store.alerts.open_id("p", "embedding_drift") == first
    assert store.alerts.count_open("p") == 2
    assert store.alerts.count_open("p", ["labelled_accuracy"]) == 1
    store.alerts.close(first)
    assert store.alerts.open_id("p", "embedding_drift") is None
    assert store.alerts.count_open("p", ["embedding_drift"]) == 0
    assert sorted(store.alerts.open_by_severity()) == [("p", "critical", 1), ("q", "warning", 1)]
    store.alerts.acknowledge(first, "ann")
    store.alerts.acknowledge(first, "someone-else")  # the first acknowledgement stays
    assert store.alerts.get(first)["acked_by"] == "ann"
    assert store.alerts.get(10**9) is None


def test_recent_checks_filter_by_metric_and_time_and_hide_the_report_path(store):
    check_id = store.checks.next_id()
    t0 = datetime(2025, 3, 1, 12)
    store.checks.record([
        [check_id, "p", t0, None, None, "v1", "embedding_drift", 0.4, 0.3, True, '{"n": 5}', "p/check-1.html"],
        [check_id, "p", t0, None, None, "v1", "prediction_drift", float("nan"), 0.3, False, None, None],
        [check_id, "p", t0 - timedelta(days=2), None, None, "v1", "embedding_drift", 0.1, 0.3, False, None, None],
    ])
    items = store.checks.recent("p", limit=10, since=t0 - timedelta(hours=1))
    assert [i["metric"] for i in items] == ["embedding_drift", "prediction_drift"]
    drift, pred = items
    assert drift["details"] == {"n": 5} and drift["has_report"] and "report_path" not in drift
    assert pred["details"] == {} and not pred["has_report"] and pred["value"] is None
    assert len(store.checks.recent("p", limit=10, metric="embedding_drift")) == 2
    assert store.checks.report_path(check_id) == "p/check-1.html"
    assert store.checks.report_path(check_id + 1) is None
    latest = store.checks.latest_per_metric("p")
    assert latest.set_index("metric")["drifted"].to_dict() == {"embedding_drift": True, "prediction_drift": False}


def test_feedback_retraction_is_allowed_to_its_token_or_to_anyone_when_asked(store):
    store.append_predictions([{"id": "a", "text": "x", "label": "pos"}], "p")
    store.append_feedback([{"id": "f1", "prediction_id": "a", "label": "neg"}], "p", token_id="tok-1")
    store.append_feedback([{"id": "f2", "prediction_id": "unseen", "label": "neg"}], "p", token_id="tok-1")
    with pytest.raises(RetractRefused) as refused:
        store.feedback.retract("p", "f1", "tok-2")
    assert refused.value.annotator is None
    with pytest.raises(RetractRefused):
        store.feedback.retract("p", "f1", None)
    store.feedback.retract("p", "f1", "tok-1")
    store.feedback.retract("p", "f2", "tok-other", any_writer=True)  # a pending row, by an admin
    with pytest.raises(FeedbackNotFound):
        store.feedback.retract("p", "f1", "tok-1")
    left = store.query("SELECT (SELECT count(*) FROM feedback) + (SELECT count(*) FROM pending_feedback) "
                       "+ (SELECT count(*) FROM feedback_writers) AS n")["n"][0]
    assert left == 0


def test_latest_label_wins_in_counts_and_ids(store):
    store.append_predictions([{"id": i, "text": i, "label": "pos"} for i in ("a", "b")], "p")
    t0 = datetime(2025, 1, 1)
    store.append_feedback([
        {"id": "1", "prediction_id": "a", "label": "neg", "ts": t0, "source": "rule"},
        {"id": "2", "prediction_id": "a", "label": "pos", "ts": t0 + timedelta(hours=1), "source": "human"},
        {"id": "3", "prediction_id": "b", "label": "neg", "ts": t0 + timedelta(hours=2), "source": "human"},
    ], "p")
    assert store.feedback.count_latest_after("p", t0) == 2
    assert store.feedback.count_latest_after("p", t0, ["neg"]) == 1
    assert sorted(store.feedback.ids_labelled_after("p", t0, ["pos", "neg"])) == ["a", "b"]
    assert store.feedback.last_label_ts("p") == t0 + timedelta(hours=2)
    assert store.feedback.last_label_ts("empty") is None
    assert store.feedback.count_since("p", t0 + timedelta(minutes=30)) == 2  # every row, not only the latest
    assert store.predictions.count_unlabelled("p") == 0
    assert store.predictions.existing_ids("p", ["a", "zzz", "a"]) == {"a"}


def test_references_replace_and_sample_the_same_rows_for_the_same_seed(store):
    def table(n, reference):
        return pa.table({"project": ["p"] * n, "reference": [reference] * n, "text": [f"t{i}" for i in range(n)],
                         "embedding": pa.array([[float(i), 1.0] for i in range(n)], pa.list_(pa.float32()))})

    assert store.references.replace("p", "imported", table(30, "imported")) == 0
    assert store.references.replace("p", "imported", table(20, "imported")) == 30
    assert store.references.count("p", "imported") == 20
    first = store.references.embedding_sample("p", "imported", 5, seed=1)["embedding"]
    again = store.references.embedding_sample("p", "imported", 5, seed=1)["embedding"]
    other = store.references.embedding_sample("p", "imported", 5, seed=2)["embedding"]
    assert np.array_equal(np.stack(first), np.stack(again))
    assert not np.array_equal(np.stack(first), np.stack(other))
    assert np.stack(first).dtype == np.float32


def test_run_updates_name_real_columns_and_decode_json(store):
    run_id = store.runs.add_queued("p", "manual", lambda i: (f"/runs/{i}/job.log", f"/runs/{i}/snapshot"))
    store.runs.update(run_id, status="succeeded", finished=utcnow(), metrics={"accuracy": 0.9}, reasons=["ok"])
    with pytest.raises(ValueError, match="no column"):
        store.runs.update(run_id, **{"status = 'x'; --": 1})
    run = store.runs.get(run_id)
    assert run["metrics"] == {"accuracy": 0.9} and run["reasons"] == ["ok"]
    assert "log_path" not in run and run["n_examples"] is None
    assert store.runs.paths(run_id) == (f"/runs/{run_id}/job.log", f"/runs/{run_id}/snapshot")
    assert store.runs.latest("p") == (run_id, "succeeded")
    deferred = store.runs.add_deferred("p", "policy", ["too few labels"], {"holdout_plan": {}}, utcnow())
    assert store.runs.latest("p") == (deferred, "deferred")
    assert store.runs.last_finished_at("p") == run["finished"]  # deferred runs do not count


def test_projects_refuse_a_taken_name_and_tokens_count_only_live_ones(store):
    store.projects.create("p", ["a", "b"], utcnow(), None)
    with pytest.raises(ProjectExistsError):
        store.projects.create("p", ["c"], utcnow(), None)
    assert store.projects.names() == ["p"] and store.projects.exists("p")
    for name in ("ci", "ci", "ops"):
        store.tokens.add(f"hash-{name}-{len(store.tokens.list())}", name, "writer", utcnow())
    assert store.tokens.count_live() == 3
    assert store.tokens.revoke("ci") == 2
    assert store.tokens.count_live() == 1 and [r[1] for r in store.tokens.live()] == ["ops"]


def test_export_and_import_give_the_same_rows_per_table(tmp_path):
    with Store(tmp_path / "t.duckdb") as store:  # the DuckDB file's own backup format
        _export_and_import(store, tmp_path)


def _export_and_import(store, tmp_path):
    store.append_predictions([{"id": str(i), "text": "x", "label": "pos", "confidence": 0.5} for i in range(7)], "p")
    store.projects.create("p", ["pos", "neg"], utcnow(), {"drift": {"window_size": 50}})
    tables, version = store.maintenance.export(tmp_path / "export")
    assert tables["predictions"] == 7 and tables["projects"] == 1 and version == store.schema_version()
    assert import_export(tmp_path / "export", tmp_path / "copy.duckdb") == tables
    with Store(tmp_path / "copy.duckdb", read_only=True) as copy:
        assert copy.projects.get("p")["labels"] == '["pos", "neg"]'


def test_retention_rolls_up_labelled_hours_before_deleting(store):
    old = datetime(2020, 1, 1, 10, 30)
    store.append_predictions([{"id": "a", "text": "x", "label": "pos", "ts": old, "model_version": "v1"},
                              {"id": "b", "text": "y", "label": "pos", "ts": utcnow()}], "p")
    store.append_feedback([{"id": "f", "prediction_id": "a", "label": "neg"}], "p")
    deleted = store.maintenance.delete_before(datetime(2021, 1, 1), datetime(2021, 1, 1))
    assert deleted == (1, 1, 0, 1)
    hourly = store.query("SELECT * FROM feedback_hourly").to_dict("records")
    assert [(r["n_labelled"], r["n_correct"], r["model_version"]) for r in hourly] == [(1, 0, "v1")]
    assert store.count_predictions("p") == 1


def test_ping_fails_once_the_store_is_closed(store_backend):
    s = store_backend()
    s.ping()
    s.close()
    with pytest.raises((duckdb.Error, StoreError)):
        s.ping()


def test_reopening_applies_no_migration_and_keeps_the_rows(store_backend):
    with store_backend() as s:
        s.append_predictions([{"id": "a", "text": "x", "label": "pos"}], "p")
        version = s.schema_version()
    with store_backend() as s:
        assert s.migrate() == [] and s.schema_version() == version
        assert s.count_predictions("p") == 1


def test_training_replay_holdout_and_imported_key_reads(store):
    import json

    store.append_predictions([{"id": f"p{i}", "text": f"t{i}", "label": "pos",
                               "metadata": json.dumps({"ticket": {"id": f"k{i}"}})} for i in range(6)], "p")
    t0 = datetime(2025, 1, 1)
    store.append_feedback([{"id": f"f{i}", "prediction_id": f"p{i}", "label": "neg" if i % 2 else "pos",
                            "ts": t0 + timedelta(minutes=i)} for i in range(4)], "p")
    rows = store.feedback.training_rows("p", t0, t0 + timedelta(hours=1), ["neg", "pos"])
    assert rows["id"].tolist() == ["p1", "p2", "p3"]  # after t0, not at it
    reference = pa.table({"project": ["p"] * 3, "reference": ["imported"] * 3, "text": ["a", "b", "c"],
                          "true_label": ["neg", "pos", None]})
    store.references.replace("p", "imported", reference)
    replay = store.feedback.replay_rows("p", t0 + timedelta(hours=1), ["neg", "pos"], "imported", seed=3, limit=10)
    assert sorted(replay["id"]) == ["p0", "p1", "p2", "p3", "ref-1", "ref-2"]
    again = store.feedback.replay_rows("p", t0 + timedelta(hours=1), ["neg", "pos"], "imported", seed=3, limit=3)
    assert again["id"].tolist() == replay["id"].tolist()[:3]
    assert store.predictions.match_metadata_keys("p", ["k1", "nope"], '$."ticket"."id"') == [(0, "p1", 1),
                                                                                               (1, None, 0)]
    with store.transaction() as tx:
        store.versions.insert(tx, "p", "v1", "/models/v1", "candidate",
                              {"holdout": {"rows": {"id": ["p1", "p2"]}}}, None, None)
    assert store.versions.used_holdout_ids("p") == {"p1", "p2"}


def test_embeddings_written_back_where_missing_and_read_as_float32(store):
    store.append_predictions([{"id": f"e{i}", "text": f"t{i}", "label": "pos"} for i in range(3)], "p")
    missing = store.predictions.oldest_without_embedding(10)
    assert [r[2] for r in missing] == ["e0", "e1", "e2"]
    table = pa.table({"rid": [r[0] for r in missing[:2]], "project": ["p", "p"], "id": ["e0", "e1"],
                      "embedding": pa.array([[1.0, 0.5], [0.25, 2.0]], pa.list_(pa.float32()))})
    assert store.predictions.fill_embeddings(table) == 2
    assert store.predictions.fill_embeddings(table) == 0  # only where still NULL
    got = np.stack(store.predictions.first_embeddings("p", 10)["embedding"])
    assert got.dtype == np.float32 and got.tolist() == [[1.0, 0.5], [0.25, 2.0]]
    assert store.predictions.missing_embeddings_per_project() == {"p": 1}
