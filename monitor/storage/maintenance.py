"""Whole-database upkeep: a consistent export for backups, retention of raw rows, and repointing
model paths after a restore."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from tuneloop.monitor.storage.repository import Repository

RETENTION_BATCH_ROWS = 10_000
"""Predictions (with their feedback) deleted per transaction by retention."""


def _sql_path(path: Path) -> str:
    """A path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _table_counts(cur: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows per table of the main schema, by table name."""
    # duckdb_tables(): DuckDB; PostgreSQL: information_schema.tables
    names = [r[0] for r in cur.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' ORDER BY table_name").fetchall()]
    return {t: int(cur.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0]) for t in names}


def import_export(directory: Path, db_path: Path) -> dict[str, int]:
    """Build the new database file ``db_path`` from an export written by
    :meth:`MaintenanceRepository.export`; returns its rows per table (checkpointed, closed)."""
    con = duckdb.connect(str(db_path))
    try:
        con.execute(f"IMPORT DATABASE {_sql_path(directory)}").fetchall()
        counts = _table_counts(con)
        con.execute("CHECKPOINT").fetchall()
    finally:
        con.close()
    return counts


class MaintenanceRepository(Repository):
    def export(self, directory: Path) -> tuple[dict[str, int], int]:
        """Export every table as Parquet into ``directory`` from one snapshot; returns the row count of
        each table and the schema version of that same snapshot (a manifest describes exactly the copy).

        Safe while the store takes writes: a read transaction, no write lock. PostgreSQL: ``pg_dump``
        (see :mod:`tuneloop.monitor.storage.pg_backup`).
        """
        if self.store.dialect.name == "postgresql":
            from tuneloop.monitor.storage.pg_backup import dump

            return dump(self.store, directory)
        cur = self.store.cursor()
        cur.execute("BEGIN TRANSACTION").fetchall()
        try:
            cur.execute(f"EXPORT DATABASE {_sql_path(directory)} (FORMAT PARQUET)").fetchall()
            tables = _table_counts(cur)
            schema_version = int(cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
                                 .fetchall()[0][0])
        except BaseException:
            # A read-only snapshot: roll it back, and never let that hide the cause (a full disk is 507).
            with contextlib.suppress(duckdb.Error):
                cur.execute("ROLLBACK").fetchall()
            raise
        cur.execute("COMMIT").fetchall()
        return tables, schema_version

    def version_paths(self) -> list[str]:
        """Every distinct directory path the registry names, in any project."""
        return [r[0] for r in self._rows("SELECT DISTINCT path FROM model_versions")]

    def relocate_versions(self, new_path: Callable[[str], str | None]) -> int:
        """Set each version's path to ``new_path(old path)`` where that is not None; returns rows changed."""
        changed = 0
        with self.store.transaction() as cur:
            for project, version, path in cur.execute("SELECT project, version, path FROM model_versions").fetchall():
                target = new_path(path)
                if target is not None:
                    cur.execute("UPDATE model_versions SET path = ? WHERE project = ? AND version = ?",
                                [target, project, version]).fetchall()
                    changed += 1
        return changed

    def delete_before(self, cutoff: datetime, pending_cutoff: datetime, batch_rows: int = RETENTION_BATCH_ROWS
                      ) -> tuple[int, int, int, int]:
        """Delete raw rows of predictions made before ``cutoff`` (their feedback too) and pending feedback
        older than ``pending_cutoff``. Returns (predictions, feedback, pending feedback, hours rolled up).

        At most ``batch_rows`` predictions per transaction, so a large purge never holds one huge
        transaction (nor the write lock for long). Each transaction adds the labelled accuracy of its
        predictions (latest label each) to ``feedback_hourly`` and deletes their feedback and them
        together: a crash between two batches leaves every count right, and the next run goes on.
        """
        n_predictions = n_feedback = 0
        hours: set[tuple[str, Any]] = set()
        projects = [r[0] for r in self._rows("SELECT DISTINCT project FROM feedback WHERE prediction_ts < ?", [cutoff])]
        for project in projects:  # labelled predictions: roll up, then delete, a batch at a time
            while True:
                with self.store.transaction() as cur:
                    keys = self.store.fetch_arrow(cur, "SELECT DISTINCT project, prediction_id AS id FROM feedback "
                                                       "WHERE project = ? AND prediction_ts < ? LIMIT ?",
                                                  [project, cutoff, batch_rows])
                    if keys.num_rows:
                        with self.store.staged(cur, "retired", keys):
                            hours |= {(project, r[0]) for r in self._roll_up_feedback(cur, project)}
                            n_feedback += _delete_keyed(cur, "feedback", "prediction_id")
                            n_predictions += self._delete_keyed(cur, "predictions", "id")
                if keys.num_rows < batch_rows:
                    break
        n_predictions += self._delete_batches("predictions", "SELECT project, id FROM predictions WHERE ts < ?",
                                              [cutoff], batch_rows)
        n_pending = self._delete_batches("pending_feedback", "SELECT project, id FROM pending_feedback WHERE ts < ?",
                                         [pending_cutoff], batch_rows)
        if n_feedback or n_pending:  # who wrote the rows that are gone no longer matters
            self._delete_batches("feedback_writers", """SELECT project, id FROM feedback_writers w WHERE NOT EXISTS (
                                     SELECT 1 FROM feedback f WHERE f.project = w.project AND f.id = w.id)
                                 AND NOT EXISTS (
                                     SELECT 1 FROM pending_feedback f WHERE f.project = w.project AND f.id = w.id)""",
                                 [], batch_rows)
        return n_predictions, n_feedback, n_pending, len(hours)

    def _roll_up_feedback(self, cur: Any, project: str) -> list[tuple[Any, ...]]:
        """Add the labelled accuracy of the predictions staged as ``retired`` to ``feedback_hourly``;
        returns the hours it touched."""
        batch = "feedback WHERE project = ? AND EXISTS (SELECT 1 FROM retired k WHERE k.id = feedback.prediction_id)"
        return cur.execute(
            f"""
            INSERT INTO feedback_hourly
            SELECT project, date_trunc('hour', prediction_ts), coalesce(model_version, ''),
                   count(*), count(*) FILTER (WHERE label = predicted_label)
            FROM ({self.store.latest_feedback_sql(batch)}) latest
            GROUP BY 1, 2, 3
            ON CONFLICT (project, hour, model_version) DO UPDATE
            SET n_labelled = feedback_hourly.n_labelled + excluded.n_labelled,
                n_correct = feedback_hourly.n_correct + excluded.n_correct
            RETURNING hour
            """,
            [project],
        ).fetchall()

    def _delete_batches(self, table: str, keys_sql: str, params: list[Any], batch_rows: int) -> int:
        """Delete the rows of ``table`` whose (project, id) ``keys_sql`` selects, ``batch_rows`` per transaction."""
        deleted = 0
        while True:
            with self.store.transaction() as cur:
                keys = self.store.fetch_arrow(cur, f"{keys_sql} LIMIT ?", [*params, batch_rows])
                if keys.num_rows:
                    with self.store.staged(cur, "retired", keys):
                        deleted += self._delete_keyed(cur, table, "id")
            if keys.num_rows < batch_rows:
                return deleted

    def _delete_keyed(self, cur: Any, table: str, id_column: str) -> int:
        """:func:`_delete_keyed`; predictions are first counted in the hourly rollup, in the same transaction
        (the rollup keeps the traffic of deleted rows, so it must hold them before they go)."""
        if table == "predictions":
            self.store.catch_up_rollup(cur)
        return _delete_keyed(cur, table, id_column)


def _delete_keyed(cur: Any, table: str, id_column: str) -> int:
    """Delete the rows of ``table`` whose project and ``id_column`` are a key staged as ``retired``."""
    return int(cur.execute(f"DELETE FROM {table} t USING retired k "
                           f"WHERE t.project = k.project AND t.{id_column} = k.id").fetchall()[0][0])
