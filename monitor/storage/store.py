"""The DuckDB store: the only code that opens the database file.

One process owns the file (DuckDB allows one read-write opener). Inside it, one connection is
shared and each thread gets its own cursor; writes are serialised by a lock so that each batch
append is one transaction (commit before acknowledging). Numbered migrations run on open and
are recorded in ``schema_migrations``, so re-opening is a no-op.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tuneloop.monitor.storage.alerts import AlertRepository, CheckRepository, DeliveryRepository
from tuneloop.monitor.storage.batches import (
    FEEDBACK_COLUMNS,
    PREDICTION_COLUMNS,
    ROLLUP_KEY,
    as_arrow,
    fill_columns,
    first_rows,
)
from tuneloop.monitor.storage.clock import new_id, utcnow
from tuneloop.monitor.storage.dialect import DUCKDB, Dialect
from tuneloop.monitor.storage.errors import (
    AppendResult,
    FeedbackResult,
    StoreError,
    StoreFull,
    StoreLockedError,
    is_disk_full,
)
from tuneloop.monitor.storage.maintenance import MaintenanceRepository
from tuneloop.monitor.storage.migrations import MIGRATIONS
from tuneloop.monitor.storage.predictions import FeedbackRepository, PredictionRepository
from tuneloop.monitor.storage.projects import ProjectRepository
from tuneloop.monitor.storage.rollup import HOURLY_ROWS, ROLLUP_STATE, catch_up, rolled_up_seq
from tuneloop.monitor.storage.rows import frame_with_embeddings
from tuneloop.monitor.storage.runs import RunRepository
from tuneloop.monitor.storage.tokens import TokenRepository
from tuneloop.monitor.storage.versions import ReferenceRepository, VersionRepository

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "default"

ROLLUP_COMPACT_ROWS = 4096
"""Partial rollup rows appended since the last compaction that trigger the next one."""
ROLLUP_CATCH_UP_ROWS = 20_000
"""Predictions stored since the hourly rollup last caught up that trigger the next catch-up (after the
commit). It bounds the rows each rollup reader aggregates on top of ``prediction_hourly``."""


class Store:
    """Owner of one tuneloop DuckDB file.

    >>> store = Store(tmp / "t.duckdb")          # creates + migrates
    >>> store.append_predictions([{"id": "a", "text": "hi", "label": "positive"}])
    AppendResult(accepted=1, duplicates=0)
    """

    dialect: Dialect = DUCKDB

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise StoreError(f"no tuneloop database at {self.path} (run `tuneloop init`)")
        try:
            self._con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise StoreLockedError(
                    f"{self.path} is in use by another process (tuneloop serve is running on this file; "
                    "use the API or stop the server)"
                ) from None
            raise StoreError(f"cannot open {self.path}: {e}") from None
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._seq_lock = threading.Lock()
        self._opened()

    def _opened(self) -> None:
        """Migrate (unless read-only), read the ingest state, attach the repositories and bring the
        hourly rollup up to date with what an earlier process stored."""
        if not self.read_only:
            self.migrate()
        self.hourly_rows = self._hourly_rows()
        rolled_up = rolled_up_seq(self.cursor()) if self.hourly_rows == HOURLY_ROWS else 0
        # never below the watermark: numbers above it must be new even after retention deleted the newest rows
        self._ingest_seq = max(int(self.scalar("SELECT coalesce(max(ingest_seq), 0) FROM predictions")), rolled_up)
        self._has_pending = bool(self.scalar("SELECT count(*) FROM pending_feedback"))
        self._rollup_parts = 0  # partial rollup rows appended since the last compaction
        self._unrolled_rows = 0  # predictions stored since the rollup last caught up
        self.checks = CheckRepository(self)
        self.alerts = AlertRepository(self)
        self.deliveries = DeliveryRepository(self)
        self.versions = VersionRepository(self)
        self.references = ReferenceRepository(self)
        self.predictions = PredictionRepository(self)
        self.feedback = FeedbackRepository(self)
        self.projects = ProjectRepository(self)
        self.runs = RunRepository(self)
        self.tokens = TokenRepository(self)
        self.maintenance = MaintenanceRepository(self)
        if not self.read_only and self._ingest_seq > rolled_up:
            self.catch_up_rollup()

    def _hourly_rows(self) -> str:
        """What rollup readers select from: the stored rollup plus the rows above the watermark (see
        :mod:`~tuneloop.monitor.storage.rollup`). A file from before the watermark, opened read-only and
        so not migrated, rolled every row up on ingest: its ``prediction_hourly`` is whole."""
        has_state = self.scalar("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                                "AND schema_name = 'main' AND table_name = ?", [ROLLUP_STATE])
        return HOURLY_ROWS if has_state else "prediction_hourly"

    # -- connection handling -------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor (DuckDB cursors are not shareable across threads)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cursor = cur
        return cur

    def close(self) -> None:
        try:
            if not self.read_only:
                self._con.execute("CHECKPOINT").fetchall()
        except duckdb.Error:
            pass
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row of a read query on this thread's cursor (None: no row)."""
        rows = self.cursor().execute(sql, list(params)).fetchall()
        return rows[0][0] if rows else None

    def ping(self) -> None:
        """Raise when the database cannot answer a trivial query (readiness)."""
        self.scalar("SELECT 1")

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """Run a read query on this thread's cursor and return a DataFrame."""
        return self.cursor().execute(sql, list(params)).df()

    def fetch_arrow(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """A read on ``cur`` (this thread's cursor or a transaction's) as an Arrow table."""
        return cur.sql(sql, params=list(params)).to_arrow_table()

    def embedding_frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """A read whose ``embedding`` column comes back as float32 rows (see ``frame_with_embeddings``)."""
        return frame_with_embeddings(self.fetch_arrow(self.cursor(), sql, params))

    @contextmanager
    def staged(self, cur: Any, name: str, table: pa.Table, like: str | None = None) -> Iterator[None]:
        """``table`` readable as ``name`` by SQL on ``cur`` while the block runs.

        DuckDB scans the Arrow table in place (``like``, the stored table it mirrors, is not needed).
        Views registered inside a transaction vanish with a rollback, so an error skips the cleanup
        (unregistering in an aborted transaction would itself fail and hide the cause).
        """
        cur.register(name, table)
        yield
        cur.unregister(name)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one write statement in its own transaction."""
        with self.transaction() as cur:
            cur.execute(sql, list(params)).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Serialised write transaction: commit on success, roll back on error."""
        if self.read_only:
            raise StoreError("the store is open read-only")
        with self._write_lock:
            cur = self.cursor()
            cur.execute("BEGIN TRANSACTION").fetchall()
            try:
                yield cur
            except BaseException as e:
                cur.execute("ROLLBACK").fetchall()
                if isinstance(e, duckdb.Error) and is_disk_full(e):
                    raise StoreFull(f"{self.path.name}: the disk is full; the write was not stored ({e})") from e
                raise
            try:
                cur.execute("COMMIT").fetchall()
            except duckdb.Error as e:  # the transaction is gone: nothing of it was stored
                if is_disk_full(e):
                    raise StoreFull(f"{self.path.name}: the disk is full; the write was not stored ({e})") from e
                raise

    # -- migrations ---------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply pending numbered migrations; returns the versions applied (empty when up to date)."""
        cur = self.cursor()
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)"
        ).fetchall()
        done = {r[0] for r in cur.execute("SELECT version FROM schema_migrations").fetchall()}
        applied = []
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            with self.transaction() as tx:
                tx.execute(self.dialect.schema(version, sql)).fetchall()
                tx.execute("INSERT INTO schema_migrations VALUES (?, ?)", [version, utcnow()]).fetchall()
            applied.append(version)
            log.info("applied migration %d", version)
        return applied

    def schema_version(self) -> int:
        return int(self.scalar("SELECT coalesce(max(version), 0) FROM schema_migrations"))

    # -- predictions --------------------------------------------------------------------------
    def _next_seq(self) -> int:
        with self._seq_lock:
            self._ingest_seq += 1
            return self._ingest_seq

    def append_predictions(
        self, batch: pa.Table | pd.DataFrame | Sequence[dict[str, Any]], project: str = DEFAULT_PROJECT
    ) -> AppendResult:
        """Append predictions in one transaction. Rows whose (project, id) exists are skipped.

        ``batch`` needs ``text`` and ``label``; ``id`` (client-chosen, makes retries idempotent),
        ``ts``, ``confidence``, ``margin``, ``probs`` (JSON text), ``embedding``, ``model_version``,
        ``latency_ms``, ``metadata`` (JSON text) are optional. The hourly rollup counts the rows actually
        inserted as soon as they are committed (see :mod:`~tuneloop.monitor.storage.rollup`).
        """
        return self.append_prediction_batches([(batch, project)])[0]

    def append_prediction_batches(
        self, batches: Sequence[tuple[pa.Table | pd.DataFrame | Sequence[dict[str, Any]], str]]
    ) -> list[AppendResult]:
        """Append several ``(batch, project)`` pairs in ONE transaction (group commit).

        Returns one :class:`AppendResult` per pair, in order: a row whose id already exists, or
        repeats an earlier row of the same call, counts as a duplicate of its own pair. Each pair
        gets its own ``ingest_seq``. The common case (no duplicates) is a plain ``INSERT``, as fast
        as a raw Arrow append; only when the primary key rejects a row is the transaction redone
        with ``INSERT OR IGNORE ... RETURNING`` to learn which rows went in.

        Batches are numbered and committed under the write lock, so they commit in ``ingest_seq`` order
        (the rollup's watermark relies on it).
        """
        tables = [as_arrow(batch) for batch, _ in batches]
        prepared = [self._prepare_predictions(t, project) if t.num_rows else None
                    for t, (_, project) in zip(tables, batches, strict=True)]
        if not any(t is not None for t in prepared):
            return [AppendResult(0, 0) for _ in batches]
        with self._write_lock:
            seqs = [None if t is None else self._next_seq() for t in prepared]  # per pair; None: empty batch
            parts = [t.append_column("ingest_seq", pa.array([seq] * t.num_rows, pa.int64()))
                     for t, seq in zip(prepared, seqs, strict=True) if t is not None]
            combined = parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")
            try:
                with self.transaction() as cur:
                    inserted = Counter(self._insert_predictions(cur, combined, ignore_existing=False))
            except duckdb.ConstraintException:
                with self.transaction() as cur:
                    inserted = Counter(self._insert_predictions(cur, first_rows(combined), ignore_existing=True))
        self._unrolled_rows += sum(inserted.values())
        self._rollup_upkeep()
        sizes = iter(t.num_rows for t in parts)
        results = []
        for seq in seqs:
            n = 0 if seq is None else next(sizes)
            results.append(AppendResult(accepted=inserted[seq], duplicates=n - inserted[seq]))
        return results

    @staticmethod
    def _prepare_predictions(table: pa.Table, project: str) -> pa.Table:
        """Full column list in table order and missing ids made up (``ingest_seq`` comes under the lock)."""
        if "id" not in table.column_names:
            table = table.append_column("id", pa.array([new_id() for _ in range(table.num_rows)]))
        elif table.column("id").null_count:
            ids = [i if i is not None else new_id() for i in table.column("id").to_pylist()]
            table = table.set_column(table.column_names.index("id"), "id", pa.array(ids, pa.string()))
        return fill_columns(table, PREDICTION_COLUMNS, {"project": project, "ts": utcnow})

    _INSERTED_COLUMNS = "project, id, ts, model_version, label, confidence, ingest_seq"

    def _insert_predictions(
        self, cur: duckdb.DuckDBPyConnection, table: pa.Table, *, ignore_existing: bool
    ) -> list[int]:
        """Insert ``table``; returns the ``ingest_seq`` of each inserted row.

        The common case reads ``table`` through DuckDB's replacement scan of a local variable, as a raw
        Arrow insert does: registering it as a view (and dropping it) would cost about as much again as
        the insert's own bookkeeping. A view is registered only where several statements join it
        (pending feedback) or for the ``RETURNING`` path. Views registered inside the transaction vanish
        with a rollback, so there is no cleanup on error (unregistering in an aborted transaction would
        itself fail and hide the cause).
        """  # PostgreSQL: PostgresStore._insert_predictions (COPY, then ON CONFLICT DO NOTHING)
        if ignore_existing:
            cur.register("incoming", table)
            # A DML relation runs once, here; its result is exactly the rows that went in.
            rows = cur.sql(
                f"INSERT OR IGNORE INTO predictions BY NAME SELECT * FROM incoming RETURNING {self._INSERTED_COLUMNS}"
            ).to_arrow_table()
            cur.unregister("incoming")
        else:
            incoming = table  # noqa: F841 - read by DuckDB's replacement scan
            cur.execute("INSERT INTO predictions BY NAME SELECT * FROM incoming").fetchall()
            rows = table
        if rows.num_rows and self._has_pending:
            with self.staged(cur, "inserted", rows):
                self._resolve_pending(cur, "inserted")
        return rows.column("ingest_seq").to_pylist()

    def _rollup_upkeep(self) -> None:
        """After a commit (the batches are stored whatever happens here): catch the hourly rollup up once
        :data:`ROLLUP_CATCH_UP_ROWS` predictions wait, fold it once :data:`ROLLUP_COMPACT_ROWS` partial
        rows accumulated."""
        try:
            if self._unrolled_rows >= ROLLUP_CATCH_UP_ROWS:
                self.catch_up_rollup()
            if self._rollup_parts >= ROLLUP_COMPACT_ROWS:
                self.compact_rollup()
        except Exception:
            log.exception("bringing the hourly rollup up to date failed; it is retried after the next appends")

    def catch_up_rollup(self, cur: Any | None = None) -> int:
        """Roll up the predictions ``prediction_hourly`` does not count yet; returns the partial rows added.

        In ``cur``'s transaction when given (retention calls it before deleting rows), else in its own.
        Readers count those predictions either way; this only keeps what they aggregate small.
        """
        if cur is None:
            with self.transaction() as tx:
                return self.catch_up_rollup(tx)
        added = catch_up(cur, self._ingest_seq)
        self._unrolled_rows = 0
        self._rollup_parts += added
        return added

    def compact_rollup(self) -> int:
        """Catch the rollup up, then fold the partial rows of ``prediction_hourly`` into one row per key;
        returns the rows removed.

        One transaction: readers see the same sums before, during and after.
        """
        key = ", ".join(ROLLUP_KEY)
        with self.transaction() as cur:
            self.catch_up_rollup(cur)
            folded = self.fetch_arrow(
                cur,
                f"""SELECT {key}, sum(n)::BIGINT AS n, sum(confidence_sum) AS confidence_sum, count(*) AS parts
                    FROM prediction_hourly GROUP BY 1, 2, 3, 4 HAVING count(*) > 1""",
            )
            if folded.num_rows:
                with self.staged(cur, "folded", folded):
                    cur.execute(f"DELETE FROM prediction_hourly WHERE ({key}) IN (SELECT {key} FROM folded)").fetchall()
                    cur.execute(f"INSERT INTO prediction_hourly ({key}, n, confidence_sum) "
                                f"SELECT {key}, n, confidence_sum FROM folded").fetchall()
        self._rollup_parts = 0
        return int(pc.sum(folded["parts"]).as_py() or 0) - folded.num_rows

    def _resolve_pending(self, cur: duckdb.DuckDBPyConnection, source: str) -> None:
        """Move pending feedback whose prediction just arrived (in ``source``) into ``feedback``."""
        cur.execute(
            f"""
            INSERT INTO feedback
            SELECT f.project, f.id, f.prediction_id, f.label, f.ts, f.source, f.annotator,
                   p.ts, p.label, p.model_version
            FROM pending_feedback f JOIN {source} p
              ON p.project = f.project AND p.id = f.prediction_id
            ON CONFLICT DO NOTHING
            """
        ).fetchall()
        # Only the rows just joined: never a scan of the whole feedback table on each commit.
        moved = cur.execute(
            f"""DELETE FROM pending_feedback f USING {source} p
                WHERE p.project = f.project AND p.id = f.prediction_id"""
        ).fetchall()[0][0]
        if moved:
            self._has_pending = bool(cur.execute("SELECT count(*) FROM pending_feedback").fetchall()[0][0])

    def count_predictions(self, project: str | None = DEFAULT_PROJECT) -> int:
        if project is None:
            return int(self.scalar("SELECT count(*) FROM predictions"))
        return int(self.scalar("SELECT count(*) FROM predictions WHERE project = ?", [project]))

    def get_predictions(self, ids: Sequence[str], project: str = DEFAULT_PROJECT) -> pd.DataFrame:
        return self.query(
            "SELECT * FROM predictions WHERE project = ? AND id = ANY(?)", [project, list(ids)]
        )

    # -- feedback -----------------------------------------------------------------------------
    def append_feedback(
        self,
        batch: pa.Table | pd.DataFrame | Sequence[dict[str, Any]],
        project: str = DEFAULT_PROJECT,
        *,
        keep_unknown: bool = True,
        token_id: str | None = None,
    ) -> FeedbackResult:
        """Append feedback (true labels) in one transaction; history is kept, latest wins on read.

        Each row is denormalised with its prediction's ts, predicted label and model version so
        that labelled accuracy over time needs no join. Feedback for an unknown prediction id is
        parked in ``pending_feedback`` (``keep_unknown``) or left out and reported. ``token_id``
        (the API token that sent it) is recorded for the rows that went in, to authorise retraction.
        """
        table = as_arrow(batch)
        if table.num_rows == 0:
            return FeedbackResult(0, 0, 0, [])
        if "id" not in table.column_names:
            table = table.append_column("id", pa.array([new_id() for _ in range(table.num_rows)]))
        table = fill_columns(table, FEEDBACK_COLUMNS, {"project": project, "ts": utcnow, "source": "human"})
        sent = table.num_rows
        table = first_rows(table)  # an id repeated within the request: the first row wins, like a retry
        unknown_fb = """FROM incoming_fb f WHERE NOT EXISTS (
                            SELECT 1 FROM predictions p WHERE p.project = f.project AND p.id = f.prediction_id)"""
        with self.transaction() as cur, self.staged(cur, "incoming_fb", table, like="pending_feedback"):
            inserted = cur.execute(
                """
                INSERT INTO feedback
                SELECT f.project, f.id, f.prediction_id, f.label, f.ts, f.source, f.annotator,
                       p.ts, p.label, p.model_version
                FROM incoming_fb f JOIN predictions p
                  ON p.project = f.project AND p.id = f.prediction_id
                ON CONFLICT DO NOTHING
                RETURNING project, id
                """
            ).fetchall()
            unknown = [r[0] for r in cur.execute(f"SELECT DISTINCT f.prediction_id {unknown_fb}").fetchall()]
            parked: list[tuple[str, str]] = []
            if unknown and keep_unknown:
                parked = cur.execute(
                    f"""INSERT INTO pending_feedback
                        SELECT f.project, f.id, f.prediction_id, f.label, f.ts, f.source, f.annotator {unknown_fb}
                        ON CONFLICT DO NOTHING RETURNING project, id"""
                ).fetchall()
                self._has_pending = True
            pending = len(parked)
            if token_id and (inserted or parked):
                written = inserted + parked
                cur.execute("INSERT INTO feedback_writers SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), ? "
                            "ON CONFLICT DO NOTHING",
                            [[r[0] for r in written], [r[1] for r in written], token_id]).fetchall()
        accepted = len(inserted)
        unknown_set = set(unknown)
        n_unknown_rows = sum(1 for pid in table.column("prediction_id").to_pylist() if pid in unknown_set)
        duplicates = sent - accepted - n_unknown_rows
        return FeedbackResult(accepted, max(duplicates, 0), int(pending), unknown)

    def latest_feedback_sql(self, rows: str = "feedback WHERE project = ?") -> str:
        """SQL (one parameter: project) for the latest label per prediction; human beats rule.

        ``rows`` picks the feedback ranked (one project's; retention ranks one batch of it)."""
        return f"""
            SELECT project, id, prediction_id, label, ts, source, annotator, prediction_ts, predicted_label,
                   model_version
            FROM (SELECT *, row_number() OVER (
                    PARTITION BY prediction_id
                    ORDER BY CASE source WHEN 'human' THEN 0 WHEN 'import' THEN 1 ELSE 2 END, ts DESC, id DESC
                  ) AS label_rank
                  FROM {rows}) ranked
            WHERE label_rank = 1
        """

    def labelled_predictions(
        self,
        project: str = DEFAULT_PROJECT,
        since: datetime | None = None,
        until: datetime | None = None,
        with_embedding: bool = False,
    ) -> pd.DataFrame:
        """Predictions joined with their latest feedback (``true_label``), labelled rows only."""
        emb = ", p.embedding" if with_embedding else ""
        return self.query(
            f"""
            WITH fb AS ({self.latest_feedback_sql()})
            SELECT p.id, p.ts, p.model_version, p.text, p.label, p.confidence, p.probs{emb},
                   fb.label AS true_label, fb.source, fb.ts AS feedback_ts
            FROM predictions p JOIN fb ON p.id = fb.prediction_id
            WHERE p.project = ? AND p.ts >= ? AND p.ts < ?
            ORDER BY p.ts
            """,
            [project, project, since or datetime.min, until or datetime.max],
        )

    # -- windows and rollups ------------------------------------------------------------------
    def window(
        self,
        project: str = DEFAULT_PROJECT,
        *,
        last: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        columns: str = "id, ts, model_version, text, label, confidence, probs, embedding",
    ) -> pd.DataFrame:
        """Current window: the last ``last`` rows by arrival, or rows with ``since <= ts < until``.

        Latest feedback comes along as ``true_label`` (NULL when unlabelled).
        """
        fb = self.latest_feedback_sql()
        if last is not None:
            where, params = "p.project = ? ORDER BY p.ingest_seq DESC, p.ts DESC LIMIT ?", [project, last]
        else:
            where = "p.project = ? AND p.ts >= ? AND p.ts < ? ORDER BY p.ts"
            params = [project, since or datetime.min, until or datetime.max]
        cols = ", ".join(f"p.{c.strip()}" for c in columns.split(","))
        # PostgreSQL reads embeddings in its binary format (embedding_frame); DuckDB's df() already gives arrays
        read = self.embedding_frame if "embedding" in columns and self.dialect.name == "postgresql" else self.query
        df = read(
            f"""WITH fb AS ({fb})
                SELECT {cols}, fb.label AS true_label
                FROM predictions p LEFT JOIN fb ON p.id = fb.prediction_id
                WHERE {where}""",
            [project, *params],
        )
        return df.iloc[::-1].reset_index(drop=True) if last is not None else df

    def traffic(
        self, project: str = DEFAULT_PROJECT, bucket: str = "hour", since: datetime | None = None
    ) -> pd.DataFrame:
        """Predictions per bucket (hour|day) and model version, from the hourly rollup (no scan beyond the
        rows it has not caught up with).

        The confidence sums are added in order of value: the same rows give the same mean to the last
        bit, however the parts arrive (the rows not rolled up yet come from a parallel aggregate)."""
        if bucket not in ("hour", "day"):
            raise ValueError("bucket must be 'hour' or 'day'")
        return self.query(
            f"""
            SELECT date_trunc('{bucket}', hour) AS bucket, model_version,
                   sum(n)::BIGINT AS n, sum(confidence_sum ORDER BY confidence_sum) / sum(n) AS mean_confidence
            FROM {self.hourly_rows} WHERE project = ? AND hour >= ?
            GROUP BY 1, 2 ORDER BY bucket, model_version
            """,
            [project, since or datetime.min],
        )

    def label_mix(self, project: str = DEFAULT_PROJECT, since: datetime | None = None) -> pd.DataFrame:
        return self.query(
            f"""SELECT label, sum(n)::BIGINT AS n FROM {self.hourly_rows}
                WHERE project = ? AND hour >= ? GROUP BY label ORDER BY label""",
            [project, since or datetime.min],
        )

    def labelled_accuracy(
        self, project: str = DEFAULT_PROJECT, bucket: str = "hour", since: datetime | None = None
    ) -> pd.DataFrame:
        """Labelled accuracy per bucket of prediction time (from denormalised feedback, no join).

        Hours whose raw rows the retention job removed come from the ``feedback_hourly`` rollup.
        """
        if bucket not in ("hour", "day"):
            raise ValueError("bucket must be 'hour' or 'day'")
        since = since or datetime.min
        return self.query(
            f"""
            WITH fb AS ({self.latest_feedback_sql()}),
            parts AS (
                SELECT date_trunc('{bucket}', prediction_ts) AS bucket, count(*) AS n,
                       count(*) FILTER (WHERE label = predicted_label) AS correct
                FROM fb WHERE prediction_ts >= ? GROUP BY 1
                UNION ALL
                SELECT date_trunc('{bucket}', hour), sum(n_labelled), sum(n_correct)
                FROM feedback_hourly WHERE project = ? AND hour >= ? GROUP BY 1
            )
            SELECT bucket, sum(n)::BIGINT AS n_labelled, sum(correct) / sum(n) AS accuracy
            FROM parts GROUP BY bucket ORDER BY bucket
            """,
            [project, since, project, since],
        )

    def table_counts(self) -> dict[str, int]:
        names = [
            "predictions", "feedback", "pending_feedback", "model_versions", "drift_checks", "alerts",
            "retrain_runs", "tokens",
        ]
        return {n: int(self.scalar(f"SELECT count(*) FROM {n}")) for n in names}
