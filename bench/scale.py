"""HTTP ingest and drift-window reads: the DuckDB file next to PostgreSQL (``store.url``), one run.

Starts two real ``tuneloop serve`` subprocesses on this machine, one on a DuckDB file and one on a
throw-away PostgreSQL cluster (Debian's binaries, as the tests start it), and posts the same kind of
batches to each (1000 rows with 384-d embeddings, Arrow IPC, 4 concurrent clients, every request
answered after its COMMIT). The phases alternate (DuckDB, PostgreSQL, ...) ``--repeats`` times so
load from other processes hits both alike; medians and ranges are printed. Then, with the servers
stopped, it times the drift window read (``store.window(last=N)``, embeddings as float32 rows) on
each store.

    nice -n 10 .venv/bin/python bench/scale.py [--batches 20] [--repeats 3] [--window 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ingest import BATCH, http_ingest, make_batch, start_server  # noqa: E402 - the ingest bench's helpers
from postgres_server import PostgresServer  # noqa: E402 - the tests' real PostgreSQL

from tuneloop.monitor.client import arrow_stream  # noqa: E402
from tuneloop.monitor.storage import Store, open_postgres  # noqa: E402


def window_seconds(store: Store, rows: int, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        df = store.window(last=rows)
        times.append(time.perf_counter() - t)
        assert len(df) == rows and df["embedding"].iloc[0].dtype == np.float32
    return times


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=20, help="batches of 1000 rows per phase")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--window", type=int, default=20000)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"load before: {os.getloadavg()}")
    pg = PostgresServer()
    pg.start()
    servers = []
    try:
        with tempfile.TemporaryDirectory(prefix="tuneloop-scale-") as tmp:
            pg_url = pg.new_database()
            backends = {"duckdb": "", "postgresql": pg_url}
            for name in backends:
                (Path(tmp) / name).mkdir()
            servers = {name: start_server(Path(tmp) / name, url) for name, url in backends.items()}
            rates: dict[str, list[float]] = {name: [] for name in backends}
            for r in range(args.repeats):
                for name, (_, base, token) in servers.items():
                    bodies = [arrow_stream(make_batch(r * 10_000 + k, rng)) for k in range(args.batches)]
                    rates[name].append(http_ingest(base, token, bodies, "application/vnd.apache.arrow.stream"))
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait(60)
            print(f"HTTP ingest rows/s ({args.batches} x {BATCH} rows per phase, {args.repeats} alternating phases):")
            for name, values in rates.items():
                print(f"  {name:<11} {spread(values)}")
            ratio = statistics.median(rates["postgresql"]) / statistics.median(rates["duckdb"])
            print(f"  PostgreSQL / DuckDB: {ratio:.2f}")
            rows = min(args.window, args.batches * args.repeats * BATCH)
            print(f"drift window read, last {rows} rows with embeddings (ms):")
            for name, url in backends.items():
                with (open_postgres(url) if url else Store(Path(tmp) / name / "tuneloop.duckdb")) as store:
                    ms = [t * 1000 for t in window_seconds(store, rows, args.repeats)]
                print(f"  {name:<11} {spread(ms)}")
    finally:
        for proc, _, _ in (servers.values() if isinstance(servers, dict) else []):
            if proc.poll() is None:
                proc.kill()
        pg.remove()
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
