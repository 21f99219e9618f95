"""The few SQL spellings where DuckDB and PostgreSQL differ; every other statement is shared.

Repositories write SQL both engines accept (``= ANY(?)``, ``ON CONFLICT``, subqueries over
``row_number()`` instead of QUALIFY, ``GROUP BY 1, 2``) and take the rest from ``store.dialect``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    name: str
    row_order: str
    """A column giving ``reference_rows`` their insertion order."""
    row_address: str
    """What ``oldest_without_embedding`` selects as a row's address (matched again on write-back)."""
    same_row: str
    """Condition of ``fill_embeddings`` matching that address (besides project and id)."""
    holdout_ids_sql: str
    """One parameter (project): the distinct ids under ``metrics.holdout.rows.id`` of every version."""

    def seeded_hash(self, expr: str) -> str:
        """A deterministic hash of a text expression, to order a seeded sample."""
        return f"hash({expr})" if self.name == "duckdb" else f"md5({expr})"

    def json_text(self, column: str) -> str:
        """The text at a JSON path (the one parameter given by :meth:`json_path`) of a JSON column."""
        return f"json_extract_string({column}, ?)" if self.name == "duckdb" else f"(({column})::jsonb #>> ?)"

    def json_path(self, path: str) -> Any:
        """``$."a"."b"`` as this engine takes it (PostgreSQL: the list of keys)."""
        if self.name == "duckdb":
            return path
        return [part.replace('""', '"') for part in re.findall(r'\."((?:[^"]|"")*)"', path)]

    def schema(self, version: int, sql: str) -> str:
        """Migration ``version``'s DDL as this engine spells its types (plus its engine-only steps)."""
        if self.name == "duckdb":
            return sql
        sql = re.sub(r"\bDOUBLE\b", "DOUBLE PRECISION", sql).replace("FLOAT[]", "REAL[]")
        return sql + POSTGRES_EXTRA_MIGRATIONS.get(version, "")


DUCKDB = Dialect(
    name="duckdb",
    row_order="rowid",
    row_address="rowid",
    same_row="predictions.rowid = e.rid AND ",
    holdout_ids_sql="""SELECT DISTINCT unnest(CAST(json_extract(metrics, '$.holdout.rows.id') AS VARCHAR[])) AS id
               FROM model_versions WHERE project = ? AND json_extract(metrics, '$.holdout.rows.id') IS NOT NULL""",
)

POSTGRES = Dialect(
    name="postgresql",
    row_order="row_order",
    row_address="0",
    same_row="",
    holdout_ids_sql="""SELECT DISTINCT jsonb_array_elements_text(metrics::jsonb #> '{holdout,rows,id}') AS id
               FROM model_versions
               WHERE project = ? AND jsonb_typeof(metrics::jsonb #> '{holdout,rows,id}') = 'array'""",
)

POSTGRES_EXTRA_MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE reference_rows ADD COLUMN row_order BIGSERIAL;",
    7: "CREATE INDEX predictions_arrival ON predictions (project, ingest_seq, ts);",
}
"""PostgreSQL-only DDL appended to a numbered migration (what DuckDB's rowid gives for free)."""
