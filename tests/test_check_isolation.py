"""Scheduled drift checks: one project's failure is recorded and alerted, and never stops the others."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tuneloop.monitor.alerts import list_alerts
from tuneloop.monitor.checks import DriftService
from tuneloop.monitor.config import load_settings
from tuneloop.monitor.projects import create_project
from tuneloop.monitor.storage import Store

BROKEN = {"drift": {"reference": "pinned", "pinned_start": "not a date", "pinned_end": "never"}}


def traffic(n: int, dim: int, labels: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": [f"p{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)],
                         "label": [labels[i % len(labels)] for i in range(n)], "confidence": 0.8,
                         "embedding": list(rng.normal(size=(n, dim)).astype(np.float32))})


def run_all(settings) -> Store:  # type: ignore[no-untyped-def]
    """One scheduled round of checks on a freshly opened store (as after a restart)."""
    store = Store(settings.db_path)
    service = DriftService(store, settings)
    try:
        service.run_all()
    finally:
        service.stop()
    return store


def test_a_failing_project_check_is_alerted_and_the_next_projects_still_run(tmp_path):
    settings = load_settings(paths={"data_dir": tmp_path}, drift={"window_size": 30})
    labels = settings.project.labels
    with Store(settings.db_path) as store:
        create_project(store, "broken", labels, settings=settings)  # sorts before "default"
        # Stored settings that no longer work (say, edited by hand): after a restart the check raises.
        store.execute("UPDATE projects SET settings = ? WHERE project = 'broken'", [json.dumps(BROKEN)])
        rows = traffic(60, settings.project.embedding_dim, labels)
        store.append_predictions(rows.iloc[:30])  # the first-traffic reference
        store.append_predictions(rows.iloc[30:])
    run_all(settings).close()
    with run_all(settings) as store:
        checked = store.query("SELECT DISTINCT id FROM drift_checks WHERE project = 'default'")
        assert len(checked) == 2  # both rounds reached the project after the failing one
        failed = [a for a in list_alerts(store, "broken") if a["kind"] == "check_failed"]
        assert len(failed) == 1 and failed[0]["status"] == "open"  # one alert, not one per round
        assert "not a date" in failed[0]["message"]
        store.execute("UPDATE projects SET settings = '{}' WHERE project = 'broken'")
    with run_all(settings) as store:  # the check works again (too little data is no failure): the alert closes
        failed = [a for a in list_alerts(store, "broken") if a["kind"] == "check_failed"]
        assert [a["status"] for a in failed] == ["closed"]
