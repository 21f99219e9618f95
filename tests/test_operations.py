"""Operations on a live record: backup while writing + restore, retention that keeps the history.

Real server on loopback, real DuckDB files; the CLI is run in-process through typer's runner.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from conftest import free_port, toml_dumps
from typer.testing import CliRunner

from tuneloop.monitor import operations
from tuneloop.monitor.cli import app as cli_app
from tuneloop.monitor.storage import Store, StoreLockedError, utcnow

LABELS = ("negative", "neutral", "positive")


class WriteLoad(threading.Thread):
    """Predictions with unique ids (and feedback for every third) as fast as the server acknowledges."""

    def __init__(self, url: str, token: str, prefix: str, batch: int = 20) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.prefix, self.batch = prefix, batch
        self.acked: list[str] = []  # in acknowledgement order
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            ids = [f"{self.prefix}-{seq + i}" for i in range(self.batch)]
            seq += self.batch
            r = self.http.post("/v1/predictions", json={"records": [
                {"id": i, "text": f"backup test {i}", "label": LABELS[hash(i) % 3], "confidence": 0.7} for i in ids]})
            if r.status_code != 200:
                self.errors.append(f"{r.status_code} {r.text[:200]}")
                continue
            f = self.http.post("/v1/feedback", json={"records": [
                {"id": f"fb-{i}", "prediction_id": i, "label": "neutral"} for i in ids[::3]]})
            if f.status_code != 200:
                self.errors.append(f"{f.status_code} {f.text[:200]}")
            self.acked.extend(ids)
        self.http.close()


def run_cli(args: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """``tuneloop ARGS`` in this process; the logging set-up the CLI does is undone afterwards."""
    logger = logging.getLogger("tuneloop")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        return CliRunner().invoke(cli_app, args, env=env)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def wait_until(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _ids(db: Path) -> set[str]:
    with Store(db) as s:
        return {r[0] for r in s.cursor().execute("SELECT id FROM predictions").fetchall()}


def _consistency(db: Path) -> tuple[int, int, int]:
    """(predictions, rollup total, feedback rows without their prediction) of a database file."""
    with Store(db) as s:
        cur = s.cursor()
        n = cur.execute("SELECT count(*) FROM predictions").fetchall()[0][0]
        rolled = cur.execute("SELECT coalesce(sum(n), 0) FROM prediction_hourly").fetchall()[0][0]
        orphans = cur.execute("SELECT count(*) FROM feedback f ANTI JOIN predictions p "
                              "ON p.project = f.project AND p.id = f.prediction_id").fetchall()[0][0]
        return int(n), int(rolled), int(orphans)


def test_backup_while_writing_then_restore(running_server, tmp_path, figure):
    server = running_server(tmp_path / "srv")
    loads = [WriteLoad(server.url, server.tokens["label"], f"w{i}") for i in range(3)]
    for w in loads:
        w.start()
    admin = server.client("admin", timeout=120)
    def acked() -> int:
        return sum(len(w.acked) for w in loads)

    try:
        wait_until(lambda: acked() >= 300)
        acked_before = {i for w in loads for i in list(w.acked)}
        r = admin.post("/v1/admin/backup", json={"name": "during-writes"})
        assert r.status_code == 200, r.text
        live_backup = r.json()
        n = acked()
        wait_until(lambda: acked() >= n + 100)  # writes go on after the backup
    finally:
        for w in loads:
            w.stop.set()
        for w in loads:
            w.join(30)
    assert not [e for w in loads for e in w.errors]
    acked_all = {i for w in loads for i in w.acked}
    assert len(acked_all) > len(acked_before) >= 300

    # the live backup: every row acknowledged before it began, and a consistent snapshot (no torn batch)
    restored = tmp_path / "restored" / "during.duckdb"
    result = operations.restore(live_backup["path"], restored)
    assert result.tables == live_backup["tables"]
    got = _ids(restored)
    assert acked_before <= got, f"{len(acked_before - got)} rows acknowledged before the backup are missing"
    assert got <= acked_all | {i for w in loads for i in w.acked}
    n, rolled, orphans = _consistency(restored)
    assert n == rolled and orphans == 0, (n, rolled, orphans)

    # quiescent backup through the CLI (through the server) -> identical counts of acknowledged rows
    dest = tmp_path / "quiet-backup"
    out = run_cli(["--config", str(server.config_path), "backup", str(dest)],
                  {"TUNELOOP_TOKEN": server.tokens["admin"]})
    assert out.exit_code == 0, out.output
    assert "backed up" in out.output and dest.is_dir()
    quiet = tmp_path / "restored" / "quiet.duckdb"
    operations.restore(dest, quiet)
    assert _ids(quiet) == acked_all == {r[0] for r in server.store.cursor().execute(
        "SELECT id FROM predictions").fetchall()}
    columns = "SELECT table_name, column_name, data_type FROM duckdb_columns() ORDER BY ALL"
    with Store(quiet) as s:
        assert s.table_counts() == server.store.table_counts()
        assert s.query(columns).equals(server.store.query(columns))  # same tables, columns and types
    figure("backup: acknowledged rows checked after restore", f"{len(acked_all)} predictions "
           f"({len(acked_before)} in the backup taken under load, {live_backup['seconds']:.2f} s)")


def test_restore_refuses_a_database_in_use_and_keeps_the_replaced_file(tmp_path):
    db = tmp_path / "live.duckdb"
    with Store(db) as s:
        s.append_predictions([{"id": "old", "text": "old row", "label": "neutral"}])
    src = tmp_path / "bk"
    with Store(db, read_only=True) as s:
        operations.backup(s, src)
    with Store(db) as s:
        s.append_predictions([{"id": "newer", "text": "after the backup", "label": "neutral"}])

    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                               "print('open', flush=True); sys.stdin.read()", str(db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError, match="in use"):
            operations.restore(src, db, overwrite=True)
    finally:
        holder.communicate("", timeout=30)
    with pytest.raises(FileExistsError):
        operations.restore(src, db)
    out = operations.restore(src, db, overwrite=True)
    assert _ids(db) == {"old"}
    assert out.replaced and _ids(Path(out.replaced)) == {"old", "newer"}
    with pytest.raises(operations.BackupError, match="not a tuneloop backup"):
        operations.restore(tmp_path, tmp_path / "x.duckdb")


def test_backup_and_restore_cli_offline_with_models(tmp_path, sentiment_version):
    """No server: `tuneloop backup` reads the file, `tuneloop restore` rebuilds a working data dir."""
    import shutil

    from tuneloop.monitor import registry

    data = tmp_path / "data"
    config = tmp_path / "c.toml"
    config.write_text(toml_dumps({"paths": {"data_dir": str(data)}, "server": {"port": free_port()}}))
    with Store(data / "tuneloop.duckdb") as s:
        shutil.copytree(sentiment_version, data / "models" / "v1")
        registry.register_dir(s, "default", data / "models", "v1")
        registry.promote(s, "default", "v1", "test")
        s.append_predictions([{"id": f"p{i}", "text": f"t {i}", "label": "neutral"} for i in range(50)])
    out = run_cli(["--config", str(config), "backup", str(tmp_path / "bk")])
    assert out.exit_code == 0, out.output
    assert "1 model versions" in out.output
    again = run_cli(["--config", str(config), "backup", str(tmp_path / "bk")])
    assert again.exit_code == 1 and "already exists" in again.output

    other = tmp_path / "other"
    config2 = tmp_path / "c2.toml"
    config2.write_text(toml_dumps({"paths": {"data_dir": str(other)}, "server": {"port": free_port()}}))
    out = run_cli(["--config", str(config2), "restore", str(tmp_path / "bk")])
    assert out.exit_code == 0, out.output
    with Store(other / "tuneloop.duckdb") as s:
        assert s.count_predictions() == 50
        champion = registry.champion(s, "default")
        assert Path(champion["path"]) == (other / "models" / "v1").resolve()
    from tuneloop.retrain.versions import load_version

    assert load_version(champion["path"]).predict(["I love it"]).labels  # the restored champion loads
    refused = run_cli(["--config", str(config2), "restore", str(tmp_path / "bk")])
    assert refused.exit_code == 1 and "--force" in refused.output


def _stats(client: httpx.Client) -> list[dict]:
    r = client.get("/v1/stats", params={"bucket": "day"})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_retention_deletes_old_raw_rows_and_keeps_rollups_and_stats(running_server, tmp_path, figure):
    server = running_server(tmp_path)
    store = server.store
    now = utcnow()
    rows, fb = [], []
    for day in range(0, 120, 3):  # 40 days of traffic, the oldest 120 days ago
        for i in range(10):
            pid = f"d{day}-{i}"
            rows.append({"id": pid, "text": f"day {day} text {i}", "label": LABELS[i % 3], "confidence": 0.6,
                         "ts": (now - timedelta(days=day, hours=i)).isoformat()})
            if i % 2 == 0:
                fb.append({"prediction_id": pid, "label": LABELS[(i + day) % 3]})
    ingest, label = server.client("ingest"), server.client("label")
    for k in range(0, len(rows), 100):
        assert ingest.post("/v1/predictions", json={"records": rows[k:k + 100]}).status_code == 200
    assert label.post("/v1/feedback", json={"records": fb}).status_code == 200
    # a later, human label for a few old predictions: the rollup must count only the latest
    assert label.post("/v1/feedback", json={"records": [{"prediction_id": f"d117-{i}", "label": "neutral"}
                                                        for i in range(0, 10, 2)]}).status_code == 200
    before = _stats(label)
    assert sum(b["n_labelled"] for b in before) == len(fb)

    out = run_cli(["--config", str(server.config_path), "retention", "run", "--raw-days", "90"],
                  {"TUNELOOP_TOKEN": server.tokens["admin"]})
    assert out.exit_code == 0, out.output
    cutoff = operations.retention_cutoff(90, utcnow())
    old = [r for r in rows if r["ts"] < cutoff.isoformat()]
    assert f"deleted {len(old)} predictions" in out.output, out.output
    cur = store.cursor()
    assert cur.execute("SELECT count(*) FROM predictions WHERE ts < ?", [cutoff]).fetchall()[0][0] == 0
    assert cur.execute("SELECT count(*) FROM feedback WHERE prediction_ts < ?", [cutoff]).fetchall()[0][0] == 0
    assert store.count_predictions() == len(rows) - len(old) > 0
    assert cur.execute("SELECT sum(n) FROM prediction_hourly").fetchall()[0][0] == len(rows)  # rollup untouched
    assert _stats(label) == before  # traffic, confidence, labelled accuracy per day: all still there

    again = server.client("admin").post("/v1/admin/retention", json={"raw_days": 90}).json()
    assert again["predictions"] == again["feedback"] == 0 and _stats(label) == before  # idempotent
    figure("retention: raw rows deleted, history kept", f"{len(old)} predictions older than 90 days; "
           f"{len(before)} daily buckets unchanged")


def test_retention_is_scheduled_by_the_server(tmp_path):
    from tuneloop.monitor.config import load_settings
    from tuneloop.monitor.runtime import running

    settings = load_settings(paths={"data_dir": str(tmp_path)}, retention={"interval_hours": 6})
    with Store(settings.db_path) as store, running(settings, store) as runtime:
        (job,) = [j for j in runtime.scheduler.jobs() if j["id"] == "retention"]
        assert job["next_run"] != "None"
        trigger = runtime.scheduler._scheduler.get_job("retention").trigger
        assert trigger.interval == timedelta(hours=6)
    assert not runtime.ready and not runtime.scheduler._scheduler.running  # stopped on exit
