"""Alerts from drift checks: hysteresis, de-duplication, and webhook delivery.

An alert for a metric opens when its last ``open_after`` checks on disjoint windows all breached
and closes after ``close_after`` clean ones in a row (a check of rows already judged is skipped);
at most one alert per (project, metric) is open at a time. Webhooks are delivered by a background
thread with retries and backoff, so a dead receiver never stalls a check; every attempt's outcome
is recorded in ``alert_deliveries``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pandas as pd

from tuneloop.monitor.config import DriftSettings
from tuneloop.monitor.store import Store, utcnow

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
    """Posts alert changes to the configured URLs from a background thread, with retries."""

    def __init__(self, store: Store, settings: DriftSettings) -> None:
        self.store = store
        self.settings = settings
        self._queue: queue.Queue[AlertChange | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tuneloop-webhooks", daemon=True)
        self._thread.start()

    def notify(self, changes: list[AlertChange]) -> None:
        if self.settings.webhooks:
            for change in changes:
                self._queue.put(change)

    def _run(self) -> None:
        with httpx.Client(timeout=self.settings.webhook_timeout_seconds) as client:
            while (change := self._queue.get()) is not None:
                for url in self.settings.webhooks:
                    self._deliver(client, url, change)
                self._queue.task_done()

    def _deliver(self, client: httpx.Client, url: str, change: AlertChange) -> None:
        error = None
        attempts = 0
        for attempt in range(self.settings.webhook_retries + 1):
            attempts = attempt + 1
            try:
                r = client.post(url, json=change.as_json())
                if r.status_code < 300:
                    error = None
                    break
                error = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
            time.sleep(min(0.2 * 2**attempt, 5.0))
        try:
            self.store.execute(
                "INSERT INTO alert_deliveries VALUES (?, ?, ?, ?, ?, ?)",
                [change.alert_id, url, utcnow(), "failed" if error else "delivered", attempts, error],
            )
        except Exception:  # the store may be closing; delivery outcome is best effort
            log.warning("could not record webhook delivery for alert %s", change.alert_id)
        if error:
            log.warning("webhook %s failed after %d attempts: %s", url, attempts, error)

    def join(self, timeout: float = 10.0) -> None:
        """Wait until queued deliveries are done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)
