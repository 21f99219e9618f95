"""``projects``: a created project's labels and per-project setting overrides, plus its counts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tuneloop.monitor.storage.repository import Repository

SUMMARY_COUNTS = ["predictions", "pending_embeddings", "last_prediction_ts", "feedback", "labelled",
                  "pending_feedback", "imported_reference", "model_versions", "champion", "open_alerts"]


class ProjectExistsError(Exception):
    """A project of that name is already stored."""


class ProjectRepository(Repository):
    """Rows of ``projects`` (``default`` is never stored: it comes from the configuration)."""

    def get(self, project: str) -> dict[str, Any] | None:
        """The stored row (labels and settings as JSON text), or None."""
        df = self._frame("SELECT * FROM projects WHERE project = ?", [project])
        return None if df.empty else df.to_dict("records")[0]

    def exists(self, project: str) -> bool:
        return bool(self._scalar("SELECT count(*) FROM projects WHERE project = ?", [project]))

    def names(self) -> list[str]:
        """Every stored project name (``default`` only if it was stored)."""
        return [r[0] for r in self._rows("SELECT project FROM projects")]

    def create(self, project: str, labels: list[str], created_at: datetime, settings: dict[str, Any] | None) -> None:
        """Insert a project; :class:`ProjectExistsError` when the name is taken (checked in the same transaction)."""
        with self.store.transaction() as cur:
            if cur.execute("SELECT count(*) FROM projects WHERE project = ?", [project]).fetchall()[0][0]:
                raise ProjectExistsError(project)
            cur.execute("INSERT INTO projects VALUES (?, ?, ?, ?)", [
                project, json.dumps(labels), created_at, json.dumps(settings) if settings else None]).fetchall()

    def prediction_counts(self) -> dict[str, int]:
        """Predictions per project, from the hourly rollup (no scan of ``predictions``)."""
        return {p: int(n) for p, n in self._rows(
            f"SELECT project, sum(n)::BIGINT AS n FROM {self.store.hourly_rows} GROUP BY project")}

    def summary_counts(self, project: str) -> dict[str, Any]:
        """The counts of :data:`SUMMARY_COUNTS` for one project, in one query."""
        row = self._rows(
            """
            SELECT
              (SELECT count(*) FROM predictions WHERE project = $1),
              (SELECT count(*) FROM predictions WHERE project = $1 AND embedding IS NULL),
              (SELECT max(ts) FROM predictions WHERE project = $1),
              (SELECT count(*) FROM feedback WHERE project = $1),
              (SELECT count(DISTINCT prediction_id) FROM feedback WHERE project = $1),
              (SELECT count(*) FROM pending_feedback WHERE project = $1),
              (SELECT count(*) FROM reference_rows WHERE project = $1 AND reference = 'imported'),
              (SELECT count(*) FROM model_versions WHERE project = $1),
              (SELECT min(version) FROM model_versions WHERE project = $1 AND status = 'champion'),
              (SELECT count(*) FROM alerts WHERE project = $1 AND status = 'open')
            """,
            [project],
        )[0]
        return dict(zip(SUMMARY_COUNTS, row, strict=True))

    def labelled_agreement(self, project: str, labels: list[str]) -> tuple[int, float | None]:
        """(latest labels within ``labels``, share of them the logged prediction matched)."""
        row = self._rows(
            f"""WITH fb AS ({self.store.latest_feedback_sql()})
                SELECT count(*), avg((p.label = fb.label)::INT) FROM fb JOIN predictions p
                  ON p.project = fb.project AND p.id = fb.prediction_id
                WHERE fb.label = ANY(?)""",
            [project, labels],
        )[0]
        return int(row[0]), None if row[1] is None else float(row[1])
