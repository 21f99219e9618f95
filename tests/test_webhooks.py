"""Webhook formats against captured receiver examples, restart-safe delivery, and URL redaction."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tuneloop.monitor.alerts import WebhookNotifier, update_alerts
from tuneloop.monitor.config import DriftSettings
from tuneloop.monitor.storage import Store, utcnow
from tuneloop.monitor.webhooks import redact_url

# The body Alertmanager 0.27's webhook receiver posted for one firing alert (webhook_config,
# send_resolved: true), as captured by a receiver; values shortened.
ALERTMANAGER_EXAMPLE = {
    "receiver": "web.hook",
    "status": "firing",
    "alerts": [{
        "status": "firing",
        "labels": {"alertname": "HighLatency", "instance": "api:8080", "job": "api", "severity": "warning"},
        "annotations": {"description": "p95 above 1 s for 10 minutes", "summary": "High latency"},
        "startsAt": "2024-05-13T09:41:27.3Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=latency&g0.tab=1",
        "fingerprint": "fbab788ec4c1018b",
    }],
    "groupLabels": {"alertname": "HighLatency"},
    "commonLabels": {"alertname": "HighLatency", "instance": "api:8080", "job": "api", "severity": "warning"},
    "commonAnnotations": {"description": "p95 above 1 s for 10 minutes", "summary": "High latency"},
    "externalURL": "http://alertmanager:9093",
    "version": "4",
    "groupKey": '{}:{alertname="HighLatency"}',
    "truncatedAlerts": 0,
}
# A Slack incoming-webhook message with a fallback text and Block Kit blocks (Slack's documented example).
SLACK_EXAMPLE = {
    "text": "Danny Torrence left a 1 star review for your property.",
    "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": "Danny Torrence left the following review:"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Property*\nThe Ritz"},
                                       {"type": "mrkdwn", "text": "*Rating*\n1 star"}]},
    ],
}


def shape(value):  # type: ignore[no-untyped-def]
    """Keys and JSON types, recursively (a list by the union of its items' shapes)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        merged: dict = {}
        for item in value:
            s = shape(item)
            merged = {**merged, **s} if isinstance(s, dict) else {"item": s}
        return [merged]
    return type(value).__name__


def assert_same_shape(got, example, free_keys=("labels", "annotations", "groupLabels", "commonLabels",
                                                "commonAnnotations")):  # type: ignore[no-untyped-def]
    """``got`` has every key of ``example`` with the same JSON type; maps of free keys need string values."""
    if isinstance(example, dict):
        assert isinstance(got, dict)
        for key, sub in example.items():
            assert key in got, f"missing {key}"
            if key in free_keys:
                assert all(isinstance(v, str) for v in got[key].values()), got[key]
            else:
                assert_same_shape(got[key], sub, free_keys)
    elif isinstance(example, list):
        assert isinstance(got, list) and got
        for item in got:
            # Slack blocks differ by type: compare to the example item of the same keys.
            candidates = [e for e in example if set(e) == set(item)] or example[:1]
            assert_same_shape(item, candidates[0], free_keys)
    else:
        assert type(got) is type(example), (got, example)


class Receiver(BaseHTTPRequestHandler):
    bodies: dict[str, list] = {}

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Receiver.bodies.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    Receiver.bodies = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    with Store(tmp_path / "w.duckdb") as s:
        yield s


def record_check(store: Store, drifted: bool) -> None:
    check_id = int(store.query("SELECT nextval('drift_check_ids') AS i")["i"][0])
    store.execute("INSERT INTO drift_checks VALUES (?, 'default', ?, NULL, NULL, 'v1', 'labelled_accuracy', ?, 0.8, ?, "
                  "'{}', NULL)", [check_id, utcnow(), 0.6 if drifted else 0.9, drifted])
    time.sleep(0.002)


def rfc3339(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, text
    return parsed


def test_each_format_matches_its_receivers_example(store, receiver):
    hooks = [{"url": f"{receiver}/{fmt}", "format": fmt} for fmt in ("json", "slack", "alertmanager")]
    settings = DriftSettings(open_after=1, close_after=1, webhooks=hooks, webhook_retries=0)
    notifier = WebhookNotifier(store, settings)
    try:
        record_check(store, True)
        notifier.notify(update_alerts(store, "default", ["labelled_accuracy"], settings))
        record_check(store, False)
        notifier.notify(update_alerts(store, "default", ["labelled_accuracy"], settings))
        notifier.join(20)
    finally:
        notifier.stop()
    assert [b["action"] for b in Receiver.bodies["/json"]] == ["opened", "closed"]

    slack = Receiver.bodies["/slack"]
    assert len(slack) == 2
    for body in slack:
        assert_same_shape(body, SLACK_EXAMPLE)
        assert "labelled_accuracy" in body["text"] and "default" in body["text"]

    fired, resolved = Receiver.bodies["/alertmanager"]
    for body in (fired, resolved):
        assert_same_shape(body, ALERTMANAGER_EXAMPLE)
        assert body["version"] == "4" and body["status"] == body["alerts"][0]["status"]
        assert body["alerts"][0]["labels"]["severity"] == "critical"
    assert (fired["status"], fired["alerts"][0]["endsAt"]) == ("firing", "0001-01-01T00:00:00Z")
    assert resolved["status"] == "resolved"
    started, ended = rfc3339(resolved["alerts"][0]["startsAt"]), rfc3339(resolved["alerts"][0]["endsAt"])
    assert started <= ended
    assert fired["alerts"][0]["fingerprint"] == resolved["alerts"][0]["fingerprint"]
    assert fired["groupKey"] == resolved["groupKey"]
    assert set(store.query("SELECT DISTINCT status FROM alert_deliveries")["status"]) == {"delivered"}


def test_pending_deliveries_are_retried_after_a_restart(store, receiver):
    settings = DriftSettings(open_after=1, webhooks=[{"url": f"{receiver}/am", "format": "alertmanager"}])
    crashed = WebhookNotifier(store, settings)
    crashed.stop()  # its delivery thread is gone, as after a crash: what it is given stays pending
    record_check(store, True)
    crashed.notify(update_alerts(store, "default", ["labelled_accuracy"], settings))
    assert store.query("SELECT status FROM alert_deliveries")["status"].tolist() == ["pending"]
    assert Receiver.bodies == {}

    restarted = WebhookNotifier(store, settings)
    try:
        restarted.join(20)
    finally:
        restarted.stop()
    (body,) = Receiver.bodies["/am"]
    assert body["status"] == "firing"
    rows = store.query("SELECT status, attempts FROM alert_deliveries").to_dict("records")
    assert rows == [{"status": "delivered", "attempts": 1}]


def test_failure_log_and_redaction_never_show_the_secret(store, caplog):
    secret = "http://127.0.0.1:9/services/T000/B000/XXXXSECRET"
    assert "SECRET" not in redact_url(secret) and redact_url(secret).startswith("http://127.0.0.1:9/")
    assert redact_url(secret) != redact_url(secret + "2")
    settings = DriftSettings(open_after=1, webhooks=[secret], webhook_retries=0, webhook_timeout_seconds=1)
    notifier = WebhookNotifier(store, settings)
    try:
        with caplog.at_level(logging.WARNING, logger="tuneloop.monitor.alerts"):
            record_check(store, True)
            notifier.notify(update_alerts(store, "default", ["labelled_accuracy"], settings))
            notifier.join(20)
    finally:
        notifier.stop()
    assert "failed after 1 attempts" in caplog.text
    assert "SECRET" not in caplog.text
