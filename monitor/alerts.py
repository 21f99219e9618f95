"""Alerts from drift checks: hysteresis, de-duplication, and webhook delivery.

An alert for a metric opens when its last ``open_after`` checks on disjoint windows all breached
and closes after ``close_after`` clean ones in a row (a check of rows already judged is skipped);
at most one alert per (project, metric) is open at a time. Webhooks are delivered by a background
thread with retries and backoff, so a dead receiver never stalls a check; every delivery is
recorded in ``alert_deliveries`` (pending until tried, so a restart resumes it). Payload formats and
URL redaction: :mod:`tuneloop.monitor.webhooks`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pandas as pd

from tuneloop.monitor.config import DriftSettings
from tuneloop.monitor.storage import Store, utcnow
from tuneloop.monitor.webhooks import Webhook, as_webhook, payload, redact_url

log = logging.getLogger(__name__)

SEVERITY = {"embedding_drift": "warning", "prediction_drift": "warning", "labelled_accuracy": "critical",
            "estimated_accuracy": "critical"}


@dataclass(frozen=True)
class AlertChange:
    alert_id: int
    project: str
    kind: str
    action: str  # "opened" | "closed"
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "project": self.project, "kind": self.kind, "action": self.action,
                "message": self.message, "ts": utcnow().isoformat()}


HISTORY_PER_STEP = 25
"""Recorded checks read per hysteresis step (checks on overlapping windows are skipped, see below)."""


def disjoint_windows(history: pd.DataFrame) -> pd.DataFrame:
    """The newest check, then each older one whose window ended before the last kept one started.

    Two checks of the same rows (no new traffic between scheduled runs, or a count window that
    slides by a few rows) are one piece of evidence, not two: counting them twice would let one
    unlucky window open an alert on its own. Checks without a recorded window all count.
    """
    keep, start = [], None
    for i, row in enumerate(history.itertuples(index=False)):
        end = row.window_end
        if start is None or pd.isna(end) or pd.isna(start) or end < start:
            keep.append(i)
            start = row.window_start
    return history.iloc[keep].reset_index(drop=True)


def update_alerts(store: Store, project: str, metrics: list[str], settings: DriftSettings) -> list[AlertChange]:
    """Open or close alerts for ``metrics`` from the recorded history of drift checks."""
    changes: list[AlertChange] = []
    depth = max(settings.open_after, settings.close_after)
    for metric in metrics:
        history = disjoint_windows(store.query(
            """SELECT drifted, value, threshold, window_start, window_end FROM drift_checks
               WHERE project = ? AND metric = ? ORDER BY ts DESC, id DESC LIMIT ?""",
            [project, metric, depth * HISTORY_PER_STEP],
        ))
        flags = history["drifted"].tolist()
        open_alert = store.query(
            "SELECT id FROM alerts WHERE project = ? AND kind = ? AND status = 'open'", [project, metric]
        )
        if open_alert.empty and len(flags) >= settings.open_after and all(flags[: settings.open_after]):
            last = history.iloc[0]
            message = (f"{metric} breached its threshold for {settings.open_after} consecutive checks "
                       f"(latest value {last['value']:.4g}, threshold {last['threshold']:.4g})")
            with store.transaction() as cur:
                alert_id = cur.execute("SELECT nextval('alert_ids')").fetchall()[0][0]
                cur.execute(
                    "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, 'open', NULL, NULL, NULL, ?)",
                    [alert_id, project, utcnow(), metric, SEVERITY.get(metric, "warning"), message,
                     json.dumps({"value": float(last["value"]), "threshold": float(last["threshold"])})],
                ).fetchall()
            changes.append(AlertChange(int(alert_id), project, metric, "opened", message))
        elif (not open_alert.empty and len(flags) >= settings.close_after
              and not any(flags[: settings.close_after])):
            alert_id = int(open_alert["id"][0])
            store.execute("UPDATE alerts SET status = 'closed', closed_at = ? WHERE id = ?", [utcnow(), alert_id])
            changes.append(AlertChange(alert_id, project, metric, "closed",
                                       f"{metric} back under its threshold for {settings.close_after} checks"))
    return changes


def list_alerts(store: Store, project: str, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    sql = "SELECT * FROM alerts WHERE project = ?"
    params: list[Any] = [project]
    if status:
        sql += " AND status = ?"
        params.append(status)
    df = store.query(sql + " ORDER BY ts DESC LIMIT ?", [*params, limit])
    out = []
    for r in df.to_dict("records"):
        r["details"] = json.loads(r["details"]) if r.get("details") else None
        out.append({k: (None if v is None or v != v else v) for k, v in r.items()})
    return out


def ack_alert(store: Store, alert_id: int, who: str) -> dict[str, Any] | None:
    found = store.query("SELECT id FROM alerts WHERE id = ?", [alert_id])
    if found.empty:
        return None
    store.execute("UPDATE alerts SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL",
                  [utcnow(), who, alert_id])
    return store.query("SELECT * FROM alerts WHERE id = ?", [alert_id]).to_dict("records")[0]


def open_alert_count(store: Store, project: str, kinds: list[str] | None = None) -> int:
    sql = "SELECT count(*) AS n FROM alerts WHERE project = ? AND status = 'open'"
    params: list[Any] = [project]
    if kinds:
        sql += " AND list_contains(?, kind)"
        params.append(kinds)
    return int(store.query(sql, params)["n"][0])


class WebhookNotifier:
    """Posts alert changes to the configured webhooks from a background thread, with retries.

    Each (change, webhook) is first written to ``alert_deliveries`` as ``pending`` and updated to
    ``delivered`` or ``failed`` once tried, so deliveries still pending when the process stopped are
    retried when it starts again. URLs appear in logs only redacted.
    """

    def __init__(self, store: Store, settings: DriftSettings, external_url: str = "") -> None:
        self.store = store
        self.settings = settings
        self.external_url = external_url
        self.webhooks = {w.url: w for w in map(as_webhook, settings.webhooks)}
        self._queue: queue.Queue[tuple[AlertChange, Webhook, datetime] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tuneloop-webhooks", daemon=True)
        self._resume_pending()
        self._thread.start()

    def notify(self, changes: list[AlertChange]) -> None:
        if not self.webhooks:
            return
        queued_at = utcnow()
        jobs = [(change, hook, queued_at) for change in changes for hook in self.webhooks.values()]
        if jobs:
            try:
                with self.store.transaction() as cur:
                    cur.executemany("INSERT INTO alert_deliveries VALUES (?, ?, ?, 'pending', 0, NULL)",
                                    [[c.alert_id, h.url, queued_at] for c, h, _ in jobs])
            except Exception:  # never fail the check because the delivery log could not be written
                log.exception("could not record pending webhook deliveries")
        for job in jobs:
            self._queue.put(job)

    def _resume_pending(self) -> None:
        """Queue the deliveries a previous process left pending (to webhooks still configured).

        A pending row queued at or after the alert closed announced the closing; before, the opening.
        """
        rows = self.store.query(
            """SELECT d.alert_id, d.url, d.ts,
                      CASE WHEN a.closed_at IS NOT NULL AND a.closed_at <= d.ts THEN 'closed' ELSE 'opened' END
                        AS action,
                      a.project, a.kind, a.message
               FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
               WHERE d.status = 'pending' ORDER BY d.ts""",
        )
        for r in rows.itertuples():
            hook = self.webhooks.get(r.url)
            if hook is None:
                self._finish(int(r.alert_id), r.url, r.ts, "dropped", 0, "webhook no longer configured")
                continue
            change = AlertChange(int(r.alert_id), r.project, r.kind, r.action, r.message)
            self._queue.put((change, hook, r.ts.to_pydatetime()))
        if len(rows):
            log.info("retrying %d webhook deliveries left pending", len(rows))

    def _run(self) -> None:
        with httpx.Client(timeout=self.settings.webhook_timeout_seconds) as client:
            while (job := self._queue.get()) is not None:
                try:
                    self._deliver(client, *job)
                except Exception:  # one bad delivery must not stop the thread
                    log.exception("webhook delivery crashed")
                finally:
                    self._queue.task_done()

    def _event(self, change: AlertChange) -> dict[str, Any]:
        """tuneloop's JSON for the change, plus what the other formats need from the alert row."""
        row = self.store.query("SELECT ts, closed_at, severity, details FROM alerts WHERE id = ?", [change.alert_id])
        found = row.to_dict("records")[0] if len(row) else {}
        closed = found.get("closed_at")
        return {**change.as_json(), "severity": found.get("severity", SEVERITY.get(change.kind, "warning")),
                "started_at": found.get("ts") or utcnow(),
                "ended_at": None if closed is None or closed != closed else closed}

    def _deliver(self, client: httpx.Client, change: AlertChange, hook: Webhook, queued_at: datetime) -> None:
        body = payload(hook.format, self._event(change), self.external_url)
        error = None
        attempts = 0
        for attempt in range(self.settings.webhook_retries + 1):
            attempts = attempt + 1
            try:
                r = client.post(hook.url, json=body)
                if r.status_code < 300:
                    error = None
                    break
                error = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                error = type(e).__name__  # the message may repeat the URL
            time.sleep(min(0.2 * 2**attempt, 5.0))
        self._finish(change.alert_id, hook.url, queued_at, "failed" if error else "delivered", attempts, error)
        if error:
            log.warning("webhook %s failed after %d attempts: %s", redact_url(hook.url), attempts, error)

    def _finish(self, alert_id: int, url: str, queued_at: datetime, status: str, attempts: int,
                error: str | None) -> None:
        try:
            self.store.execute(
                """UPDATE alert_deliveries SET ts = ?, status = ?, attempts = ?, error = ?
                   WHERE alert_id = ? AND url = ? AND ts = ? AND status = 'pending'""",
                [utcnow(), status, attempts, error, alert_id, url, queued_at],
            )
        except Exception:  # the store may be closing; the row stays pending and is retried at start
            log.warning("could not record webhook delivery for alert %s", alert_id)

    def join(self, timeout: float = 10.0) -> None:
        """Wait until queued deliveries are done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)
