"""The PostgreSQL store (``store.url = "postgresql://…"``): the same tables, migrations and
transactions as the DuckDB file, through psycopg 3.

Repositories keep their SQL: :class:`PgCursor` gives a psycopg cursor DuckDB's surface (``?``
parameters, ``fetchall`` of a DML statement answering its row count, ``df``), and only the ingest
path and the staging of Arrow tables are written here. Batches arrive by COPY into a temp table,
then one ``INSERT … ON CONFLICT DO NOTHING RETURNING`` keeps the rows whose key is new. ``real[]``
embeddings are decoded straight into float32 arrays by a loader (no Python loop over the values).
Each thread has its own connection, reopened on next use when the server went away.
"""

from __future__ import annotations

import functools
import io
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from psycopg.adapt import Loader
from psycopg.types.numeric import FloatLoader, NumericBinaryLoader
from psycopg.types.string import ByteaBinaryLoader, TextBinaryLoader, TextLoader

from tuneloop.monitor.config import redact_password
from tuneloop.monitor.storage.batches import first_rows, hourly_part
from tuneloop.monitor.storage.dialect import POSTGRES
from tuneloop.monitor.storage.errors import (
    StoreError,
    StoreFull,
    StoreRejected,
    StoreUnavailable,
    first_line,
    is_disk_full,
)
from tuneloop.monitor.storage.notify import CHAMPION_TRIGGER_SQL
from tuneloop.monitor.storage.pg_connect import connect
from tuneloop.monitor.storage.rows import frame_with_embeddings
from tuneloop.monitor.storage.store import Store

MIGRATION_LOCK = 0x7475_6E65  # advisory lock key held while migrating, so replicas migrate one at a time
PENDING_LOCK = 0x7475_6E66
"""Transaction lock: ingest takes it shared, feedback exclusive, so a label parked as pending by one
replica is always seen by the transaction of another that stores its prediction (never stranded)."""
ROLLUP_VALUES_ROWS = 1000
"""Largest rollup part appended as one INSERT ... VALUES (PostgreSQL takes at most 65,535
parameters in a statement); a larger one is staged as a table."""
ROLLUP_LOCK = 0x7475_6E67  # held while folding the hourly rollup: two replicas folding at once would double sums
INGEST_SEQUENCE = "prediction_ingest_seq"
"""The database sequence that numbers ingest batches for every replica (arrival order)."""

_INSERTED_TYPES = pa.schema([("project", pa.string()), ("id", pa.string()), ("ts", pa.timestamp("us")),
                             ("model_version", pa.string()), ("label", pa.string()),
                             ("confidence", pa.float64()), ("ingest_seq", pa.int64())])


class Float32ArrayText(bytes):
    """A ``real[]`` value as the server sent it ({1.5,2,…}); parsed a whole column at a time."""


class Float32ArrayLoader(Loader):
    """Keeps ``real[]`` values as text, so a result's embeddings are parsed together by Arrow."""

    def load(self, data: Any) -> Float32ArrayText:
        return Float32ArrayText(data)


def float32_rows(values: Sequence[Any]) -> list[np.ndarray | None]:
    """``real[]`` texts as float32 arrays (None stays None): one Arrow split and cast for the column,
    handed out as row views of one block when every row has the same length."""
    text = pc.utf8_slice_codeunits(pa.array(values, pa.binary()).cast(pa.string()), 1, -1)
    lists = pc.cast(pc.split_pattern(text, ","), pa.list_(pa.float32()))
    return frame_with_embeddings(pa.table({"embedding": lists}))["embedding"].tolist()


_ARRAY_HEADER = 5
"""32-bit words before the elements of a one-dimensional array in the binary format: dimensions, has-NULL
flag, element type, length, lower bound. Each element then takes two: its byte length and its value."""


def float32_binary_rows(values: Sequence[bytes | None]) -> list[np.ndarray | None]:
    """``real[]`` values in the binary format as float32 arrays (None stays None): one NumPy view over all
    rows when they have the same length and no NULL element, else decoded row by row."""
    present = [v for v in values if v is not None]
    sizes = {len(v) for v in present}
    out: list[np.ndarray | None] = []
    if len(sizes) == 1 and (size := sizes.pop()) > _ARRAY_HEADER * 4:
        words = np.frombuffer(b"".join(present), ">i4").reshape(len(present), size // 4)
        if (words[:, 0] == 1).all() and (words[:, 1] == 0).all():
            block = words[:, _ARRAY_HEADER + 1::2].view(">f4").astype(np.float32)
            rows = iter(block)
            return [None if v is None else next(rows) for v in values]
    for v in values:
        out.append(None if v is None else _float32_binary(v))
    return out


def _float32_binary(value: bytes) -> np.ndarray:
    """One ``real[]`` in the binary format (NULL elements become NaN)."""
    words = np.frombuffer(value, ">i4")
    if words[0] == 0:
        return np.zeros(0, np.float32)
    n, at, items = int(words[3]), _ARRAY_HEADER, []
    for _ in range(n):
        if words[at] < 0:
            items.append(np.nan)
            at += 1
        else:
            items.append(words[at + 1:at + 2].view(">f4")[0])
            at += 2
    return np.asarray(items, np.float32)


class JsonbTextBinaryLoader(Loader):
    """``jsonb`` in the binary format as its text (a version byte, then the JSON), as text results give it."""

    format = psycopg.pq.Format.BINARY

    def load(self, data: Any) -> str:
        return bytes(data[1:]).decode()


class FloatNumericBinaryLoader(NumericBinaryLoader):
    """``numeric`` in the binary format as a float, as :class:`FloatLoader` gives text results."""

    def load(self, data: Any) -> float:  # type: ignore[override]
        return float(super().load(data))


def register_binary_loaders(con: psycopg.Connection) -> None:
    """Binary results read as text results are: JSON as text, numeric as float, ``real[]`` as raw bytes."""
    con.adapters.register_loader("json", TextBinaryLoader)
    con.adapters.register_loader("jsonb", JsonbTextBinaryLoader)
    con.adapters.register_loader("numeric", FloatNumericBinaryLoader)
    con.adapters.register_loader(con.adapters.types["float4"].array_oid, ByteaBinaryLoader)


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """DuckDB parameters as psycopg's: ``?`` in order, or ``$N`` (returned: which value each takes)."""
    sql = sql.replace("%", "%%")
    numbered = [int(n) - 1 for n in re.findall(r"\$(\d+)\b", sql)]
    if numbered:
        return re.sub(r"\$\d+\b", "%s", sql), tuple(numbered)
    return sql.replace("?", "%s"), None


class PgCursor:
    """The slice of DuckDB's cursor API the repositories use, over one psycopg connection of its own."""

    def __init__(self, connect: Callable[[], psycopg.Connection]) -> None:
        self._connect = connect
        self.connection = connect()
        self._cur = self.connection.cursor()
        self.binary = False  # results in PostgreSQL's binary format (see binary_frame)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        """Run ``sql``; :class:`StoreUnavailable` when the server cannot be reached.

        A statement that finds its connection dead outside a transaction (the server restarted since
        this thread's last query) runs again once on a new connection: it cannot have taken effect.
        """
        idle = self.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        try:
            self._run(sql, params)
        except psycopg.OperationalError as e:
            if not self.lost:
                raise
            if not idle:
                raise StoreUnavailable(f"PostgreSQL went away ({str(e).strip().splitlines()[0]})") from e
            self.connection = self._connect()
            self._cur = self.connection.cursor()
            try:
                self._run(sql, params)
            except psycopg.OperationalError as again:
                if self.lost:
                    raise StoreUnavailable(f"PostgreSQL went away ({str(again).strip().splitlines()[0]})") from again
                raise
        return self

    @property
    def lost(self) -> bool:
        """Whether the connection is gone (closed by the server or broken by a network error)."""
        return self.connection.closed or self.connection.broken

    def _run(self, sql: str, params: Sequence[Any]) -> None:
        if not params:  # no parameters: the simple protocol, which also runs several statements
            self._cur.execute(sql.encode())
            return
        text, order = _placeholders(sql)
        values = list(params) if order is None else [params[i] for i in order]
        self._cur.execute(text, values, binary=self.binary)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(_placeholders(sql)[0], [list(r) for r in rows])

    @property
    def description(self) -> list[Any] | None:
        return self._cur.description

    def fetchall(self) -> list[tuple[Any, ...]]:
        """The rows; a statement without any (UPDATE, DELETE) answers ``[(rows affected,)]`` as DuckDB does."""
        if self._cur.description is None:
            return [(self._cur.rowcount,)]
        rows = self._cur.fetchall()
        arrays = self._float32_columns()
        if not rows or not arrays:
            return rows
        columns = list(zip(*rows, strict=True))
        for i in arrays:
            columns[i] = tuple(float32_rows(columns[i]))
        return list(zip(*columns, strict=True))

    def _float32_columns(self) -> list[int]:
        oid = self.connection.adapters.types["float4"].array_oid
        return [i for i, d in enumerate(self._cur.description or []) if d.type_code == oid]

    def df(self) -> pd.DataFrame:
        names = [d.name for d in self._cur.description or []]
        return pd.DataFrame.from_records(self.fetchall(), columns=names)

    @contextmanager
    def copy(self, statement: str) -> Iterator[Any]:
        """COPY on this cursor; a connection lost meanwhile is :class:`StoreUnavailable`, as in :meth:`execute`."""
        try:
            with self._cur.copy(statement) as copy:
                yield copy
        except psycopg.OperationalError as e:
            if not self.lost:
                raise
            raise StoreUnavailable(f"PostgreSQL went away ({str(e).strip().splitlines()[0]})") from e

    def binary_frame(self, sql: str, params: Sequence[Any]) -> pd.DataFrame:
        """A read whose rows arrive in PostgreSQL's binary format, ``real[]`` as the server's array bytes,
        decoded a whole column at a time by NumPy: no float text to print on the server nor to parse here."""
        if not params:  # the simple protocol has no binary results
            return self.execute(sql).df()
        self.binary = True
        try:
            self.execute(sql, params)
        finally:
            self.binary = False
        names = [d.name for d in self._cur.description or []]
        arrays = self._float32_columns()
        frame = pd.DataFrame.from_records(self._cur.fetchall(), columns=names)
        for i in arrays:  # the decoded column replaces the bytes (no transposing of the rows)
            frame[names[i]] = pd.Series(float32_binary_rows(frame[names[i]].tolist()), index=frame.index, dtype=object)
        return frame


def _pg_type(t: pa.DataType) -> str:
    """The column type a staged Arrow column gets when no stored table is mirrored."""
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "REAL" if t.bit_width == 32 else "DOUBLE PRECISION"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _pg_type(t.value_type) + "[]"
    return "TEXT"


def _naive_utc(table: pa.Table) -> pa.Table:
    """Time-zone-aware timestamp columns as naive UTC (what every TIMESTAMP column holds)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            table = table.set_column(i, field.name, pc.cast(table.column(i), pa.timestamp(field.type.unit)))
    return table


def _as_csv(table: pa.Table) -> bytes:
    """``table`` as the CSV COPY reads, written by Arrow in C: list columns become array literals
    (``{1.5,2}``), NULL is an unquoted empty field and every string is quoted."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_string(field.type) and pc.any(pc.match_substring(column, "\x00")).as_py():
            raise StoreRejected(f"{field.name}: PostgreSQL text cannot hold the NUL character (U+0000)")
        if pa.types.is_fixed_size_list(field.type):
            column = column.cast(pa.list_(field.type.value_type))
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            items = pc.binary_join(pc.cast(column, pa.list_(pa.string())), ",")
            column = pc.binary_join_element_wise("{", items, "}", "")
        columns.append(column)
    out = io.BytesIO()
    pa_csv.write_csv(pa.table(columns, names=table.column_names), out,
                     pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue()


class PostgresStore(Store):
    """A tuneloop store in a PostgreSQL database; same methods and repositories as :class:`Store`."""

    dialect = POSTGRES

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.path = Path(psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "postgres")
        self.read_only = read_only
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._seq_lock = threading.Lock()
        self._connections: list[psycopg.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self.cursor()  # fail now, in one line, when the server cannot be reached
        self._opened()

    # -- connections ------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection:
        try:
            con = connect(self.url)
        except psycopg.Error as e:
            reason = first_line(e)
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {redact_password(self.url)}: {reason}") from None
        con.adapters.register_loader("json", TextLoader)  # JSON columns read as text, as from DuckDB
        con.adapters.register_loader("jsonb", TextLoader)
        con.adapters.register_loader("numeric", FloatLoader)  # sum()/avg() of integers
        con.adapters.register_loader(con.adapters.types["float4"].array_oid, Float32ArrayLoader)
        register_binary_loaders(con)
        with self._connections_lock:  # forget the connections that died, keep the new one to close it
            self._connections = [c for c in self._connections if not c.closed] + [con]
        return con

    def cursor(self) -> PgCursor:  # type: ignore[override]
        """This thread's cursor on its own connection (opened again after the server went away)."""
        if self._closed:
            raise StoreError("the store is closed")
        cur = getattr(self._local, "cursor", None)
        if cur is None or cur.lost:
            cur = PgCursor(self._connect)
            self._local.cursor = cur
        return cur

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            for con in self._connections:
                with suppress(psycopg.Error):
                    con.close()
            self._connections.clear()

    @contextmanager
    def transaction(self) -> Iterator[PgCursor]:  # type: ignore[override]
        """Serialised write transaction: commit on success, roll back on error."""
        if self.read_only:
            raise StoreError("the store is open read-only")
        with self._write_lock:
            cur = self.cursor()
            try:
                cur.execute("BEGIN")
                if getattr(self._local, "lock_pending", False):
                    cur.execute("SELECT pg_advisory_xact_lock(?)", [PENDING_LOCK]).fetchall()
                yield cur
                cur.execute("COMMIT")
            except BaseException as e:
                with suppress(psycopg.Error, StoreError):
                    if not cur.lost:
                        cur.execute("ROLLBACK")
                if isinstance(e, psycopg.Error) and is_disk_full(e):
                    raise StoreFull(f"{self.path.name}: the disk is full; the write was not stored ({e})") from e
                raise

    def migrate(self) -> list[int]:
        """Apply pending migrations while holding an advisory lock (one process migrates at a time)."""
        cur = self.cursor()
        cur.execute("SELECT pg_advisory_lock(?)", [MIGRATION_LOCK]).fetchall()
        try:
            applied = super().migrate()
            self._install_shared_state(cur)
            return applied
        finally:
            cur.execute("SELECT pg_advisory_unlock(?)", [MIGRATION_LOCK]).fetchall()

    def _install_shared_state(self, cur: PgCursor) -> None:
        """What several replicas share beyond the tables: the ingest sequence (created once, from the
        highest number stored, for a database written before it existed) and the champion trigger."""
        if cur.execute("SELECT to_regclass(?)", [INGEST_SEQUENCE]).fetchall()[0][0] is None:
            cur.execute(f"CREATE SEQUENCE {INGEST_SEQUENCE}")
            highest = cur.execute("SELECT max(ingest_seq) FROM predictions").fetchall()[0][0]
            if highest:
                cur.execute("SELECT setval(?, ?)", [INGEST_SEQUENCE, int(highest)]).fetchall()
        cur.execute(CHAMPION_TRIGGER_SQL)

    # -- what several replicas must agree on -----------------------------------------------------------
    def _next_seq(self) -> int:
        """The next ingest batch number from the database sequence (unique across replicas)."""
        return int(self.cursor().execute("SELECT nextval(?)", [INGEST_SEQUENCE]).fetchall()[0][0])

    def append_feedback(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Store.append_feedback`, in a transaction that holds :data:`PENDING_LOCK` exclusively."""
        self._local.lock_pending = True
        try:
            return super().append_feedback(*args, **kwargs)
        finally:
            self._local.lock_pending = False

    def compact_rollup(self) -> int:
        """As :meth:`Store.compact_rollup`, one replica at a time (:data:`ROLLUP_LOCK`)."""
        cur = self.cursor()
        cur.execute("SELECT pg_advisory_lock(?)", [ROLLUP_LOCK]).fetchall()
        try:
            return super().compact_rollup()
        finally:
            if not cur.lost:
                cur.execute("SELECT pg_advisory_unlock(?)", [ROLLUP_LOCK]).fetchall()

    # -- the hourly rollup, kept inside the ingest transaction --------------------------------------------
    def _hourly_rows(self) -> str:
        """Rollup readers sum ``prediction_hourly`` alone: every committed row is in it (:meth:`_roll_up`)."""
        return "prediction_hourly"

    def catch_up_rollup(self, cur: Any | None = None) -> int:
        """Nothing waits: each ingest transaction rolls up its own rows."""
        self._unrolled_rows = 0
        return 0

    def _roll_up(self, cur: Any, rows: pa.Table) -> None:
        """Append the hourly aggregate of ``rows`` (just inserted) as partial rollup rows, in the ingest
        transaction that inserted them: replicas commit out of ``ingest_seq`` order, so a watermark on it
        (as the DuckDB store keeps) could pass a batch still to commit."""
        part = hourly_part(rows)
        assert part is not None, "inserted rows are typed as _INSERTED_TYPES (naive timestamps, float confidence)"
        self._append_rollup_part(cur, part)
        self._rollup_parts += part.num_rows

    def _append_rollup_part(self, cur: Any, part: pa.Table) -> None:
        """Append rollup rows as one parameterised INSERT ... VALUES: no temp table to create and copy
        for a few rows (a part past :data:`ROLLUP_VALUES_ROWS` rows is staged)."""
        columns = ", ".join(part.column_names)
        if part.num_rows > ROLLUP_VALUES_ROWS:
            with self.staged(cur, "rollup_part", part):
                cur.execute(f"INSERT INTO prediction_hourly ({columns}) SELECT {columns} FROM rollup_part").fetchall()
            return
        row = f"({', '.join('?' * part.num_columns)})"
        params = [v for values in zip(*(part[c].to_pylist() for c in part.column_names), strict=True) for v in values]
        cur.execute(f"INSERT INTO prediction_hourly ({columns}) VALUES {', '.join([row] * part.num_rows)}",
                    params).fetchall()

    # -- reads and staging ---------------------------------------------------------------------------
    def fetch_arrow(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        df = cur.execute(sql, params).df()
        return pa.Table.from_pandas(df, preserve_index=False)

    def embedding_frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        return self.cursor().binary_frame(sql, list(params))

    @contextmanager
    def staged(self, cur: Any, name: str, table: pa.Table, like: str | None = None) -> Iterator[None]:
        """``table`` copied (COPY) into the temp table ``name``, shaped like the stored table ``like``
        when given; dropped afterwards (a rolled-back transaction drops it by itself)."""
        table = _naive_utc(table)
        if like is not None:
            shape = f"(LIKE {like} INCLUDING DEFAULTS)"
        else:
            shape = "(" + ", ".join(f'"{f.name}" {_pg_type(f.type)}' for f in table.schema) + ")"
        cur.execute(f"DROP TABLE IF EXISTS {name}; CREATE TEMP TABLE {name} {shape}")
        columns = ", ".join(f'"{c}"' for c in table.column_names)
        with cur.copy(f"COPY {name} ({columns}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(_as_csv(table))
        yield
        cur.execute(f"DROP TABLE {name}")

    # -- the ingest path ------------------------------------------------------------------------------
    def _insert_predictions(self, cur: Any, table: pa.Table, *, ignore_existing: bool) -> list[int]:
        """COPY ``table`` in, keep the rows whose key is new (ON CONFLICT DO NOTHING), roll them up and
        resolve pending feedback for them, all on the caller's transaction."""
        table = first_rows(table)
        cur.execute("SELECT pg_advisory_xact_lock_shared(?)", [PENDING_LOCK]).fetchall()
        with self.staged(cur, "incoming", table, like="predictions"):
            columns = ", ".join(table.column_names)
            rows = cur.execute(
                f"INSERT INTO predictions ({columns}) SELECT {columns} FROM incoming "
                f"ON CONFLICT DO NOTHING RETURNING {self._INSERTED_COLUMNS}"
            ).fetchall()
            if rows:
                inserted = pa.table([pa.array(list(values), field.type)
                                     for values, field in zip(zip(*rows, strict=True), _INSERTED_TYPES, strict=True)],
                                    schema=_INSERTED_TYPES)
                self._roll_up(cur, inserted)
                # another replica may have parked feedback: ask the database, not this process's flag
                if cur.execute("SELECT EXISTS (SELECT 1 FROM pending_feedback)").fetchall()[0][0]:
                    self._resolve_pending(cur, "incoming")
        return [r[-1] for r in rows]
