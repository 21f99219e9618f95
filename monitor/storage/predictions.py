"""Predictions and feedback beyond the ingest path (which stays in :class:`Store`): pages for export,
per-minute stats, label-queue candidates, embeddings written back, and matching imported labels.

"Latest label per prediction" is :meth:`Store.latest_feedback_sql` everywhere (human beats import
beats rule, then newest), so every reader agrees on which label counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from tuneloop.monitor.storage.repository import Repository
from tuneloop.monitor.storage.rows import is_missing

EXPORT_COLUMNS = "p.id, p.ts, p.model_version, p.text, p.label, p.confidence, p.probs, p.latency_ms, p.metadata"


class PredictionRepository(Repository):
    """Reads and upkeep of ``predictions`` (with their latest feedback where it matters)."""

    # -- existence and counts ------------------------------------------------------------------
    def existing_ids(self, project: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` have a stored prediction in ``project``."""
        return {r[0] for r in self._rows("SELECT id FROM predictions WHERE project = ? AND id = ANY(?)",
                                         [project, list(set(ids))])}

    def count_per_project(self) -> dict[str, int]:
        return dict(self._rows("SELECT project, count(*) FROM predictions GROUP BY project"))

    def count_unlabelled(self, project: str) -> int:
        """Predictions of ``project`` without any stored label (two counts, no join)."""
        row = self._rows(
            """SELECT (SELECT count(*) FROM predictions WHERE project = $1),
                      (SELECT count(DISTINCT prediction_id) FROM feedback WHERE project = $1)""",
            [project],
        )[0]
        return max(0, int(row[0]) - int(row[1]))

    def labelled_per_project(self) -> dict[str, int]:
        """Distinct labelled predictions per project."""
        return dict(self._rows("SELECT project, count(DISTINCT prediction_id) FROM feedback GROUP BY project"))

    # -- windows the drift checks and the label queue read ----------------------------------------
    def first_traffic(self, project: str, limit: int) -> pd.DataFrame:
        """The first ``limit`` predictions of ``project`` by arrival (the fallback reference)."""
        return self._frame(
            """SELECT p.id, p.ts, p.model_version, p.text, p.label, p.confidence, p.probs, p.embedding
               FROM predictions p WHERE p.project = ? ORDER BY p.ingest_seq, p.ts, p.id LIMIT ?""",
            [project, limit],
        )

    def before_promotion(self, project: str, version: str, limit: int) -> pd.DataFrame:
        """The last ``limit`` embedded predictions logged before ``version`` was promoted, in time order."""
        df = self._frame(
            """SELECT p.id, p.ts, p.text, p.embedding FROM predictions p
               JOIN model_versions v ON v.project = p.project AND v.version = ? AND v.promoted_at IS NOT NULL
               WHERE p.project = ? AND p.ts < v.promoted_at AND p.embedding IS NOT NULL
               ORDER BY p.ingest_seq DESC, p.ts DESC, p.id DESC LIMIT ?""",
            [version, project, limit],
        )
        return df.iloc[::-1].reset_index(drop=True)

    def nth_newest_seq(self, project: str, n: int) -> int:
        """The arrival sequence number of the ``n``-th newest prediction (1 = newest)."""
        return int(self._scalar(
            "SELECT ingest_seq FROM predictions WHERE project = ? ORDER BY ingest_seq DESC LIMIT 1 OFFSET ?",
            [project, n - 1]))

    def unlabelled_since_seq(self, project: str, floor: int, limit: int, with_embedding: bool) -> pd.DataFrame:
        """The ``limit`` newest predictions with ``ingest_seq >= floor`` and no feedback, not even pending."""
        emb = ", p.embedding" if with_embedding else ""
        return self._embedding_frame(
            f"""SELECT p.id, p.ts, p.model_version, p.text, p.label, p.confidence, p.margin, p.probs{emb}
                FROM predictions p
                WHERE p.project = ? AND p.ingest_seq >= ?
                  AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.project = p.project AND f.prediction_id = p.id)
                  AND NOT EXISTS (SELECT 1 FROM pending_feedback f
                                  WHERE f.project = p.project AND f.prediction_id = p.id)
                ORDER BY p.ingest_seq DESC, p.ts DESC
                LIMIT ?""",
            [project, floor, limit],
        )

    def first_embeddings(self, project: str, limit: int) -> pd.DataFrame:
        """The embeddings of the first ``limit`` embedded predictions by arrival."""
        return self._embedding_frame(
            """SELECT embedding FROM predictions WHERE project = ? AND embedding IS NOT NULL
               ORDER BY ingest_seq LIMIT ?""",
            [project, limit],
        )

    # -- export and stats ---------------------------------------------------------------------------
    def page(self, project: str, *, since: datetime | None = None, until: datetime | None = None,
             model_version: str | None = None, labelled: bool | None = None,
             after: tuple[datetime, str] | None = None, descending: bool = True, include_embedding: bool = False,
             limit: int = 100) -> pd.DataFrame:
        """Up to ``limit`` predictions with their latest label (``true_label``, ``feedback_source``,
        ``feedback_ts``), ordered on ``(ts, id)``; ``after`` is the keyset position to continue from."""
        where = ["p.project = ?"]
        params: list[Any] = [project, project]
        if since is not None:
            where.append("p.ts >= ?")
            params.append(since)
        if until is not None:
            where.append("p.ts < ?")
            params.append(until)
        if model_version is not None:
            where.append("p.model_version = ?")
            params.append(model_version)
        if labelled is not None:
            where.append("fb.label IS NOT NULL" if labelled else "fb.label IS NULL")
        if after is not None:
            where.append("(p.ts, p.id) < (?, ?)" if descending else "(p.ts, p.id) > (?, ?)")
            params += list(after)
        emb = ", p.embedding" if include_embedding else ""
        direction = "DESC" if descending else "ASC"
        return self._frame(
            f"""
            WITH fb AS ({self.store.latest_feedback_sql()})
            SELECT {EXPORT_COLUMNS}{emb},
                   fb.label AS true_label, fb.source AS feedback_source, fb.ts AS feedback_ts
            FROM predictions p LEFT JOIN fb ON p.id = fb.prediction_id
            WHERE {" AND ".join(where)}
            ORDER BY p.ts {direction}, p.id {direction}
            LIMIT ?
            """,
            [*params, limit],
        )

    def traffic_per_minute(self, project: str, since: datetime) -> pd.DataFrame:
        """Predictions and mean confidence per minute and model version, from raw rows."""
        return self._frame(
            """SELECT date_trunc('minute', ts) AS bucket, model_version, count(*)::BIGINT AS n,
                      avg(confidence) AS mean_confidence
               FROM predictions WHERE project = ? AND ts >= ? GROUP BY 1, 2 ORDER BY bucket, model_version""",
            [project, since])

    def labelled_accuracy_per_minute(self, project: str, since: datetime) -> pd.DataFrame:
        """Labelled count and accuracy per minute of prediction time (latest label per prediction)."""
        return self._frame(
            f"""WITH fb AS ({self.store.latest_feedback_sql()})
                SELECT date_trunc('minute', prediction_ts) AS bucket, count(*)::BIGINT AS n_labelled,
                       avg((label = predicted_label)::INT) AS accuracy
                FROM fb WHERE prediction_ts >= ? GROUP BY 1 ORDER BY bucket""",
            [project, since])

    # -- embeddings -----------------------------------------------------------------------------------
    def missing_embeddings_per_project(self) -> dict[str, int]:
        """Rows still waiting for an embedding, per project."""
        return {str(p): int(n) for p, n in self._rows(
            "SELECT project, count(*) FROM predictions WHERE embedding IS NULL GROUP BY project")}

    def oldest_without_embedding(self, limit: int) -> list[tuple[int, str, str, str]]:
        """(rowid, project, id, text) of the oldest rows without an embedding."""
        return self._rows(
            f"""SELECT {self.store.dialect.row_address}, project, id, text FROM predictions WHERE embedding IS NULL
                ORDER BY ingest_seq, project, id LIMIT ?""",
            [limit],
        )

    def fill_embeddings(self, table: pa.Table) -> int:
        """Set ``embedding`` from ``table`` (rid, project, id, embedding) where still NULL; returns rows set.

        On DuckDB rows are addressed by the ``rowid`` read when they were selected, so the UPDATE fetches
        them directly (PostgreSQL goes by the primary key); ``project`` and ``id`` must match too, so a
        row that moved meanwhile stays NULL.
        """
        with self.store.transaction() as cur, self.store.staged(cur, "computed_embeddings", table):
            updated = cur.execute(
                f"""UPDATE predictions SET embedding = e.embedding FROM computed_embeddings e
                    WHERE {self.store.dialect.same_row}predictions.project = e.project AND predictions.id = e.id
                      AND predictions.embedding IS NULL"""
            ).fetchall()[0][0]
        return int(updated)

    # -- matching imported labels ------------------------------------------------------------------------
    def match_metadata_keys(self, project: str, keys: list[str], json_path: str) -> list[tuple[int, str | None, int]]:
        """For each key (by position): (position, id of the newest prediction whose metadata at
        ``json_path`` equals it or None, how many predictions matched)."""
        table = pa.table({"row": pa.array(range(len(keys)), pa.int64()), "key": pa.array(keys, pa.string())})
        cur = self.store.cursor()
        with self.store.staged(cur, "import_keys", table):
            return [tuple(r) for r in cur.execute(
                f"""
                SELECT "row", id, n FROM (
                    SELECT k.row, p.id, count(p.id) OVER (PARTITION BY k.row) AS n,
                           row_number() OVER (PARTITION BY k.row ORDER BY p.ts DESC, p.ingest_seq DESC) AS newest
                    FROM import_keys k LEFT JOIN predictions p
                      ON p.project = ? AND {self.store.dialect.json_text("p.metadata")} = k.key
                ) matched WHERE newest = 1 ORDER BY "row"
                """,
                [project, self.store.dialect.json_path(json_path)],
            ).fetchall()]

    def agreement(self, project: str, pairs: list[tuple[str, str]]) -> float | None:
        """How often the stored prediction agrees with the given (prediction id, label) pairs."""
        table = pa.table({"prediction_id": [p for p, _ in pairs], "label": [lab for _, lab in pairs]})
        cur = self.store.cursor()
        with self.store.staged(cur, "import_pairs", table):
            value = cur.execute(
                """SELECT avg((p.label = i.label)::INT) FROM import_pairs i JOIN predictions p
                   ON p.project = ? AND p.id = i.prediction_id""",
                [project],
            ).fetchall()[0][0]
        return None if value is None else float(value)


class FeedbackNotFound(LookupError):
    """No feedback row (stored or pending) with that id in the project."""


class RetractRefused(PermissionError):
    """The row was sent with another token; ``annotator`` names who sent it."""

    def __init__(self, annotator: str | None) -> None:
        super().__init__(annotator)
        self.annotator = annotator


class FeedbackRepository(Repository):
    """Reads of ``feedback`` (appends go through :meth:`Store.append_feedback`) and retraction."""

    def retract(self, project: str, feedback_id: str, token_id: str | None, any_writer: bool = False) -> None:
        """Delete one feedback row (stored or still pending) and its writer record, in one transaction.

        Only the token that sent it may (``any_writer``: anyone, e.g. an admin): otherwise
        :class:`RetractRefused`. :class:`FeedbackNotFound` when no row has the id.
        """
        with self.store.transaction() as cur:
            for table in ("feedback", "pending_feedback"):
                rows = cur.execute(
                    f"""SELECT f.annotator, w.token_id FROM {table} f LEFT JOIN feedback_writers w
                        ON w.project = f.project AND w.id = f.id WHERE f.project = ? AND f.id = ?""",
                    [project, feedback_id]).fetchall()
                if rows:
                    annotator, writer = rows[0]
                    if not any_writer and (not writer or writer != token_id):
                        raise RetractRefused(annotator)
                    cur.execute(f"DELETE FROM {table} WHERE project = ? AND id = ?", [project, feedback_id]).fetchall()
                    cur.execute("DELETE FROM feedback_writers WHERE project = ? AND id = ?",
                                [project, feedback_id]).fetchall()
                    return
        raise FeedbackNotFound(feedback_id)

    def count_since(self, project: str, since: datetime) -> int:
        """Feedback rows of ``project`` given at or after ``since`` (every row, not only the latest label)."""
        return int(self._scalar("SELECT count(*) FROM feedback WHERE project = ? AND ts >= ?", [project, since]))

    def count_latest_after(self, project: str, after: datetime, labels: list[str] | None = None) -> int:
        """Predictions whose latest label was given after ``after`` (and is one of ``labels``, if given)."""
        sql = f"SELECT count(*) FROM ({self.store.latest_feedback_sql()}) fb WHERE fb.ts > ?"
        params: list[Any] = [project, after]
        if labels:
            sql += " AND fb.label = ANY(?)"
            params.append(labels)
        return int(self._scalar(sql, params))

    def ids_labelled_after(self, project: str, after: datetime, labels: list[str]) -> pd.Series:
        """Prediction ids whose latest label (one of ``labels``) was given after ``after``."""
        return self._frame(f"SELECT fb.prediction_id AS id FROM ({self.store.latest_feedback_sql()}) fb "
                           "WHERE fb.ts > ? AND fb.label = ANY(?)", [project, after, labels])["id"]

    def last_label_ts(self, project: str) -> datetime | None:
        """When the newest latest-label of ``project`` was given."""
        value = self._scalar(f"SELECT max(ts) FROM ({self.store.latest_feedback_sql()}) fb", [project])
        return None if is_missing(value) else pd.Timestamp(value).to_pydatetime()

    def training_rows(self, project: str, after: datetime, until: datetime, labels: list[str]) -> pd.DataFrame:
        """Labelled predictions whose latest label (one of ``labels``) was given in ``(after, until]``."""
        return self._frame(
            f"""WITH fb AS ({self.store.latest_feedback_sql()})
                SELECT p.id, p.text, fb.label, p.label AS predicted_label, p.ts
                FROM fb JOIN predictions p ON p.project = fb.project AND p.id = fb.prediction_id
                WHERE fb.ts > ? AND fb.ts <= ? AND fb.label = ANY(?)
                ORDER BY p.ts, p.id""",
            [project, after, until, labels],
        )

    def replay_rows(self, project: str, until: datetime, labels: list[str], reference: str, seed: int,
                    limit: int) -> pd.DataFrame:
        """A seeded sample of ``limit`` older labelled rows: predictions labelled up to ``until`` plus the
        labelled rows of ``reference`` (ids ``ref-N``), labels within ``labels``."""
        return self._frame(
            f"""WITH fb AS ({self.store.latest_feedback_sql()}),
                older AS (
                    SELECT p.id, p.text, fb.label FROM fb JOIN predictions p
                      ON p.project = fb.project AND p.id = fb.prediction_id
                    WHERE fb.ts <= ? AND fb.label = ANY(?)
                    UNION ALL
                    SELECT 'ref-' || CAST(row_number() OVER (ORDER BY text, true_label) AS VARCHAR) AS id, text,
                           true_label AS label
                    FROM reference_rows
                    WHERE project = ? AND reference = ? AND true_label IS NOT NULL AND true_label = ANY(?)
                )
                SELECT * FROM older ORDER BY {self.store.dialect.seeded_hash("id || ?")}, id LIMIT ?""",
            [project, until, labels, project, reference, labels, str(seed), limit],
        )

    def latest_with_embeddings(self, project: str, labels: list[str], limit: int) -> pd.DataFrame:
        """The newest latest-labels (within ``labels``) whose prediction has an embedding."""
        return self._frame(
            f"""WITH fb AS ({self.store.latest_feedback_sql()})
                SELECT fb.id AS feedback_id, fb.prediction_id, p.text, fb.label, fb.annotator, fb.source, p.embedding
                FROM fb JOIN predictions p ON p.project = fb.project AND p.id = fb.prediction_id
                WHERE p.embedding IS NOT NULL AND fb.label = ANY(?)
                ORDER BY fb.ts DESC LIMIT ?""", [project, labels, limit])

    def latest_per_annotator(self, project: str) -> pd.DataFrame:
        """Each human annotator's latest label per prediction (prediction_id, annotator, label)."""
        return self._frame(
            """SELECT prediction_id, annotator, label FROM (
                   SELECT prediction_id, annotator, label,
                          row_number() OVER (PARTITION BY prediction_id, annotator ORDER BY ts DESC, id DESC) AS newest
                   FROM feedback WHERE project = ? AND source = 'human' AND annotator IS NOT NULL
               ) ranked WHERE newest = 1""",
            [project])

    def latest_human(self, project: str) -> pd.DataFrame:
        """Latest labels that are human and whose predicted label is known (prediction_id, label, predicted_label)."""
        return self._frame(f"SELECT prediction_id, label, predicted_label FROM ({self.store.latest_feedback_sql()}) f "
                           "WHERE source = 'human' AND predicted_label IS NOT NULL", [project])
