"""Backups, restores and retention of the PostgreSQL store, against a real PostgreSQL server.

Backups are ``pg_dump`` archives of one snapshot; ``tuneloop restore`` loads them with ``pg_restore``.
Retention deletes in bounded batches: a statement trigger records the rows each transaction deleted.
"""

from __future__ import annotations

import os
import resource
import shutil
import threading
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import psycopg
import pyarrow as pa
import pytest
from conftest import free_port, start_server, toml_dumps
from test_operations import run_cli

from tuneloop.monitor import operations, registry
from tuneloop.monitor.storage import Store, is_missing, open_postgres

NOW = datetime(2026, 6, 1, 12, 0)
LABELS = ("negative", "neutral", "positive")


def predictions(start: int, n: int, *, dim: int = 8, hours_apart: float = 1.2) -> pa.Table:
    """``n`` predictions with embeddings, one every ``hours_apart`` hours going back from NOW."""
    rng = np.random.default_rng(start)
    k = np.arange(start, start + n)
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    return pa.table({
        "id": [f"p{i}" for i in k], "text": [f"text {i}" for i in k], "label": [LABELS[i % 3] for i in k],
        "confidence": rng.uniform(0.34, 1.0, n), "model_version": ["v1" if i % 2 else "v2" for i in k],
        "ts": pa.array([NOW - timedelta(hours=float(i) * hours_apart) for i in k], pa.timestamp("us")),
        "embedding": pa.FixedSizeListArray.from_arrays(emb.ravel(), dim).cast(pa.list_(pa.float32())),
    })


def fill(store: Store, n: int = 3000) -> None:
    """``n`` predictions over ~150 days in two projects, labels (some relabelled: the latest counts) and
    pending feedback whose predictions never came."""
    for project, start in (("default", 0), ("other", n)):
        count = n if project == "default" else n // 10
        store.append_predictions(predictions(start, count), project=project)
        store.append_feedback([{"prediction_id": f"p{i}", "label": LABELS[(i // 2) % 3]}
                               for i in range(start, start + count, 2)], project=project)
        store.append_feedback([{"prediction_id": f"p{i}", "label": LABELS[(i + 1) % 3], "source": "rule"}
                               for i in range(start, start + count, 10)], project=project)
        store.append_feedback([{"prediction_id": f"p{i}", "label": LABELS[i % 3]}
                               for i in range(start, start + count, 14)], project=project)
    store.append_feedback([{"prediction_id": f"never-{i}", "label": "neutral", "ts": NOW - timedelta(days=d)}
                           for i, d in enumerate((1, 100, 120))])


def history(store: Store) -> tuple:
    """What retention must keep: labelled accuracy and traffic per day, per project."""
    return tuple((store.labelled_accuracy(p, bucket="day").to_dict("list"), store.traffic(p, bucket="day")
                  .to_dict("list")) for p in ("default", "other"))


def remaining(store: Store) -> tuple:
    """The predictions left, and the predictions the labels and pending labels left are for."""
    cur = store.cursor()
    return tuple(sorted(r[0] for r in cur.execute(f"SELECT project || '/' || {column} FROM {table}").fetchall())
                 for table, column in (("predictions", "id"), ("feedback", "prediction_id"),
                                       ("pending_feedback", "prediction_id")))


DELETE_LOG = """
CREATE TABLE delete_log (tx BIGINT, tbl TEXT, n BIGINT);
CREATE FUNCTION log_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO delete_log SELECT txid_current(), TG_TABLE_NAME, count(*) FROM gone; RETURN NULL; END $$;
CREATE TRIGGER predictions_deleted AFTER DELETE ON predictions REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION log_delete();
CREATE TRIGGER feedback_deleted AFTER DELETE ON feedback REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION log_delete();
"""


def test_retention_deletes_in_bounded_transactions_and_matches_duckdb(postgres_url, tmp_path):
    batch = 250
    outcome = {}
    for name, opener in (("duckdb", lambda: Store(tmp_path / "r.duckdb")), ("postgresql",
                                                                            lambda: open_postgres(postgres_url))):
        with opener() as store:
            fill(store)
            before = history(store)
            if name == "postgresql":
                with psycopg.connect(postgres_url, autocommit=True) as con:
                    con.execute(DELETE_LOG)
            result = operations.run_retention(store, 90, now=NOW, batch_rows=batch)
            assert history(store) == before  # every day's accuracy and traffic is still there
            again = operations.run_retention(store, 90, now=NOW, batch_rows=batch)
            assert (again.predictions, again.feedback, again.pending_feedback) == (0, 0, 0)
            assert history(store) == before
            rollup = store.query("SELECT project, hour, model_version, n_labelled, n_correct FROM feedback_hourly "
                                 "ORDER BY 1, 2, 3")
            outcome[name] = (result.predictions, result.feedback, result.pending_feedback, result.hours_rolled_up,
                             remaining(store), rollup.to_dict("list"))
            if name == "postgresql":
                log = store.query("SELECT tx, tbl, sum(n)::BIGINT AS n FROM delete_log GROUP BY 1, 2")
    n_old = sum(NOW - timedelta(hours=k * 1.2) < operations.retention_cutoff(90, NOW) for k in range(3300))
    assert outcome["duckdb"] == outcome["postgresql"]
    assert outcome["postgresql"][0] == n_old > 4 * batch and outcome["postgresql"][2] == 2
    deleted = log[log["tbl"] == "predictions"]
    assert deleted["n"].sum() == n_old and deleted["n"].max() <= batch  # no transaction deleted more
    assert len(deleted) >= n_old / batch
    assert log[log["tbl"] == "feedback"]["n"].max() <= 3 * batch  # at most three labels per prediction here


def contents(url: str) -> dict[str, list]:
    """Every row of every table, sorted: what a restore must give back."""
    with psycopg.connect(url) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE "
                                           "table_schema = 'public' ORDER BY 1").fetchall()]
        return {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"').fetchall())) for t in names}


def test_backup_drop_restore_gives_the_same_rows(postgres_server, tmp_path, sentiment_version):
    url = postgres_server.new_database()
    data = tmp_path / "data"
    config = tmp_path / "c.toml"
    config.write_text(toml_dumps({"paths": {"data_dir": str(data)}, "server": {"port": free_port()},
                                  "store": {"url": url}}))
    with open_postgres(url) as store:
        shutil.copytree(sentiment_version, data / "models" / "v1")
        registry.register_dir(store, "default", data / "models", "v1")
        registry.promote(store, "default", "v1", "test")
        fill(store, 300)
        store.execute("INSERT INTO retrain_runs (id, project, started, trigger, status) VALUES "
                      "(nextval('retrain_run_ids'), 'default', ?, 'manual', 'failed')", [NOW])

        # a backup taken while batches of 20 keep arriving holds whole batches, and its manifest is exact
        stop, batches = threading.Event(), [0]

        def write() -> None:
            while not stop.is_set():
                store.append_predictions(predictions(10_000 + 20 * batches[0], 20, hours_apart=0.01))
                batches[0] += 1

        writer = threading.Thread(target=write)
        writer.start()
        try:
            live = operations.backup(store, tmp_path / "live")
        finally:
            stop.set()
            writer.join(60)
        assert batches[0] > 0
    copy = postgres_server.new_database()
    restored = operations.restore_postgres(live.path, copy)
    assert restored.tables == live.tables and (live.tables["predictions"] - 330) % 20 == 0
    with open_postgres(copy) as store:
        assert store.scalar("SELECT sum(n) FROM prediction_hourly") == live.tables["predictions"]

    # quiescent backup through the CLI, the database dropped, `tuneloop restore` into a new empty one
    out = run_cli(["--config", str(config), "backup", str(tmp_path / "bk")])
    assert out.exit_code == 0, out.output
    assert "1 model versions" in out.output and (tmp_path / "bk" / "db" / "tuneloop.dump").is_file()
    before = contents(url)
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.url(), autocommit=True) as con:
        con.execute(f"DROP DATABASE {name}")
        con.execute(f"CREATE DATABASE {name}")
    shutil.rmtree(data / "models")
    out = run_cli(["--config", str(config), "restore", str(tmp_path / "bk")])
    assert out.exit_code == 0, out.output
    assert contents(url) == before
    with open_postgres(url) as store:
        assert Path(registry.champion(store, "default")["path"]) == (data / "models" / "v1").resolve()
        run_id = store.scalar("SELECT nextval('retrain_run_ids')")  # sequences go on after the restored ids
        assert run_id > store.scalar("SELECT max(id) FROM retrain_runs")
        store.append_predictions(predictions(90_000, 5))  # row_order and ingest_seq carry on too

    # a database in use, or one that holds tables, is refused; --force keeps the replaced tables
    with psycopg.connect(url):
        refused = run_cli(["--config", str(config), "restore", str(tmp_path / "bk"), "--force"])
    assert refused.exit_code == 1 and "in use by 1 other connection" in refused.output, refused.output
    refused = run_cli(["--config", str(config), "restore", str(tmp_path / "bk")])
    assert refused.exit_code == 1 and "--force" in refused.output and "already holds" in refused.output
    forced = run_cli(["--config", str(config), "restore", str(tmp_path / "bk"), "--force"])
    assert forced.exit_code == 0 and "kept as schema replaced_" in forced.output, forced.output
    assert contents(url) == before
    with pytest.raises(operations.BackupError, match="backup of a postgresql store; restore it with store.url set"):
        operations.restore(tmp_path / "bk", tmp_path / "x.duckdb")


def test_a_backup_that_fills_the_disk_is_507_and_leaves_nothing_behind(postgres_url, tmp_path):
    with open_postgres(postgres_url) as store:  # random text: the compressed dump cannot fit in 400 kB
        store.append_predictions([{"id": str(i), "text": os.urandom(320).hex(), "label": "neutral"}
                                  for i in range(2000)])
    server = start_server(tmp_path, subprocess=True, store={"url": postgres_url})
    try:  # a file size limit on the server, which pg_dump inherits: it is stopped at 400 kB (SIGXFSZ)
        serving = psutil.Process(server._proc.pid)
        serving.rlimit(psutil.RLIMIT_FSIZE, (400_000, resource.RLIM_INFINITY))
        admin = server.client("admin", timeout=120)
        r = admin.post("/v1/admin/backup", json={"name": "full"})
        assert r.status_code == 507 and "disk is full" in r.json()["detail"], r.text
        assert r.headers.get("retry-after")
        backups = server.settings.data_dir / "backups"
        assert not backups.exists() or not list(backups.iterdir())  # no half-written backup or temp directory
        r = server.client("ingest").post("/v1/predictions", json={"records": [{"id": "after", "text": "still",
                                                                              "label": "neutral"}]})
        assert r.status_code == 200, r.text
        serving.rlimit(psutil.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        r = admin.post("/v1/admin/backup", json={"name": "full"})
        assert r.status_code == 200 and r.json()["tables"]["predictions"] == 2001, r.text
    finally:
        server.close()


def test_the_drift_window_reads_the_same_embeddings_from_both_backends(postgres_url, tmp_path):
    """PostgreSQL sends ``real[]`` in its binary format; rows of other lengths and NULLs decode too."""
    table = predictions(0, 300, dim=16)
    odd = [{"id": "short", "text": "s", "label": "neutral", "embedding": [1.5, -2.25, 3e-5]},
           {"id": "none", "text": "n", "label": "neutral"}, {"id": "empty", "text": "e", "label": "neutral",
                                                              "embedding": []}]
    frames = []
    for opener in (lambda: Store(tmp_path / "w.duckdb"), lambda: open_postgres(postgres_url)):
        with opener() as store:
            store.append_predictions(table)
            frames.append(store.window(last=300))
            store.append_predictions(odd)
            frames.append(store.window(last=303))
    for duck, pg in ((frames[0], frames[2]), (frames[1], frames[3])):  # rows of one batch tie: compare by id
        duck, pg = duck.sort_values("id"), pg.sort_values("id")
        assert duck["id"].tolist() == pg["id"].tolist()
        for a, b in zip(duck["embedding"], pg["embedding"], strict=True):
            assert (is_missing(a) and is_missing(b)) or (np.asarray(a, np.float32).tolist() == b.tolist()
                                                         and b.dtype == np.float32)
    assert frames[3].set_index("id").loc["short", "embedding"].tolist() == [1.5, -2.25, np.float32(3e-5)]
