"""Model versions, the promotion history and reference rows (what the drift checks compare against).

Transitions that must read and write in one transaction (promote, rollback, reject) pass the
transaction handle of ``store.transaction()`` as ``tx``; reads without one use this thread's cursor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from tuneloop.monitor.storage.clock import utcnow
from tuneloop.monitor.storage.repository import Repository
from tuneloop.monitor.storage.rows import to_json

VERSION_COLUMNS = "project, version, created_at, parent, status, path, metrics, data_snapshot, promoted_at, reasons"
REFERENCE_COLUMNS = "text, label, true_label, confidence, probs, embedding"


def _records(cur: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cur.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("metrics", "reasons"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row


class VersionRepository(Repository):
    """``model_versions`` and ``promotions``: at most one champion per project."""

    def _cur(self, tx: duckdb.DuckDBPyConnection | None) -> duckdb.DuckDBPyConnection:
        return tx if tx is not None else self.store.cursor()

    def get(self, project: str, version: str, tx: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any] | None:
        """One version's row (metrics and reasons parsed), or None."""
        rows = _records(self._cur(tx), f"SELECT {VERSION_COLUMNS} FROM model_versions WHERE project = ? "
                                       "AND version = ?", [project, version])
        return _decode(rows[0]) if rows else None

    def list(self, project: str) -> list[dict[str, Any]]:
        """Every version of ``project``, oldest first."""
        rows = _records(self._cur(None), f"SELECT {VERSION_COLUMNS} FROM model_versions WHERE project = ? "
                                         "ORDER BY created_at, version", [project])
        return [_decode(r) for r in rows]

    def champion(self, project: str, tx: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any] | None:
        """The serving version's row of ``project``, or None before the first promotion."""
        rows = _records(self._cur(tx), f"SELECT {VERSION_COLUMNS} FROM model_versions "
                                       "WHERE project = ? AND status = 'champion'", [project])
        return _decode(rows[0]) if rows else None

    def champion_name(self, project: str) -> str | None:
        """The champion's version name, or None."""
        row = self.champion(project)
        return None if row is None else str(row["version"])

    def champions(self) -> list[tuple[str, str]]:
        """(project, version) of every project's champion, by project."""
        return self._rows("SELECT project, version FROM model_versions WHERE status = 'champion' ORDER BY project")

    def count(self, project: str) -> int:
        return int(self._scalar("SELECT count(*) FROM model_versions WHERE project = ?", [project]))

    def all_names(self) -> set[str]:
        """Every version name registered in any project (names are unique across the models dir)."""
        return {r[0] for r in self._rows("SELECT version FROM model_versions")}

    def statuses(self, project: str, tx: duckdb.DuckDBPyConnection | None = None) -> dict[str, str]:
        """version -> status of every version of ``project``."""
        return dict(self._cur(tx).execute("SELECT version, status FROM model_versions WHERE project = ?",
                                          [project]).fetchall())

    def insert(self, tx: duckdb.DuckDBPyConnection, project: str, version: str, path: str, status: str,
               metrics: dict[str, Any] | None, parent: str | None, data_snapshot: str | None) -> None:
        tx.execute(
            "INSERT INTO model_versions (project, version, created_at, parent, status, path, metrics, data_snapshot) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [project, version, utcnow(), parent, status, path, to_json(metrics), data_snapshot],
        ).fetchall()

    def make_champion(self, tx: duckdb.DuckDBPyConnection, project: str, version: str, now: datetime) -> None:
        """Archive the current champion of ``project`` and make ``version`` the champion."""
        tx.execute("UPDATE model_versions SET status = 'archived' WHERE project = ? AND status = 'champion'",
                   [project]).fetchall()
        tx.execute("UPDATE model_versions SET status = 'champion', promoted_at = ? WHERE project = ? AND version = ?",
                   [now, project, version]).fetchall()

    def reject(self, tx: duckdb.DuckDBPyConnection, project: str, version: str, reasons: list[str]) -> None:
        tx.execute("UPDATE model_versions SET status = 'rejected', reasons = ? WHERE project = ? AND version = ?",
                   [json.dumps(reasons), project, version]).fetchall()

    def add_promotion(self, tx: duckdb.DuckDBPyConnection, project: str, version: str, now: datetime,
                      actor: str, reason: str | None, kind: str, previous: str | None) -> None:
        """Append one champion change to ``promotions`` (kind: promote | rollback)."""
        tx.execute("INSERT INTO promotions VALUES (nextval('promotion_ids'), ?, ?, ?, ?, ?, ?, ?)",
                   [project, version, now, actor, reason, kind, previous]).fetchall()

    def promotion_kinds(self, project: str, tx: duckdb.DuckDBPyConnection | None = None) -> list[tuple[str, str]]:
        """(version, kind) of every champion change of ``project``, oldest first."""
        return self._cur(tx).execute("SELECT version, kind FROM promotions WHERE project = ? ORDER BY id",
                                     [project]).fetchall()

    def promotions(self, project: str, version: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Champion changes of ``project`` (to or from ``version`` if given), newest first."""
        where, params = "project = ?", [project]
        if version is not None:
            where, params = where + " AND (version = ? OR previous = ?)", [*params, version, version]
        return _records(self._cur(None), "SELECT version, ts, actor, reason, kind, previous FROM promotions "
                                         f"WHERE {where} ORDER BY id DESC LIMIT ?", [*params, limit])

    def used_holdout_ids(self, project: str) -> set[str]:
        """Prediction ids recorded as gate holdout rows in any version's metrics of ``project``."""
        df = self._frame(self.store.dialect.holdout_ids_sql, [project])
        return set(df["id"].dropna().astype(str))


class ReferenceRepository(Repository):
    """``reference_rows``: named row sets (a version's validation data, an import) per project."""

    def replace(self, project: str, reference: str, table: pa.Table) -> int:
        """Replace the rows of ``reference`` with ``table`` (columns of ``reference_rows`` by name) in one
        transaction; returns how many rows it replaced."""
        with self.store.transaction() as cur:
            replaced = cur.execute("SELECT count(*) FROM reference_rows WHERE project = ? AND reference = ?",
                                   [project, reference]).fetchall()[0][0]
            cur.execute("DELETE FROM reference_rows WHERE project = ? AND reference = ?",
                        [project, reference]).fetchall()
            columns = ", ".join(table.column_names)
            with self.store.staged(cur, "incoming_reference", table, like="reference_rows"):
                cur.execute(f"INSERT INTO reference_rows ({columns}) SELECT {columns} FROM incoming_reference"
                            ).fetchall()
        return int(replaced)

    def rows(self, project: str, reference: str) -> pd.DataFrame:
        """The model-output columns and split of a reference, in insertion order."""
        return self._frame(
            f"""SELECT {REFERENCE_COLUMNS}, split FROM reference_rows WHERE project = ? AND reference = ?
                ORDER BY {self.store.dialect.row_order}""",
            [project, reference],
        )

    def count(self, project: str, reference: str) -> int:
        return int(self._scalar("SELECT count(*) FROM reference_rows WHERE project = ? AND reference = ?",
                                [project, reference]))

    def embedding_sample(self, project: str, reference: str, size: int, seed: int) -> pd.DataFrame:
        """A seeded sample of ``size`` embeddings of a reference (the same rows for the same seed)."""
        return self._embedding_frame(
            f"""SELECT embedding FROM reference_rows WHERE project = ? AND reference = ? AND embedding IS NOT NULL
                ORDER BY {self.store.dialect.seeded_hash("text || ?")} LIMIT ?""",
            [project, reference, str(seed), size],
        )
