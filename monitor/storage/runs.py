"""``retrain_runs``: one row per retrain run, from queued (or deferred) to its final status."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pandas as pd

from tuneloop.monitor.storage.clock import utcnow
from tuneloop.monitor.storage.repository import Repository
from tuneloop.monitor.storage.rows import is_missing, to_json

JSON_COLUMNS = ("metrics", "reasons")
PRIVATE_COLUMNS = ("log_path", "snapshot_path")
COLUMNS = {"id", "project", "started", "finished", "trigger", "status", "n_examples", "version", "metrics", "reasons",
           "log_path", "snapshot_path", "owner", "heartbeat"}
ACTIVE_STATUSES = ["queued", "running"]
QUEUE_LOCK = 0x7475_6E72
"""PostgreSQL transaction lock taken by :meth:`RunRepository.queue_if_idle`: replicas queue one at a time."""


def decode_run(row: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready run: JSON columns parsed, NULLs as None, numpy scalars as Python values, no file paths."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in PRIVATE_COLUMNS:
            continue
        if key in JSON_COLUMNS and isinstance(value, str):
            value = json.loads(value)
        elif not isinstance(value, list | dict) and is_missing(value):
            value = None
        elif isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        elif hasattr(value, "item"):
            value = value.item()
        out[key] = value
    return out


class RunRepository(Repository):
    """Rows of ``retrain_runs``; reads return :func:`decode_run` dicts."""

    def list(self, project: str | None, limit: int) -> list[dict[str, Any]]:
        """Runs (of ``project``, or of all projects with None), newest first."""
        sql, params = "SELECT * FROM retrain_runs", []
        if project is not None:
            sql += " WHERE project = ?"
            params.append(project)
        return [decode_run(r) for r in self._frame(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
                .to_dict("records")]

    def get(self, run_id: int) -> dict[str, Any] | None:
        df = self._frame("SELECT * FROM retrain_runs WHERE id = ?", [run_id])
        return None if df.empty else decode_run(df.to_dict("records")[0])

    def paths(self, run_id: int) -> tuple[str | None, str | None]:
        """(log_path, snapshot_path) of a run (None, None when unknown)."""
        rows = self._rows("SELECT log_path, snapshot_path FROM retrain_runs WHERE id = ?", [run_id])
        return rows[0] if rows else (None, None)

    def ids_with_status(self, statuses: list[str]) -> list[int]:
        return [int(r[0]) for r in self._rows("SELECT id FROM retrain_runs WHERE status = ANY(?)", [statuses])]

    def latest(self, project: str) -> tuple[int, str] | None:
        """(id, status) of the project's newest run."""
        rows = self._rows("SELECT id, status FROM retrain_runs WHERE project = ? ORDER BY id DESC LIMIT 1", [project])
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def last_finished_at(self, project: str) -> datetime | None:
        """When the project's last run that was not deferred finished."""
        value = self._scalar("SELECT max(finished) FROM retrain_runs WHERE project = ? AND status != 'deferred'",
                             [project])
        return None if is_missing(value) else pd.Timestamp(value).to_pydatetime()

    def last_finished_since(self, project: str, since: datetime, exclude: list[str]) -> dict[str, Any] | None:
        """(id, status, started) of the newest run started after ``since`` whose status is not in ``exclude``."""
        df = self._frame(
            "SELECT id, status, started FROM retrain_runs WHERE project = ? AND started > ? "
            "AND NOT (status = ANY(?)) ORDER BY id DESC LIMIT 1",
            [project, since, exclude])
        if df.empty:
            return None
        row = df.to_dict("records")[0]
        return {**row, "started": pd.Timestamp(row["started"]).to_pydatetime()}

    def latest_per_project(self) -> list[tuple[str, str, float]]:
        """(project, status, epoch seconds finished, or started while running) of each project's newest run."""
        return self._rows(
            """SELECT project, status, extract(epoch FROM coalesce(finished, started))::FLOAT8 FROM (
                   SELECT *, row_number() OVER (PARTITION BY project ORDER BY started DESC, id DESC) AS newest
                   FROM retrain_runs
               ) ranked WHERE newest = 1 ORDER BY project"""
        )

    def add_queued(self, project: str, trigger: str, paths: Callable[[int], tuple[str, str]]) -> int:
        """A new queued run; ``paths(run_id)`` gives its (log_path, snapshot_path). Returns the id."""
        with self.store.transaction() as cur:
            return self._insert_queued(cur, project, trigger, paths)

    @staticmethod
    def _insert_queued(cur: Any, project: str, trigger: str, paths: Callable[[int], tuple[str, str]]) -> int:
        run_id = int(cur.execute("SELECT nextval('retrain_run_ids')").fetchall()[0][0])
        log_path, snapshot_path = paths(run_id)
        cur.execute(
            "INSERT INTO retrain_runs (id, project, started, trigger, status, log_path, snapshot_path) "
            "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
            [run_id, project, utcnow(), trigger, log_path, snapshot_path],
        ).fetchall()
        return run_id

    def add_deferred(self, project: str, trigger: str, reasons: list[str], metrics: dict[str, Any],
                     now: datetime) -> int:
        """A new run recorded as ``deferred`` (refused before it started). Returns the id."""
        with self.store.transaction() as cur:
            run_id = int(cur.execute("SELECT nextval('retrain_run_ids')").fetchall()[0][0])
            cur.execute("INSERT INTO retrain_runs (id, project, started, finished, trigger, status, reasons, metrics) "
                        "VALUES (?, ?, ?, ?, ?, 'deferred', ?, ?)",
                        [run_id, project, now, now, trigger, json.dumps(reasons), json.dumps(metrics)]).fetchall()
        return run_id

    def update(self, run_id: int, **values: Any) -> None:
        """Set columns of one run (metrics and reasons given as objects, stored as JSON)."""
        unknown = set(values) - COLUMNS
        if unknown:
            raise ValueError(f"retrain_runs has no column {sorted(unknown)[0]!r}")
        cols = ", ".join(f"{k} = ?" for k in values)
        vals = [to_json(v) if k in JSON_COLUMNS else v for k, v in values.items()]
        self._execute(f"UPDATE retrain_runs SET {cols} WHERE id = ?", [*vals, run_id])

    def queue_if_idle(self, project: str, trigger: str,
                      paths: Callable[[int], tuple[str, str]]) -> tuple[int, str, bool]:
        """Queue a run unless one is queued or running (any project, any replica), in one transaction.

        Returns (run id, its project, True) for the new run, or (id, project, False) of the active one.
        On PostgreSQL the check and the insert run under a transaction lock, so two replicas queueing at
        the same moment get one run and one refusal.
        """
        with self.store.transaction() as cur:
            if self.store.dialect.name == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(?)", [QUEUE_LOCK]).fetchall()
            active = cur.execute("SELECT id, project FROM retrain_runs WHERE status = ANY(?) ORDER BY id LIMIT 1",
                                 [ACTIVE_STATUSES]).fetchall()
            if active:
                return int(active[0][0]), str(active[0][1]), False
            return self._insert_queued(cur, project, trigger, paths), project, True

    def unclaimed(self) -> list[tuple[int, str]]:
        """(id, project) of queued runs no replica has claimed yet, oldest first."""
        rows = self._rows("SELECT id, project FROM retrain_runs WHERE status = 'queued' AND owner IS NULL ORDER BY id")
        return [(int(r[0]), str(r[1])) for r in rows]

    def claim(self, run_id: int, owner: str) -> bool:
        """Make ``owner`` the replica that runs a queued, unclaimed run; False when another one was faster."""
        with self.store.transaction() as cur:
            rows = cur.execute("UPDATE retrain_runs SET owner = ?, heartbeat = ? "
                               "WHERE id = ? AND status = 'queued' AND owner IS NULL RETURNING id",
                               [owner, utcnow(), run_id]).fetchall()
        return bool(rows)

    def beat(self, owner: str) -> None:
        """``owner`` is alive: refresh the heartbeat of its queued or running runs."""
        self._execute("UPDATE retrain_runs SET heartbeat = ? WHERE owner = ? AND status = ANY(?)",
                      [utcnow(), owner, ACTIVE_STATUSES])

    def orphaned(self, silent_since: datetime) -> list[tuple[int, str | None]]:
        """(id, owner) of queued or running runs whose replica has not beaten since ``silent_since``
        (a claimed run without a heartbeat, or a running one without an owner, counts as silent)."""
        rows = self._rows(
            "SELECT id, owner FROM retrain_runs WHERE status = ANY(?) AND NOT (status = 'queued' AND owner IS NULL) "
            "AND (heartbeat IS NULL OR heartbeat < ?) ORDER BY id", [ACTIVE_STATUSES, silent_since])
        return [(int(r[0]), r[1]) for r in rows]

    def cancel_unclaimed(self, run_id: int, reason: str) -> bool:
        """Cancel a queued run no replica has claimed; False when it is claimed or no longer queued."""
        with self.store.transaction() as cur:
            rows = cur.execute("UPDATE retrain_runs SET status = 'cancelled', finished = ?, reasons = ? "
                               "WHERE id = ? AND status = 'queued' AND owner IS NULL RETURNING id",
                               [utcnow(), json.dumps([reason]), run_id]).fetchall()
        return bool(rows)
