"""Store.append_predictions vs a raw DuckDB Arrow append into the same schema.

Both write the same 100k rows (384-d float embeddings, batches of 1000) into fresh files. The
two are interleaved batch by batch (alternating which goes first) so that machine load hits
both alike; the figure that matters is the ratio (goal >= 0.9). Besides wall-clock time the
script reports CPU time of this process (DuckDB's threads included) for each side, which other
processes' load does not inflate, and the median of the per-batch wall-clock ratios. The store's
side includes the catch-ups of its hourly rollup that run after commits, and one last catch-up and
fold of its partial rollup rows (``Store.compact_rollup``) at the end, so the figure carries the
whole cost of the rollup. The whole comparison runs ``--repeat`` times on
fresh files and the summary gives each figure's median with its range over the repeats.

    .venv/bin/python bench/store.py [--rows 100000] [--batch 1000] [--dim 384] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from tuneloop.monitor.storage import MIGRATIONS, PREDICTION_COLUMNS, Store, utcnow

LABELS = np.array(["negative", "neutral", "positive"])


def make_batches(rows: int, batch: int, dim: int, seed: int = 0) -> list[pa.Table]:
    """Prediction batches with every store column, in the store's column order."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        conf = rng.uniform(0.34, 1.0, n)
        out.append(pa.table({
            "project": pa.array(["default"] * n),
            "id": pa.array([f"{start + i:032x}" for i in range(n)]),
            "ts": pa.array([utcnow()] * n, pa.timestamp("us")),
            "model_version": pa.array(["v1"] * n),
            "text": pa.array([f"review number {start + i} about a flight" for i in range(n)]),
            "label": pa.array(LABELS[rng.integers(0, 3, n)]),
            "confidence": pa.array(conf),
            "margin": pa.array(conf / 2),
            "probs": pa.nulls(n, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(emb.ravel(), dim).cast(pa.list_(pa.float32())),
            "latency_ms": pa.nulls(n, pa.float64()),
            "metadata": pa.nulls(n, pa.string()),
        }).select(PREDICTION_COLUMNS))
    return out


def compare(batches: list[pa.Table], raw_batches: list[pa.Table]) -> dict[str, float]:
    """One store-vs-raw run on fresh files: rates, CPU times, ratios and the compaction time."""
    rows = sum(b.num_rows for b in batches)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store.duckdb")
        raw = duckdb.connect(str(Path(tmp) / "raw.duckdb"))
        for _, sql in MIGRATIONS:
            raw.execute(sql)
        wall: dict[str, list[float]] = {"store": [], "raw": []}
        cpu = {"store": 0.0, "raw": 0.0}

        def timed(side: str, fn, i: int) -> None:  # type: ignore[no-untyped-def]
            t, c = time.perf_counter(), time.process_time()
            fn(i)
            wall[side].append(time.perf_counter() - t)
            cpu[side] += time.process_time() - c

        def run_store(i: int) -> None:
            r = store.append_predictions(batches[i])
            assert r.accepted == batches[i].num_rows

        def run_raw(i: int) -> None:
            arrow_table = raw_batches[i]  # noqa: F841 (read by DuckDB's replacement scan)
            raw.execute("INSERT INTO predictions SELECT * FROM arrow_table")

        for i in range(len(batches)):
            sides = [("store", run_store), ("raw", run_raw)]
            for side, fn in sides[:: 1 if i % 2 else -1]:
                timed(side, fn, i)
        t, c = time.perf_counter(), time.process_time()
        folded = store.compact_rollup()
        compact_s = time.perf_counter() - t
        wall["store"][-1] += compact_s
        cpu["store"] += time.process_time() - c
        assert store.count_predictions() == rows
        assert int(store.traffic()["n"].sum()) == rows
        store.close()
        raw.close()
    store_rate, raw_rate = rows / sum(wall["store"]), rows / sum(wall["raw"])
    return {"store": store_rate, "raw": raw_rate, "ratio": store_rate / raw_rate,
            "cpu_ratio": cpu["raw"] / cpu["store"], "cpu_store": cpu["store"], "cpu_raw": cpu["raw"],
            "per_batch": float(np.median(np.array(wall["raw"]) / np.array(wall["store"]))),
            "compact_ms": compact_s * 1e3, "folded": folded}


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """Median with the range over repeats or rounds: ``median [min..max]``."""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}..{fmt.format(max(values))}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    batches = make_batches(args.rows, args.batch, args.dim)
    raw_batches = [
        b.append_column("ingest_seq", pa.array([i + 1] * b.num_rows, pa.int64())) for i, b in enumerate(batches)
    ]
    load = [os.getloadavg()[0]]
    runs = [compare(batches, raw_batches) for _ in range(args.repeat)]
    load.append(os.getloadavg()[0])

    def col(key: str) -> list[float]:
        return [r[key] for r in runs]

    print(f"rows={args.rows} batch={args.batch} dim={args.dim}; median [min..max] over {args.repeat} runs; "
          f"load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f}")
    print(f"Store.append_predictions : {spread(col('store'), '{:,.0f}'):>28} rows/s")
    print(f"raw DuckDB Arrow INSERT  : {spread(col('raw'), '{:,.0f}'):>28} rows/s")
    print(f"ratio store/raw          : {spread(col('ratio'), '{:.2f}'):>28}   (goal >= 0.9)")
    print(f"  by CPU time            : {spread(col('cpu_ratio'), '{:.2f}'):>28}")
    print(f"  median per batch       : {spread(col('per_batch'), '{:.2f}'):>28}")
    print(f"  last catch-up and fold : {spread(col('compact_ms'), '{:.1f}'):>28} ms, folding away "
          f"{int(statistics.median(col('folded')))} partial rows (in the store side)")


if __name__ == "__main__":
    main()
