"""Alerts from drift checks: hysteresis, de-duplication, and webhook delivery.

An alert for a metric opens when its last ``open_after`` checks on disjoint windows all breached
and closes after ``close_after`` clean ones in a row (a check of rows already judged is skipped);
at most one alert per (project, metric) is open at a time. Webhooks are delivered by a background
thread with retries and backoff, so a dead receiver never stalls a check; every delivery is
recorded in ``alert_deliveries`` (pending until tried, so a restart resumes it). Payload formats and
URL redaction: :mod:`tuneloop.monitor.webhooks`.
"""

from __future__ import annotations

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
from tuneloop.monitor.storage import Store, none_if_missing, utcnow
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
        history = disjoint_windows(store.checks.history(project, metric, depth * HISTORY_PER_STEP))
        flags = history["drifted"].tolist()
        open_id = store.alerts.open_id(project, metric)
        if open_id is None and len(flags) >= settings.open_after and all(flags[: settings.open_after]):
            last = history.iloc[0]
            message = (f"{metric} breached its threshold for {settings.open_after} consecutive checks "
                       f"(latest value {last['value']:.4g}, threshold {last['threshold']:.4g})")
            alert_id = store.alerts.open(
                project, metric, SEVERITY.get(metric, "warning"), message,
                {"value": float(last["value"]), "threshold": float(last["threshold"])},
            )
            changes.append(AlertChange(alert_id, project, metric, "opened", message))
        elif open_id is not None and len(flags) >= settings.close_after and not any(flags[: settings.close_after]):
            store.alerts.close(open_id)
            changes.append(AlertChange(open_id, project, metric, "closed",
                                       f"{metric} back under its threshold for {settings.close_after} checks"))
    return changes


def list_alerts(store: Store, project: str, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    return store.alerts.list(project, status, limit)


def ack_alert(store: Store, alert_id: int, who: str) -> dict[str, Any] | None:
    if store.alerts.get(alert_id) is None:
        return None
    store.alerts.acknowledge(alert_id, who)
    return store.alerts.get(alert_id)


def open_alert_count(store: Store, project: str, kinds: list[str] | None = None) -> int:
    return store.alerts.count_open(project, kinds)


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
                self.store.deliveries.add_pending([(c.alert_id, h.url) for c, h, _ in jobs], queued_at)
            except Exception:  # never fail the check because the delivery log could not be written
                log.exception("could not record pending webhook deliveries")
        for job in jobs:
            self._queue.put(job)

    def _resume_pending(self) -> None:
        """Queue the deliveries a previous process left pending (to webhooks still configured).

        A pending row queued at or after the alert closed announced the closing; before, the opening.
        """
        rows = self.store.deliveries.pending()
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
        found = self.store.alerts.get(change.alert_id) or {}
        closed = found.get("closed_at")
        return {**change.as_json(), "severity": found.get("severity", SEVERITY.get(change.kind, "warning")),
                "started_at": found.get("ts") or utcnow(),
                "ended_at": none_if_missing(closed)}

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
            self.store.deliveries.finish(alert_id, url, queued_at, status, attempts, error)
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
