"""The hourly traffic rollup of the DuckDB store, brought up to date after commits instead of inside them.

An append stores its rows and nothing else. A watermark (``prediction_rollup_state.rolled_up_seq``)
says which arrivals ``prediction_hourly`` counts: every prediction whose ``ingest_seq`` is at or below
it, none above. :func:`catch_up` appends the aggregate of the rows above it as partial rollup rows and
raises it, in the caller's transaction; the store runs it after commits once enough rows wait, on open,
and before retention deletes rows. Readers select from :data:`HOURLY_ROWS`: the stored rows plus the
aggregate of the rows above the watermark, in one statement (one snapshot), so they count every
committed row exactly once whether or not the catch-up has run, in this process or a read-only one.

The watermark is sound because the store numbers batches and commits them under its write lock: while
the lock is held, every batch numbered so far has committed or rolled back, so no row can later appear
below the watermark. PostgreSQL replicas number batches from a shared sequence and commit out of that
order, so PostgreSQL rolls up inside the ingest transaction and reads ``prediction_hourly`` alone.
"""

from __future__ import annotations

from typing import Any

ROLLUP_STATE = "prediction_rollup_state"
"""The one-row table holding the watermark (migration 9)."""

_COLUMNS = "project, hour, model_version, label, n, confidence_sum"
_AGGREGATE = """SELECT project, date_trunc('hour', ts) AS hour, coalesce(model_version, '') AS model_version,
                       label, count(*) AS n, coalesce(sum(confidence), 0) AS confidence_sum
                FROM predictions WHERE {arrivals} GROUP BY 1, 2, 3, 4"""

HOURLY_ROWS = f"""(SELECT {_COLUMNS} FROM prediction_hourly
                   UNION ALL
                   {_AGGREGATE.format(arrivals=f"ingest_seq > (SELECT rolled_up_seq FROM {ROLLUP_STATE})")}) hourly"""
"""The rollup rows as readers sum them per key: stored partial rows and the rows not yet rolled up."""


def rolled_up_seq(cur: Any) -> int:
    """The watermark as of ``cur``'s transaction."""
    return int(cur.execute(f"SELECT rolled_up_seq FROM {ROLLUP_STATE}").fetchall()[0][0])


def catch_up(cur: Any, newest_seq: int) -> int:
    """Roll up the predictions numbered above the watermark, up to ``newest_seq``, and raise it there;
    returns the partial rollup rows appended.

    ``cur`` is in a transaction of the store's write lock, and ``newest_seq`` is the highest number the
    store has handed out: every batch up to it has committed or rolled back.
    """
    above = rolled_up_seq(cur)
    if newest_seq <= above:
        return 0
    rows = _AGGREGATE.format(arrivals="ingest_seq > ? AND ingest_seq <= ?")
    added = cur.execute(f"INSERT INTO prediction_hourly ({_COLUMNS}) {rows}", [above, newest_seq]).fetchall()[0][0]
    cur.execute(f"UPDATE {ROLLUP_STATE} SET rolled_up_seq = ?", [newest_seq]).fetchall()
    return int(added)
