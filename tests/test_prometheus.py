"""Model health in a real Prometheus: it scrapes tuneloop, and its query API sees a project's drift.

Debian's ``prometheus`` package provides ``prometheus`` and ``promtool``. Without them the tests
skip, except in CI (CI=true), where they fail with the same message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess as sp
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
DIM = 8
LABELS = ["negative", "neutral", "positive"]


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is missing (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def records(rng: np.random.Generator, n: int, centre: np.ndarray, labels: list[str], prefix: str) -> list[dict]:
    emb = centre + 0.3 * rng.standard_normal((n, DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return [{"id": f"{prefix}{i}", "text": f"{prefix} text {i}", "label": labels[i % len(labels)],
             "confidence": 0.8, "embedding": emb[i].round(5).tolist()} for i in range(n)]


@pytest.fixture
def shifted_server(running_server):  # type: ignore[no-untyped-def]
    """A server whose project ``reviews`` has 200 reference rows and 200 shifted rows, checked once."""
    srv = running_server(server={"metrics_public": False}, project={"embedding_dim": DIM, "labels": LABELS})
    rng = np.random.default_rng(7)
    with srv.client("admin") as c:
        r = c.post("/v1/projects", json={"project": "reviews", "labels": LABELS,
                                          "settings": {"drift": {"window_size": 200, "sample_size": 200,
                                                                 "checks": ["embedding_drift", "prediction_drift"]}}})
        assert r.status_code == 201, r.text
        before = np.eye(DIM)[0]
        after = np.eye(DIM)[1]
        for batch in (records(rng, 200, before, LABELS, "ref"), records(rng, 200, after, ["negative"], "new")):
            r = c.post("/v1/predictions", json={"project": "reviews", "records": batch})
            assert r.status_code == 200, r.text
        r = c.post("/v1/checks", params={"project": "reviews"})
        assert r.status_code == 200, r.text
    return srv


def test_prometheus_scrapes_drift_and_promtool_accepts_metrics_and_rules(shifted_server, tmp_path):
    prometheus, promtool = binary("prometheus"), binary("promtool")
    srv = shifted_server
    with srv.client("admin") as c:
        checks = {r["metric"]: r for r in c.get("/v1/checks", params={"project": "reviews"}).json()["items"]}
        exposition = c.get("/metrics").text
    assert checks["embedding_drift"]["drifted"] is True

    lint = sp.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rules = sp.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert rules.returncode == 0 and "SUCCESS" in rules.stdout, rules.stdout + rules.stderr

    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{str(RULES)!r}]\n"
        "scrape_configs:\n  - job_name: tuneloop\n    metrics_path: /metrics\n"
        f"    authorization: {{type: Bearer, credentials: {srv.tokens['admin']!r}}}\n"
        f"    static_configs: [{{targets: ['{srv.url.removeprefix('http://')}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = sp.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=sp.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    query = 'tuneloop_drift_value{project="reviews",check="embedding_drift"}'
    try:
        result = []
        deadline = time.monotonic() + 90
        while not result and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):  # not up yet
                result = httpx.get(f"{api}/query", params={"query": query}, timeout=5).json()["data"]["result"]
            time.sleep(0.5)
        log_tail = (tmp_path / "prometheus.log").read_text()[-2000:]
        assert result, f"Prometheus never returned the drift gauge:\n{log_tail}"
        assert float(result[0]["value"][1]) == pytest.approx(checks["embedding_drift"]["value"], rel=1e-9)

        def scalar(q: str) -> float:
            found = httpx.get(f"{api}/query", params={"query": q}, timeout=5).json()["data"]["result"]
            assert len(found) == 1, (q, found)
            return float(found[0]["value"][1])

        assert scalar('up{job="tuneloop"}') == 1
        assert scalar('tuneloop_drift_drifted{project="reviews",check="embedding_drift"}') == 1
        assert scalar('tuneloop_label_queue_size{project="reviews"}') == 400
        rule_names = {r["name"] for g in httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
                      for r in g["rules"]}
        assert {"TuneloopDrift", "TuneloopRetrainFailed"} <= rule_names
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def add_champion_run_and_accuracy(store) -> None:  # type: ignore[no-untyped-def]
    """What the shifted server lacks for every family to have a sample: a champion, a retrain, an accuracy check."""
    store.execute("INSERT INTO model_versions (project, version, created_at, status, path) VALUES ('reviews', 'v3', "
                  "now(), 'champion', '/nowhere')")
    store.execute(
        "INSERT INTO retrain_runs (id, project, started, finished, trigger, status) VALUES "
        "(nextval('retrain_run_ids'), 'reviews', TIMESTAMP '2026-01-02 03:04:05', TIMESTAMP '2026-01-02 03:14:05', "
        "'manual', 'failed')"
    )
    store.execute("INSERT INTO drift_checks VALUES (nextval('drift_check_ids'), 'reviews', now(), NULL, NULL, 'v3', "
                  "'labelled_accuracy', 0.71, 0.8, true, '{\"n_labelled\": 120}', NULL)")


def test_metrics_carry_model_health_and_standard_collectors(shifted_server):
    srv = shifted_server
    with srv.client(None) as anonymous:
        assert anonymous.get("/metrics").status_code == 401  # server.metrics_public = false
    add_champion_run_and_accuracy(srv.store)
    with srv.client("admin") as c:
        text = c.get("/metrics").text
    lines = set(text.splitlines())
    assert 'tuneloop_champion_info{project="reviews",version="v3"} 1.0' in lines
    assert 'tuneloop_retrain_last_failed{project="reviews"} 1.0' in lines
    assert 'tuneloop_retrain_last_status{project="reviews",status="failed"} 1.0' in lines
    assert 'tuneloop_retrain_last_timestamp_seconds{project="reviews"} 1.767323645e+09' in lines
    assert 'tuneloop_alerts_open{project="reviews",severity="critical"} 0.0' in lines
    assert 'tuneloop_drift_drifted{check="prediction_drift",project="reviews"} 1.0' in lines
    assert 'tuneloop_accuracy{kind="labelled",project="reviews"} 0.71' in lines
    assert 'tuneloop_accuracy_rows{kind="labelled",project="reviews"} 120.0' in lines
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)
    assert any(line.startswith("python_info{") for line in lines)


def test_grafana_dashboard_queries_only_exported_series(shifted_server):
    import json
    import re

    add_champion_run_and_accuracy(shifted_server.store)
    with shifted_server.client("admin") as c:
        exported = {line.split("{")[0].split(" ")[0] for line in c.get("/metrics").text.splitlines()
                    if line and not line.startswith("#")}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b(tuneloop_[a-z_]+)", e)}
    assert used and used <= exported, used - exported
