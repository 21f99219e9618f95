"""Alert hysteresis, de-duplication and webhook delivery (real loopback receiver)."""

import json
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tuneloop.monitor.alerts import WebhookNotifier, ack_alert, list_alerts, update_alerts
from tuneloop.monitor.config import DriftSettings
from tuneloop.monitor.storage import Store


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "a.duckdb") as s:
        yield s


def record(store, drifted, metric="embedding_drift", value=None, window=(None, None)):
    check_id = int(store.query("SELECT nextval('drift_check_ids') AS i")["i"][0])
    ts = datetime(2026, 1, 1) + timedelta(minutes=check_id)  # one check a minute: the history order is exact
    store.execute(
        "INSERT INTO drift_checks VALUES (?, 'default', ?, ?, ?, 'v1', ?, ?, 0.5, ?, '{}', NULL)",
        [check_id, ts, *window, metric, value if value is not None else (0.9 if drifted else 0.1), drifted],
    )


def test_alert_opens_after_k_breaches_and_closes_after_k_clean(store):
    settings = DriftSettings(open_after=3, close_after=2)
    actions = []
    for drifted in [True, True, False, True, True, True, True, False, True, False, False, False]:
        record(store, drifted)
        actions.append([c.action for c in update_alerts(store, "default", ["embedding_drift"], settings)])
    assert actions == [[], [], [], [], [], ["opened"], [], [], [], [], ["closed"], []]
    alerts = list_alerts(store, "default")
    assert len(alerts) == 1 and alerts[0]["status"] == "closed"


def test_checks_of_the_same_rows_count_once(store):
    """Hysteresis needs breaches on disjoint windows: re-checking rows already judged is no new evidence."""
    settings = DriftSettings(open_after=2, close_after=2)
    t0 = datetime(2026, 1, 1)
    hour = timedelta(hours=1)
    first, overlapping = (t0, t0 + hour), (t0 + hour / 2, t0 + 1.5 * hour)
    actions = []
    for window in [first, first, overlapping, (t0 + 2 * hour, t0 + 3 * hour)]:
        record(store, True, window=window)
        actions.append([c.action for c in update_alerts(store, "default", ["embedding_drift"], settings)])
    assert actions == [[], [], [], ["opened"]]  # only the fourth window is disjoint from the one before


def test_sustained_breach_opens_one_alert_only(store):
    settings = DriftSettings(open_after=1, close_after=1)
    for _ in range(5):
        record(store, True)
        update_alerts(store, "default", ["embedding_drift"], settings)
    assert len(list_alerts(store, "default", "open")) == 1


def test_ack(store):
    record(store, True)
    (change,) = update_alerts(store, "default", ["embedding_drift"], DriftSettings(open_after=1))
    acked = ack_alert(store, change.alert_id, "ops")
    assert acked["acked_by"] == "ops" and acked["acked_at"] is not None
    assert ack_alert(store, 999, "ops") is None


class Receiver(BaseHTTPRequestHandler):
    received: list = []
    gate = threading.Event()
    """Held closed, the receiver does not answer: a delivery in progress, for as long as the test wants."""

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.gate.wait(60)
        Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_receives_alert_and_dead_webhook_does_not_block(store):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    live = f"http://127.0.0.1:{server.server_address[1]}/hook"
    dead = "http://127.0.0.1:9/never"  # discard port: connection refused
    settings = DriftSettings(open_after=1, webhooks=[live, dead], webhook_retries=2, webhook_timeout_seconds=120)
    notifier = WebhookNotifier(store, settings)
    Receiver.gate.clear()
    safety = threading.Timer(30, Receiver.gate.set)  # if notify() did block, it returns late, after delivering
    safety.start()
    try:
        record(store, True)
        changes = update_alerts(store, "default", ["embedding_drift"], settings)
        notifier.notify(changes)
        # the receiver has not answered yet, and notify() has returned: it never waits for a delivery
        assert Receiver.received == []
        assert store.query("SELECT count(*) AS n FROM alert_deliveries WHERE status <> 'pending'")["n"][0] == 0
        Receiver.gate.set()
        notifier.join(timeout=60)
        assert [m["action"] for m in Receiver.received] == ["opened"]
        assert Receiver.received[0]["kind"] == "embedding_drift"
        deliveries = store.query("SELECT url, status, attempts FROM alert_deliveries ORDER BY url")
        rows = {r.url: (r.status, r.attempts) for r in deliveries.itertuples()}
        assert rows[live] == ("delivered", 1)
        assert rows[dead] == ("failed", 3)
    finally:
        safety.cancel()
        Receiver.gate.set()
        notifier.stop()
        server.shutdown()
