"""Whole-database upkeep: a consistent export for backups, retention of raw rows, and repointing
model paths after a restore."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import duckdb

from tuneloop.monitor.storage.repository import Repository


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

        Safe while the store takes writes: a read transaction, no write lock.
        """
        cur = self.store.cursor()
        cur.execute("BEGIN TRANSACTION").fetchall()
        try:
            # EXPORT DATABASE: DuckDB; PostgreSQL backs up with pg_dump instead
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

    def delete_before(self, cutoff: datetime, pending_cutoff: datetime) -> tuple[int, int, int, int]:
        """Delete raw rows of predictions made before ``cutoff`` (their feedback too) and pending feedback
        older than ``pending_cutoff``, in one transaction, after adding the labelled accuracy of the hours
        going away to ``feedback_hourly``. Returns (predictions, feedback, pending feedback, hours rolled up).
        """
        with self.store.transaction() as cur:
            projects = [r[0] for r in cur.execute(
                "SELECT DISTINCT project FROM feedback WHERE prediction_ts < ?", [cutoff]).fetchall()]
            hours = 0
            for project in projects:
                rows = cur.execute(
                    f"""
                    INSERT INTO feedback_hourly
                    SELECT project, date_trunc('hour', prediction_ts), coalesce(model_version, ''),
                           count(*), count(*) FILTER (WHERE label = predicted_label)
                    FROM ({self.store.latest_feedback_sql()}) latest WHERE prediction_ts < ?
                    GROUP BY 1, 2, 3
                    ON CONFLICT (project, hour, model_version) DO UPDATE
                    SET n_labelled = feedback_hourly.n_labelled + excluded.n_labelled,
                        n_correct = feedback_hourly.n_correct + excluded.n_correct
                    RETURNING hour
                    """,
                    [project, cutoff],
                ).fetchall()
                hours += len({r[0] for r in rows})
            n_feedback = cur.execute("DELETE FROM feedback WHERE prediction_ts < ?", [cutoff]).fetchall()[0][0]
            n_predictions = cur.execute("DELETE FROM predictions WHERE ts < ?", [cutoff]).fetchall()[0][0]
            n_pending = cur.execute("DELETE FROM pending_feedback WHERE ts < ?", [pending_cutoff]).fetchall()[0][0]
            if n_feedback or n_pending:  # who wrote the rows that are gone no longer matters
                cur.execute("""DELETE FROM feedback_writers w WHERE NOT EXISTS (
                                   SELECT 1 FROM feedback f WHERE f.project = w.project AND f.id = w.id)
                               AND NOT EXISTS (
                                   SELECT 1 FROM pending_feedback f WHERE f.project = w.project AND f.id = w.id)"""
                            ).fetchall()
        return int(n_predictions), int(n_feedback), int(n_pending), hours
