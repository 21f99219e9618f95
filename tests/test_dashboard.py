"""The Streamlit dashboard, page by page (Streamlit AppTest), against a real server on loopback.

The server holds seeded data (real tiny model versions, predictions, feedback, drift checks,
alerts, a retrain run — see ``dashboard_env.py``); the dashboard reads and writes only through
the HTTP API, and the tests check the server's side of every action through the API as well.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import free_port
from dashboard_env import shared_env
from job_control import held, running_job
from streamlit.testing.v1 import AppTest

from tuneloop.monitor.auth import list_tokens
from tuneloop.monitor.storage import Store

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


@pytest.fixture(scope="session")
def env(tmp_path_factory, request):
    return shared_env(tmp_path_factory, request)


@pytest.fixture
def dashboard(env, monkeypatch):
    """An AppTest factory: the dashboard signed in with the token of ``role`` (or a raw token / URL)."""

    def make(role: str = "admin", token: str | None = None, url: str | None = None) -> AppTest:
        monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
        monkeypatch.setenv("TUNELOOP_DASHBOARD__SERVER_URL", url or env.url)
        monkeypatch.setenv("TUNELOOP_DASHBOARD__TOKEN", token if token is not None else env.tokens[role])
        return AppTest.from_file(str(APP), default_timeout=60)

    return make


def api(env, role: str = "admin") -> httpx.Client:
    return httpx.Client(base_url=env.url, headers={"Authorization": f"Bearer {env.tokens[role]}"}, timeout=30)


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def figures(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def annotations(fig: dict) -> list[str]:
    return [a.get("text", "") for a in fig.get("layout", {}).get("annotations", [])]


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [s.value for s in at.success] + [w.value for w in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


# -- overview --------------------------------------------------------------------------------------


def test_overview_shows_champion_traffic_accuracy_drift_alerts_and_promotions(dashboard):
    at = dashboard().run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Champion"] == "v2"
    assert metrics["Predictions"] == "720"
    assert metrics["Open alerts"] != "0"
    # The label-free estimate is never a bare number: an interval, "unreliable" when its assumption broke, or
    # none (here: the tiny versions hold too few validation rows to calibrate it on rows they were not trained on).
    estimate = metrics["Estimated accuracy"]
    assert estimate in ("—", "unreliable") or re.fullmatch(r"\d+\.\d%–\d+\.\d%", estimate), estimate
    figs = figures(at)
    titles = [f["layout"]["title"]["text"] for f in figs]
    assert any("Traffic" in t for t in titles) and any("Accuracy" in t for t in titles)
    assert any("Drift" in t for t in titles)
    traffic = figs[titles.index(next(t for t in titles if "Traffic" in t))]
    assert {trace["name"] for trace in traffic["data"]} == {"v1", "v2"}, "traffic is stacked by model version"
    assert sum(v for trace in traffic["data"] for v in trace["y"] if v) == 720
    for fig in figs:  # both promotions (6 and 3 days ago) are marked inside the 7-day range, on every chart
        assert {"v1", "v2"} <= {a.strip() for a in annotations(fig)}
    assert at.dataframe, "open alerts are listed"


def test_estimate_is_read_with_its_interval_and_never_trusted_without_one():
    from tuneloop.dashboard.data import estimate_of

    ok = estimate_of(0.81, {"interval_95": [0.76, 0.86], "reliable": True, "unreliable_reasons": []})
    assert (ok.low, ok.high, ok.reliable, ok.reasons) == (0.76, 0.86, True, [])
    drifted = estimate_of(0.86, json.dumps({"interval_95": [0.8, 0.9], "reliable": False,
                                            "unreliable_reasons": ["inputs left the calibration data"]}))
    assert not drifted.reliable and drifted.reasons == ["inputs left the calibration data"]
    old = estimate_of(0.86, {"method": "isotonic_confidence_calibration"})  # recorded before intervals existed
    assert not old.reliable and old.low is None and "without an interval" in old.reasons[0]


def test_overview_time_range_hides_promotions_outside_it(dashboard):
    at = dashboard().run()
    at.segmented_control(key="ov_range").set_value("6 h").run()
    no_exceptions(at)
    for fig in figures(at):
        assert not {"v1", "v2"} & {a.strip() for a in annotations(fig)}


def test_auto_range_fits_the_data_with_minute_buckets_for_short_spans(env):
    from datetime import datetime, timedelta

    from tuneloop.dashboard.api import Api
    from tuneloop.dashboard.data import AUTO, auto_range, load_overview, utcnow

    now = datetime(2026, 1, 1, 12, 30, 45)
    assert auto_range(now - timedelta(minutes=12), now) == (datetime(2026, 1, 1, 12, 18), "minute", "minute")
    assert auto_range(None, now)[1:] == ("minute", "minute")
    assert auto_range(now - timedelta(hours=30), now)[1:] == ("hour", "day")
    assert auto_range(now - timedelta(hours=20), now)[1:] == ("hour", "hour")
    assert auto_range(now - timedelta(days=40), now)[1:] == ("day", "day")

    # the seeded server holds six days of traffic: the auto range starts at its first hour, hourly
    data = load_overview(Api(env.url, env.tokens["admin"]), AUTO)
    assert data.bucket == "hour" and data.stats["n"].sum() == 720
    assert data.since == data.stats["bucket"].min().to_pydatetime()

    # minute buckets (raw rows) agree with the hourly rollup over the same span
    since = (utcnow() - timedelta(hours=20)).replace(minute=0, second=0, microsecond=0)
    client = api(env)
    minutes = client.get("/v1/stats", params={"bucket": "minute", "since": since.isoformat()}).json()
    hours = client.get("/v1/stats", params={"bucket": "hour", "since": since.isoformat()}).json()
    assert minutes["bucket"] == "minute" and len(minutes["items"]) > len(hours["items"]) > 0
    assert sum(b["n"] for b in minutes["items"]) == sum(b["n"] for b in hours["items"])
    assert all(pd.Timestamp(b["bucket"]).second == 0 for b in minutes["items"])
    assert client.get("/v1/stats", params={"bucket": "second"}).status_code == 422


# -- drift -----------------------------------------------------------------------------------------


def test_drift_page_lists_checks_with_metrics_examples_and_report(dashboard, env):
    at = dashboard().run()
    at.switch_page("views/drift.py").run()
    no_exceptions(at)
    checks = api(env).get("/v1/checks").json()["items"]
    latest = max(c["id"] for c in checks)
    assert at.selectbox(key="drift_check").value == latest
    table = at.dataframe[0].value
    assert set(table["metric"]) == {c["metric"] for c in checks if c["id"] == latest}
    assert "drifted" in set(table["status"])
    assert figures(at), "trend chart"
    assert "farthest from the reference" in texts(at)
    examples = next(d.value for d in at.dataframe if "prediction id" in d.value.columns)
    assert len(examples) == 10 and examples["text"].notna().all()
    assert examples["text"].str.contains("coachella|festival|desert", regex=True).mean() > 0.5, "the new topic"
    assert any(c["has_report"] for c in checks if c["id"] == latest)
    (report,) = at.get("iframe")
    assert "evidently" in report.proto.srcdoc.lower(), "the Evidently report is embedded"


def test_run_checks_now_adds_a_check(dashboard, env):
    before = {c["id"] for c in api(env).get("/v1/checks").json()["items"]}
    at = dashboard().run()
    at.switch_page("views/drift.py").run()
    at.button(key="drift_run").click().run(timeout=120)
    no_exceptions(at)
    after = {c["id"] for c in api(env).get("/v1/checks").json()["items"]}
    assert len(after - before) == 1
    assert at.selectbox(key="drift_check").value == max(after)


# -- label -----------------------------------------------------------------------------------------


def true_label(env, prediction_id: str) -> str | None:
    """The prediction's current label through the API (latest feedback; None when unlabelled)."""
    r = api(env).get("/v1/predictions", params={"labelled": "true", "limit": 1000})
    r.raise_for_status()
    return next((p["true_label"] for p in r.json()["items"] if p["id"] == prediction_id), None)


def test_label_page_labels_skips_and_undoes_through_the_api(dashboard, env):
    at = dashboard("label").run()
    at.switch_page("views/label.py").run()
    no_exceptions(at)
    queue = at.session_state["label_queue"]
    first = queue.current()
    assert first is not None and at.metric
    at.button(key="lab_negative").click().run()
    no_exceptions(at)
    assert true_label(env, first["prediction_id"]) == "negative"
    second = at.session_state["label_queue"].current()
    assert second["prediction_id"] != first["prediction_id"]
    at.button(key="lab_skip").click().run()
    third = at.session_state["label_queue"].current()
    assert third["prediction_id"] not in (first["prediction_id"], second["prediction_id"])
    at.button(key="lab_undo").click().run()  # undoes the skip
    assert at.session_state["label_queue"].current()["prediction_id"] == second["prediction_id"]
    at.button(key="lab_undo").click().run()  # undoes the label: the first item is back, its feedback retracted
    assert at.session_state["label_queue"].current()["prediction_id"] == first["prediction_id"]
    assert true_label(env, first["prediction_id"]) is None
    at.button(key="lab_positive").click().run()
    assert true_label(env, first["prediction_id"]) == "positive"
    no_exceptions(at)


# -- models ----------------------------------------------------------------------------------------


def champion(env) -> str:
    return api(env).get("/v1/models").json()["champion"]


def test_models_page_shows_versions_gate_reasons_and_runs(dashboard):
    at = dashboard().run()
    at.switch_page("views/models.py").run()
    no_exceptions(at)
    tables = [d.value for d in at.dataframe]
    versions = next(t for t in tables if "gate / reasons" in t.columns)
    assert list(versions["version"]) == ["v1", "v2", "v3", "v4"]
    assert "margin" in " ".join(versions["gate / reasons"])
    side_by_side = next(t for t in tables if "v2 (champion)" in t.columns)
    assert list(side_by_side.columns)[:3] == ["v2 (champion)", "v4 (challenger)", "v3 (rejected)"]
    assert side_by_side.index[0].endswith("accuracy"), "quality metrics first"
    runs = next(t for t in tables if "trigger" in t.columns)
    assert 1 in list(runs["run"])
    assert "[evaluate]" in "\n".join(c.value for c in at.code)


def test_promote_and_roll_back_ask_first_then_hot_swap(dashboard, env):
    assert champion(env) == "v2"
    at = dashboard().run()
    at.switch_page("views/models.py").run()
    assert at.selectbox(key="models_target").value == "v4", "the waiting challenger is offered first"
    at.button(key="models_promote").click().run()
    assert champion(env) == "v2", "nothing happens before the confirmation"
    at.button(key="confirm_yes").click().run(timeout=120)
    no_exceptions(at)
    assert champion(env) == "v4"
    at.button(key="models_rollback").click().run()
    at.button(key="confirm_no").click().run()
    assert champion(env) == "v4", "cancel does nothing"
    at.button(key="models_rollback").click().run()
    at.button(key="confirm_yes").click().run(timeout=120)
    no_exceptions(at)
    assert champion(env) == "v2"


def test_retrain_now_starts_a_run_that_shows_live_and_can_be_cancelled(dashboard, env):
    before = {r["id"] for r in api(env).get("/v1/retrain/runs").json()["items"]}
    at = dashboard().run()
    at.switch_page("views/models.py").run()
    at.button(key="models_retrain").click().run()
    assert {r["id"] for r in api(env).get("/v1/retrain/runs").json()["items"]} == before, "asks first"
    at.button(key="confirm_yes").click().run()
    no_exceptions(at)
    (run_id,) = {r["id"] for r in api(env).get("/v1/retrain/runs").json()["items"]} - before
    with held(running_job(api(env), run_id)["pid"]):  # the tiny job cannot finish before the cancel lands
        at.run()
        assert at.selectbox(key="models_run_pick").value == run_id
        assert f"Run {run_id}" in texts(at)
        at.button(key=f"cancel_{run_id}").click().run()
        at.button(key="confirm_yes").click().run()
        no_exceptions(at)
    deadline = time.monotonic() + 60
    while (status := api(env).get(f"/v1/retrain/runs/{run_id}").json()["status"]) not in ("cancelled", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status == "cancelled"


def test_label_token_sees_admin_buttons_disabled_with_a_reason(dashboard):
    at = dashboard("label").run()
    at.switch_page("views/models.py").run()
    no_exceptions(at)
    for key in ("models_retrain", "models_promote", "models_rollback"):
        button = at.button(key=key)
        assert button.disabled and "role 'admin'" in button.help
    at.switch_page("views/drift.py").run()
    assert at.button(key="drift_run").disabled


# -- alerts ----------------------------------------------------------------------------------------


def test_acknowledge_an_alert(dashboard, env):
    open_alerts = api(env).get("/v1/alerts", params={"status": "open"}).json()["items"]
    target = next(a for a in open_alerts if not a["acked_at"])
    at = dashboard("label").run()
    at.switch_page("views/alerts.py").run()
    no_exceptions(at)
    at.button(key=f"ack_{target['id']}").click().run()
    no_exceptions(at)
    acked = next(a for a in api(env).get("/v1/alerts").json()["items"] if a["id"] == target["id"])
    assert acked["acked_by"] == "test-label" and acked["acked_at"]
    with pytest.raises(KeyError):
        at.button(key=f"ack_{target['id']}")
    at.segmented_control(key="alerts_status").set_value("closed").run()
    no_exceptions(at)


# -- connection problems: a banner, never a traceback ---------------------------------------------


def test_unreachable_server_shows_a_banner(dashboard):
    at = dashboard(url=f"http://127.0.0.1:{free_port()}").run()
    no_exceptions(at)
    assert "Server unreachable" in at.error[0].value and "tuneloop serve" in at.error[0].value


def test_unknown_token_shows_a_banner(dashboard):
    at = dashboard(token="tl_admin_not-a-real-token").run()
    no_exceptions(at)
    assert "Not authorised" in at.error[0].value and "tuneloop token create" in at.error[0].value


def test_ingest_token_is_told_the_role_it_needs(dashboard):
    at = dashboard("ingest").run()
    no_exceptions(at)
    assert "Role too low" in at.error[0].value and "'label'" in at.error[0].value


# -- the commands that start it ----------------------------------------------------------------------


def test_tuneloop_up_serves_both_prints_urls_and_stops_on_sigterm(tmp_path):
    server_port, dash_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.monitor.cli", "--data-dir", "d", "up", "--port", str(server_port),
         "--dashboard-port", str(dash_port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        out = "".join(lines)
        assert f"server:    http://127.0.0.1:{server_port}" in out and f"dashboard: http://127.0.0.1:{dash_port}" in out
        assert httpx.get(f"http://127.0.0.1:{server_port}/healthz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{dash_port}/_stcore/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{dash_port}/_stcore/health", timeout=2)
    with Store(tmp_path / "d" / "tuneloop.duckdb", read_only=True) as store:
        (token,) = list_tokens(store)
    assert token["role"] == "admin" and "tuneloop up" in token["name"] and token["revoked_at"] is not None


def test_tuneloop_dashboard_starts_streamlit_on_the_given_port(tmp_path):
    port, server_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.monitor.cli", "dashboard", "--port", str(port),
         "--server-url", f"http://127.0.0.1:{server_port}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first and f"server http://127.0.0.1:{server_port}" in first
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "streamlit did not start"
                time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    with pytest.raises(httpx.HTTPError):  # Streamlit stopped with it, not orphaned
        httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
