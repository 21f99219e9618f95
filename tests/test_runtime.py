"""The composition root: services start in order, stop in reverse, and nothing acknowledged is lost."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from tuneloop.monitor.config import load_settings
from tuneloop.monitor.runtime import Runtime, local, running
from tuneloop.monitor.storage import Store, StoreError


def settings_for(tmp_path, **overrides):  # type: ignore[no-untyped-def]
    return load_settings(paths={"data_dir": str(tmp_path)}, embedder={"enabled": False}, **overrides)


def rows(*ids: str) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "text": f"text {i}", "label": "neutral"} for i in ids])


def test_a_started_runtime_is_ready_schedules_its_jobs_and_stops_everything(tmp_path):
    s = settings_for(tmp_path, retrain={"enabled": True, "cron": "0 3 * * *"})
    with running(s) as runtime:
        checks, info = runtime.readiness()
        assert runtime.ready and checks == {"db": True, "started": True, "writer": True, "serving": True}
        assert info == {"serving": {"default": "no model"}, "leader": True}  # the sole process on its file leads
        jobs = {j["id"] for j in runtime.scheduler.jobs()}
        assert jobs == {"drift-checks", "retrain-policy", "retrain-cron", "retention", "reference-rescore"}
        future = runtime.writer.submit_predictions(rows("a", "b"), "default")
    # the writer drained before the store closed: the acknowledged rows are in the file
    assert future.result(timeout=10).accepted == 2
    assert not runtime.ready and not runtime.writer.ready and not runtime.scheduler._scheduler.running
    with Store(s.db_path, read_only=True) as store:
        assert store.count_predictions() == 2


def test_a_failed_start_stops_what_had_started_and_closes_its_store(tmp_path):
    s = settings_for(tmp_path, retrain={"enabled": True})
    s.retrain.cron = "not a crontab"  # refused by the scheduler, after the writer and serving started
    runtime = Runtime.build(s)
    with pytest.raises(ValueError):
        runtime.start()
    assert not runtime.ready and not runtime.writer.ready
    with Store(s.db_path) as store:  # the file is free again: the runtime closed it
        assert store.count_predictions() == 0


def test_a_given_store_stays_open_after_stop(tmp_path):
    s = settings_for(tmp_path)
    with Store(s.db_path) as store:
        with running(s, store):
            pass
        assert int(store.query("SELECT 1 AS one")["one"][0]) == 1


def test_the_local_runtime_promotes_without_serving_and_closes_its_store(tmp_path):
    s = settings_for(tmp_path)
    with local(s) as runtime:
        assert runtime.retrain.serving is None  # no model is loaded in a process without a server
        runtime.store.schema_version()
    with local(s, read_only=True) as runtime, pytest.raises(StoreError):
        runtime.store.execute("CREATE TABLE t (x INT)")


def test_the_writer_and_the_runtime_do_not_import_the_web_framework():
    code = ("import sys, tuneloop.monitor.writer, tuneloop.monitor.metrics, tuneloop.monitor.runtime; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'typer')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
