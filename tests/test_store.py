"""The store against real databases: DuckDB files, and PostgreSQL where the ``store`` fixture runs a test
on both backends."""

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from tuneloop.monitor.storage import MIGRATIONS, Store, StoreLockedError


@pytest.fixture
def store(store_backend):
    with store_backend() as s:
        yield s


def test_new_db_gets_every_migration(tmp_path):
    s = Store(tmp_path / "new.duckdb")
    assert s.schema_version() == max(v for v, _ in MIGRATIONS)
    applied = s.query("SELECT version FROM schema_migrations ORDER BY version")["version"].tolist()
    assert applied == [v for v, _ in MIGRATIONS]
    s.close()


def test_reopen_is_a_noop_and_keeps_rows(tmp_path):
    path = tmp_path / "t.duckdb"
    s = Store(path)
    s.append_predictions([{"id": "a", "text": "hello", "label": "positive"}])
    s.close()
    s = Store(path)
    assert s.migrate() == []
    assert s.count_predictions() == 1
    s.close()


def test_existing_db_gets_only_new_migrations(tmp_path, monkeypatch):
    path = tmp_path / "old.duckdb"
    Store(path).close()
    extra = (max(v for v, _ in MIGRATIONS) + 1, "CREATE TABLE extra_things (x INTEGER)")
    monkeypatch.setattr("tuneloop.monitor.storage.store.MIGRATIONS", [*MIGRATIONS, extra])
    s = Store(path)
    assert s.schema_version() == extra[0]
    assert s.query("SELECT count(*) AS n FROM extra_things")["n"][0] == 0
    assert s.migrate() == []
    s.close()


def test_batch_append_100k_rows_with_embeddings(store):
    rng = np.random.default_rng(0)
    n, dim, batch = 100_000, 384, 10_000
    labels = np.array(["negative", "neutral", "positive"])
    for start in range(0, n, batch):
        emb = rng.standard_normal((batch, dim), dtype=np.float32)
        table = pa.table(
            {
                "id": [f"p{start + i}" for i in range(batch)],
                "text": [f"text {start + i}" for i in range(batch)],
                "label": labels[rng.integers(0, 3, batch)],
                "confidence": rng.uniform(0.3, 1.0, batch),
                "embedding": pa.FixedSizeListArray.from_arrays(emb.ravel(), dim).cast(pa.list_(pa.float32())),
            }
        )
        result = store.append_predictions(table)
        assert result.accepted == batch and result.duplicates == 0
    assert store.count_predictions() == n
    dims = store.query("SELECT DISTINCT array_length(embedding, 1) AS d FROM predictions")["d"].tolist()
    assert dims == [dim]
    # the hourly rollup counts exactly what was inserted
    assert int(store.traffic()["n"].sum()) == n
    # re-appending a batch is idempotent
    again = store.append_predictions([{"id": "p5", "text": "x", "label": "neutral"}])
    assert (again.accepted, again.duplicates) == (0, 1)
    assert store.count_predictions() == n


def test_duplicate_ids_inside_one_batch_count_once(store):
    r = store.append_predictions(
        [{"id": "same", "text": "a", "label": "positive"}, {"id": "same", "text": "a", "label": "positive"}]
    )
    assert (r.accepted, r.duplicates) == (1, 1)


def test_join_with_latest_feedback_human_beats_rule(store):
    store.append_predictions(
        [
            {"id": "a", "text": "good", "label": "positive", "confidence": 0.9},
            {"id": "b", "text": "bad", "label": "positive", "confidence": 0.6},
            {"id": "c", "text": "meh", "label": "neutral", "confidence": 0.5},
        ]
    )
    store.append_feedback([{"prediction_id": "a", "label": "positive"}])
    store.append_feedback([{"prediction_id": "b", "label": "neutral"}])
    store.append_feedback([{"prediction_id": "b", "label": "negative"}])  # later human label wins
    store.append_feedback([{"prediction_id": "a", "label": "negative", "source": "rule"}])  # rule loses
    joined = store.labelled_predictions().set_index("id")
    assert sorted(joined.index) == ["a", "b"]
    assert joined.loc["a", "true_label"] == "positive"
    assert joined.loc["b", "true_label"] == "negative"
    window = store.window(last=3).set_index("id")
    assert window.loc["c", "true_label"] is None
    acc = store.labelled_accuracy()
    assert acc["n_labelled"].sum() == 2 and acc["accuracy"].iloc[0] == pytest.approx(0.5)


def test_feedback_for_unknown_prediction_waits_until_it_arrives(store):
    r = store.append_feedback([{"prediction_id": "late", "label": "negative"}])
    assert (r.accepted, r.pending, r.unknown_ids) == (0, 1, ["late"])
    store.append_predictions([{"id": "late", "text": "x", "label": "positive"}])
    assert store.labelled_predictions()["true_label"].tolist() == ["negative"]
    assert store.table_counts()["pending_feedback"] == 0


def test_window_by_count_is_newest_rows_in_arrival_order(store):
    for i in range(5):
        store.append_predictions([{"id": f"r{i}", "text": f"t{i}", "label": "neutral"}])
    assert store.window(last=3)["id"].tolist() == ["r2", "r3", "r4"]


def test_cursors_per_thread(store):
    from concurrent.futures import ThreadPoolExecutor

    def write(k):
        store.append_predictions([{"id": f"t{k}-{i}", "text": "x", "label": "neutral"} for i in range(50)])
        return store.count_predictions()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(16)))
    assert store.count_predictions() == 800


def test_locked_file_gives_clear_error(tmp_path):
    path = tmp_path / "locked.duckdb"
    Store(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from tuneloop.monitor.storage import Store
            s = Store({str(path)!r}); print("open", flush=True); time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError, match="tuneloop serve is running on this file; use the API"):
            Store(path)
    finally:
        holder.kill()
        holder.wait()


def test_hourly_rollup_is_exact_through_partial_rows_and_compaction(store, monkeypatch):
    from datetime import datetime, timedelta

    from tuneloop.monitor.collect import stats
    from tuneloop.monitor.storage import store as store_module

    t0 = datetime(2025, 5, 1, 10, 0)
    rng = np.random.default_rng(1)
    expected: dict = {}
    for b in range(12):
        n = 50
        hours = rng.integers(0, 3, n)
        conf = rng.uniform(0.3, 1.0, n).round(3)
        versions = np.where(rng.random(n) < 0.5, "v1", "v2")
        ts = [t0 + timedelta(hours=int(h), minutes=int(m)) for h, m in zip(hours, rng.integers(0, 60, n), strict=True)]
        table = pa.table({"id": [f"r{b}-{i}" for i in range(n)], "text": ["t"] * n, "label": ["positive"] * n,
                          "confidence": conf, "model_version": versions, "ts": pa.array(ts, pa.timestamp("us"))})
        if b == 5:  # a retried batch counts once
            store.append_predictions(table.slice(0, 10))
        store.append_predictions(table)
        store.catch_up_rollup()  # DuckDB: one partial aggregate per append, as upkeep adds under steady traffic
        for h, c in zip(hours, conf, strict=True):
            e = expected.setdefault(t0 + timedelta(hours=int(h)), [0, 0.0])
            e[0] += 1
            e[1] += c
    # string timestamps count the same
    store.append_predictions([{"id": "s1", "text": "t", "label": "neutral", "confidence": 0.5,
                               "ts": "2025-05-01 12:30:00"}])
    store.catch_up_rollup()
    expected[t0 + timedelta(hours=2)][0] += 1
    expected[t0 + timedelta(hours=2)][1] += 0.5

    def check():
        items = stats(store, bucket="hour")
        assert [i["bucket"] for i in items] == sorted(expected)
        for item in items:
            n, conf = expected[item["bucket"]]
            assert item["n"] == n and item["mean_confidence"] == pytest.approx(conf / n, rel=1e-12)
        assert int(store.label_mix()["n"].sum()) == sum(n for n, _ in expected.values())

    def rollup_rows():
        return int(store.query("SELECT count(*) AS n FROM prediction_hourly")["n"][0])

    check()
    keys = int(store.query("SELECT count(*) AS n FROM (SELECT DISTINCT project, hour, model_version, label "
                           "FROM prediction_hourly) rollup_keys")["n"][0])
    partial = rollup_rows()
    assert partial > keys  # partial rows, summed by the readers
    assert store.compact_rollup() == partial - keys
    check()
    assert rollup_rows() == keys
    # catch-up and compaction also run by themselves once enough rows wait
    monkeypatch.setattr(store_module, "ROLLUP_CATCH_UP_ROWS", 1)
    monkeypatch.setattr(store_module, "ROLLUP_COMPACT_ROWS", 2)
    store.append_predictions([{"id": "late", "text": "t", "label": "positive", "confidence": 0.25,
                               "ts": t0, "model_version": "v1"}])
    store.append_predictions([{"id": "late2", "text": "t", "label": "positive", "confidence": 0.25,
                               "ts": t0, "model_version": "v1"}])
    expected[t0][0] += 2
    expected[t0][1] += 0.5
    assert rollup_rows() == keys
    check()


def test_rollup_migration_keeps_existing_sums(tmp_path, monkeypatch):
    from tuneloop.monitor.storage import store as store_module

    path = tmp_path / "old.duckdb"
    monkeypatch.setattr(store_module, "MIGRATIONS", [m for m in MIGRATIONS if m[0] < 5])
    old = Store(path)
    old.execute("INSERT INTO prediction_hourly VALUES ('default', '2025-05-01 10:00', 'v1', 'positive', 7, 3.5)")
    old.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    s = Store(path)
    assert s.schema_version() == max(v for v, _ in MIGRATIONS)
    s.append_predictions([{"id": "a", "text": "x", "label": "positive", "confidence": 0.5, "model_version": "v1",
                           "ts": "2025-05-01 10:20:00"}])
    traffic = s.traffic()
    assert traffic["n"].tolist() == [8] and traffic["mean_confidence"].tolist() == [pytest.approx(4.0 / 8)]
    s.close()


def test_rollup_readers_agree_with_the_raw_rows_after_many_appends(store, monkeypatch):
    """Hundreds of appends (group commits, retries, two projects, missing versions and confidences,
    rows across hours and days) with catch-up and compaction running by themselves: every rollup reader
    answers what a recomputation from the raw ``predictions`` rows answers, and so does the stored rollup
    once caught up."""
    from datetime import datetime, timedelta

    from tuneloop.monitor.storage import store as store_module

    monkeypatch.setattr(store_module, "ROLLUP_COMPACT_ROWS", 40)
    monkeypatch.setattr(store_module, "ROLLUP_CATCH_UP_ROWS", 97)
    rng = np.random.default_rng(7)
    t0 = datetime(2025, 6, 1, 22, 0)
    labels = np.array(["negative", "neutral", "positive"])
    sent = 0
    for b in range(150):
        n = int(rng.integers(1, 30))
        conf = rng.uniform(0.3, 1.0, n).round(4)
        table = pa.table({
            "id": [f"m{b}-{i}" for i in range(n)], "text": ["t"] * n, "label": labels[rng.integers(0, 3, n)],
            "confidence": pa.array([None if rng.random() < 0.1 else float(c) for c in conf], pa.float64()),
            "model_version": pa.array([None if rng.random() < 0.1 else f"v{int(rng.integers(1, 4))}"
                                       for _ in range(n)], pa.string()),
            "ts": pa.array([t0 + timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 30, n)], pa.timestamp("us")),
        })
        project = "default" if b % 3 else "other"
        if b % 10 == 4:  # a retried request: its rows count once
            store.append_predictions(table.slice(0, n // 2), project)
        if b % 7 == 0:  # a group commit of two requests
            store.append_prediction_batches([(table.slice(0, n // 2), project), (table.slice(n // 2), project)])
        else:
            store.append_predictions(table, project)
        sent += n

    def raw(sql: str):
        return store.query(sql)

    recomputed = raw("""SELECT project, date_trunc('hour', ts) AS hour, coalesce(model_version, '') AS model_version,
                               label, count(*) AS n, coalesce(sum(confidence), 0) AS confidence_sum
                        FROM predictions GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4""")
    assert int(recomputed["n"].sum()) == sent

    def same_as_recomputed(rollup_rows: str) -> None:
        rolled = raw(f"""SELECT project, hour, model_version, label, sum(n) AS n, sum(confidence_sum) AS confidence_sum
                         FROM {rollup_rows} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4""")
        assert rolled[["project", "hour", "model_version", "label"]].values.tolist() == \
            recomputed[["project", "hour", "model_version", "label"]].values.tolist()
        assert rolled["n"].astype(int).tolist() == recomputed["n"].astype(int).tolist()
        assert rolled["confidence_sum"].tolist() == pytest.approx(recomputed["confidence_sum"].tolist(), rel=1e-12)

    same_as_recomputed(store.hourly_rows)

    assert store.projects.prediction_counts() == {
        p: int(n) for p, n in raw("SELECT project, count(*) AS n FROM predictions GROUP BY project").values}
    for project in ("default", "other"):
        for bucket in ("hour", "day"):
            traffic = store.traffic(project, bucket)
            expected = raw(f"""SELECT date_trunc('{bucket}', ts) AS bucket,
                                      coalesce(model_version, '') AS model_version, count(*) AS n,
                                      coalesce(sum(confidence), 0) / count(*) AS mean_confidence
                               FROM predictions WHERE project = '{project}' GROUP BY 1, 2 ORDER BY 1, 2""")
            assert traffic[["bucket", "model_version"]].values.tolist() == \
                expected[["bucket", "model_version"]].values.tolist()
            assert traffic["n"].astype(int).tolist() == expected["n"].astype(int).tolist()
            assert traffic["mean_confidence"].tolist() == pytest.approx(expected["mean_confidence"].tolist(), rel=1e-12)
        mix = store.label_mix(project)
        expected_mix = raw(f"SELECT label, count(*) AS n FROM predictions WHERE project = '{project}' "
                           "GROUP BY 1 ORDER BY 1")
        assert mix.values.tolist() == expected_mix.values.tolist()
    store.catch_up_rollup()
    same_as_recomputed("prediction_hourly")
