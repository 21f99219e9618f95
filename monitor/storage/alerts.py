"""Drift checks, alerts and webhook deliveries: what the monitor concluded and whom it told."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pandas as pd

from tuneloop.monitor.storage.clock import utcnow
from tuneloop.monitor.storage.repository import Repository
from tuneloop.monitor.storage.rows import records


class CheckRepository(Repository):
    """``drift_checks``: one row per metric of a check run, sharing the run's id."""

    def next_id(self) -> int:
        # DuckDB sequence; PostgreSQL: SELECT nextval('drift_check_ids') works the same.
        with self.store.transaction() as cur:
            return int(cur.execute("SELECT nextval('drift_check_ids')").fetchall()[0][0])

    def record(self, rows: list[list[Any]]) -> None:
        """Insert the given full rows (id, project, ts, window_start, window_end, reference, metric,
        value, threshold, drifted, details JSON, report_path) in one transaction."""
        with self.store.transaction() as cur:
            for row in rows:
                cur.execute("INSERT INTO drift_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row).fetchall()

    def history(self, project: str, metric: str, limit: int) -> pd.DataFrame:
        """The newest ``limit`` checks of one metric, newest first (what hysteresis reads)."""
        return self._frame(
            """SELECT drifted, value, threshold, window_start, window_end FROM drift_checks
               WHERE project = ? AND metric = ? ORDER BY ts DESC, id DESC LIMIT ?""",
            [project, metric, limit],
        )

    def latest_per_metric(self, project: str) -> pd.DataFrame:
        """The newest check of each metric of ``project``."""
        return self._frame(
            """SELECT metric, value, threshold, drifted, ts FROM (
                   SELECT *, row_number() OVER (PARTITION BY metric ORDER BY ts DESC, id DESC) AS newest
                   FROM drift_checks WHERE project = ?
               ) ranked WHERE newest = 1 ORDER BY metric""",
            [project],
        )

    def latest_all_projects(self) -> list[tuple[Any, ...]]:
        """(project, metric, value, threshold, drifted, epoch seconds, details) of each newest check."""
        return self._rows(
            """SELECT project, metric, value, threshold, drifted, extract(epoch FROM ts)::FLOAT8, details FROM (
                   SELECT *, row_number() OVER (PARTITION BY project, metric ORDER BY ts DESC, id DESC) AS newest
                   FROM drift_checks
               ) ranked WHERE newest = 1 ORDER BY project, metric"""
        )

    def recent(self, project: str, limit: int, metric: str | None = None,
               since: datetime | None = None) -> list[dict[str, Any]]:
        """Recorded checks of ``project``, newest first: details parsed (``{}`` when none), NULLs as None,
        and ``has_report`` instead of the report path (what ``GET /v1/checks`` answers)."""
        sql, params = "SELECT * FROM drift_checks WHERE project = ?", [project]
        if metric:
            sql += " AND metric = ?"
            params.append(metric)
        if since is not None:
            sql += " AND ts >= ?"
            params.append(since)
        items = records(self._frame(sql + " ORDER BY ts DESC, metric LIMIT ?", [*params, limit]), ("details",))
        for r in items:
            r["details"] = r["details"] or {}
            r["has_report"] = bool(r.pop("report_path"))
        return items

    def report_path(self, check_id: int) -> str | None:
        """The report file (relative to the reports dir) of a check run, if one was written."""
        return self._scalar(
            "SELECT report_path FROM drift_checks WHERE id = ? AND report_path IS NOT NULL LIMIT 1", [check_id]
        )


class AlertRepository(Repository):
    """``alerts``: at most one open alert per (project, kind)."""

    def open_id(self, project: str, kind: str) -> int | None:
        """The id of the open alert of ``kind`` in ``project``, if there is one."""
        found = self._scalar(
            "SELECT id FROM alerts WHERE project = ? AND kind = ? AND status = 'open'", [project, kind]
        )
        return None if found is None else int(found)

    def open(self, project: str, kind: str, severity: str, message: str, details: dict[str, Any]) -> int:
        """Open a new alert; returns its id."""
        with self.store.transaction() as cur:
            alert_id = int(cur.execute("SELECT nextval('alert_ids')").fetchall()[0][0])
            cur.execute(
                "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, 'open', NULL, NULL, NULL, ?)",
                [alert_id, project, utcnow(), kind, severity, message, json.dumps(details)],
            ).fetchall()
        return alert_id

    def close(self, alert_id: int) -> None:
        self._execute("UPDATE alerts SET status = 'closed', closed_at = ? WHERE id = ?", [utcnow(), alert_id])

    def list(self, project: str, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Alerts of ``project``, newest first, JSON details parsed and NULLs as None."""
        sql = "SELECT * FROM alerts WHERE project = ?"
        params: list[Any] = [project]
        if status:
            sql += " AND status = ?"
            params.append(status)
        return records(self._frame(sql + " ORDER BY ts DESC LIMIT ?", [*params, limit]), ("details",))

    def get(self, alert_id: int) -> dict[str, Any] | None:
        """One alert row as stored (details as JSON text), or None."""
        df = self._frame("SELECT * FROM alerts WHERE id = ?", [alert_id])
        return None if df.empty else df.to_dict("records")[0]

    def acknowledge(self, alert_id: int, who: str) -> None:
        """Record the first acknowledgement of an alert (later ones change nothing)."""
        self._execute("UPDATE alerts SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL",
                      [utcnow(), who, alert_id])

    def count_open(self, project: str, kinds: list[str] | None = None) -> int:
        sql = "SELECT count(*) FROM alerts WHERE project = ? AND status = 'open'"
        params: list[Any] = [project]
        if kinds:
            sql += " AND kind = ANY(?)"
            params.append(kinds)
        return int(self._scalar(sql, params))

    def open_by_severity(self) -> list[tuple[str, str, int]]:
        """(project, severity, count) of open alerts in every project."""
        return self._rows("SELECT project, severity, count(*) FROM alerts WHERE status = 'open' GROUP BY 1, 2")


class DeliveryRepository(Repository):
    """``alert_deliveries``: one row per (alert change, webhook), pending until tried."""

    def add_pending(self, deliveries: list[tuple[int, str]], queued_at: datetime) -> None:
        """Record (alert id, url) deliveries as pending, queued at ``queued_at``."""
        with self.store.transaction() as cur:
            cur.executemany("INSERT INTO alert_deliveries VALUES (?, ?, ?, 'pending', 0, NULL)",
                            [[alert_id, url, queued_at] for alert_id, url in deliveries])

    def pending(self) -> pd.DataFrame:
        """Pending deliveries with their alert; ``action`` is 'closed' when queued at or after the close."""
        return self._frame(
            """SELECT d.alert_id, d.url, d.ts,
                      CASE WHEN a.closed_at IS NOT NULL AND a.closed_at <= d.ts THEN 'closed' ELSE 'opened' END
                        AS action,
                      a.project, a.kind, a.message
               FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
               WHERE d.status = 'pending' ORDER BY d.ts""",
        )

    def finish(self, alert_id: int, url: str, queued_at: datetime, status: str, attempts: int,
               error: str | None) -> None:
        """Mark one pending delivery as tried."""
        self._execute(
            """UPDATE alert_deliveries SET ts = ?, status = ?, attempts = ?, error = ?
               WHERE alert_id = ? AND url = ? AND ts = ? AND status = 'pending'""",
            [utcnow(), status, attempts, error, alert_id, url, queued_at],
        )

    def for_alert(self, alert_id: int) -> pd.DataFrame:
        return self._frame("SELECT * FROM alert_deliveries WHERE alert_id = ? ORDER BY ts", [alert_id])
