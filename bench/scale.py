"""HTTP ingest and drift-window reads: the DuckDB file next to PostgreSQL (``store.url``), one run.

Starts two real ``tuneloop serve`` subprocesses on this machine, one on a DuckDB file and one on a
throw-away PostgreSQL cluster (Debian's binaries, as the tests start it), and posts the same kind of
batches to each (1000 rows with 384-d embeddings, Arrow IPC, 4 concurrent clients, every request
answered after its COMMIT). The phases alternate (DuckDB, PostgreSQL, ...) ``--repeats`` times so
load from other processes hits both alike; medians and ranges are printed. Then, with the servers
stopped, it times the drift window read (``store.window(last=N)``, embeddings as float32 rows) on
each store.

A third column runs two ``tuneloop serve`` replicas on one more PostgreSQL database, the same 4
clients spread over both (what a load balancer in front of them does), and prints the ratio of 2
replicas to 1. On one machine both replicas and PostgreSQL share the same cores, so the ratio shows
the cost of coordination more than any gain; on separate machines each replica brings its own CPU.

    nice -n 10 .venv/bin/python bench/scale.py [--batches 20] [--repeats 3] [--window 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ingest import BATCH, CLIENTS, http_ingest, make_batch, start_server  # noqa: E402 - the ingest bench's helpers
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


def start_replicas(directory: Path, url: str, n: int = 2) -> list[tuple[subprocess.Popen, str, str]]:
    """``n`` servers on the one PostgreSQL database ``url`` (each with its own config and token)."""
    servers = []
    for i in range(n):
        (directory / f"replica-{i}").mkdir(parents=True)
        servers.append(start_server(directory / f"replica-{i}", url))
    return servers


def spread_ingest(replicas: list[tuple[subprocess.Popen, str, str]], bodies: list[bytes]) -> float:
    """Rows/s with the bench's CLIENTS clients spread evenly over the replicas, all running at once."""
    n = len(replicas)
    done: list[float] = []
    threads = [threading.Thread(target=lambda i=i: done.append(http_ingest(
        replicas[i][1], replicas[i][2], bodies[i::n], "application/vnd.apache.arrow.stream", clients=CLIENTS // n)))
        for i in range(n)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if len(done) != n:
        raise SystemExit("ingest into the replicas failed")
    return len(bodies) * BATCH / (time.perf_counter() - t)


def print_replicas(rates: dict[str, list[float]]) -> None:
    """The 2-replica column and its ratio to 1 replica."""
    one, two = statistics.median(rates["postgresql"]), statistics.median(rates["2 replicas"])
    print(f"  2 replicas / 1 PostgreSQL: {two / one:.2f} (both replicas and the database on this machine's "
          f"{os.cpu_count()} cores)")


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
    replicas: list[tuple[subprocess.Popen, str, str]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tuneloop-scale-") as tmp:
            pg_url = pg.new_database()
            backends = {"duckdb": "", "postgresql": pg_url}
            for name in backends:
                (Path(tmp) / name).mkdir()
            servers = {name: start_server(Path(tmp) / name, url) for name, url in backends.items()}
            replicas = start_replicas(Path(tmp) / "replicas", pg.new_database())
            rates: dict[str, list[float]] = {name: [] for name in [*backends, "2 replicas"]}
            for r in range(args.repeats):
                for name, (_, base, token) in servers.items():
                    bodies = [arrow_stream(make_batch(r * 10_000 + k, rng)) for k in range(args.batches)]
                    rates[name].append(http_ingest(base, token, bodies, "application/vnd.apache.arrow.stream"))
                bodies = [arrow_stream(make_batch(r * 10_000 + 5_000 + k, rng)) for k in range(args.batches)]
                rates["2 replicas"].append(spread_ingest(replicas, bodies))
            for proc, _, _ in [*servers.values(), *replicas]:
                proc.terminate()
                proc.wait(60)
            print(f"HTTP ingest rows/s ({args.batches} x {BATCH} rows per phase, {args.repeats} alternating phases):")
            for name, values in rates.items():
                print(f"  {name:<11} {spread(values)}")
            ratio = statistics.median(rates["postgresql"]) / statistics.median(rates["duckdb"])
            print(f"  PostgreSQL / DuckDB: {ratio:.2f}")
            print_replicas(rates)
            rows = min(args.window, args.batches * args.repeats * BATCH)
            print(f"drift window read, last {rows} rows with embeddings (ms):")
            for name, url in backends.items():
                with (open_postgres(url) if url else Store(Path(tmp) / name / "tuneloop.duckdb")) as store:
                    ms = [t * 1000 for t in window_seconds(store, rows, args.repeats)]
                print(f"  {name:<11} {spread(ms)}")
    finally:
        for proc, _, _ in [*(servers.values() if isinstance(servers, dict) else []), *replicas]:
            if proc.poll() is None:
                proc.kill()
        pg.remove()
    print(f"load after: {os.getloadavg()}")
    return 0


# -- the drift check on a large window, from each backend ------------------------------------------------


def drift_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The options of :func:`drift_at_scale`; the rest of ``argv`` is left to :func:`main`."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--drift-rows", type=int, default=1_000_000, help="rows in the drift check's window")
    p.add_argument("--drift-reference", type=int, default=20_000, help="rows of the pinned reference period")
    p.add_argument("--drift-dim", type=int, default=384, help="embedding length (the packaged encoder's)")
    p.add_argument("--drift-repeats", type=int, default=3)
    p.add_argument("--drift-only", action="store_true", help="skip the ingest phases")
    return p.parse_known_args(argv)


def bulk_rows(start: int, n: int, t0: datetime, dim: int, rng: np.random.Generator) -> pa.Table:
    """``n`` predictions with float32 embeddings as one Arrow table (no Python loop over rows)."""
    ids = pa.array(np.char.add("r", np.arange(start, start + n).astype(str)))
    ts = np.datetime64(t0, "us") + (np.arange(start, start + n) * 1000).astype("timedelta64[us]")
    labels = np.array(["negative", "neutral", "positive"])[rng.integers(0, 3, n)]
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    return pa.table({
        "id": ids, "ts": pa.array(ts, pa.timestamp("us")), "text": pa.array(np.char.add("text ", ids.to_numpy(False))),
        "label": pa.array(labels), "confidence": pa.array(rng.uniform(0.34, 1.0, n)),
        "model_version": pa.array(["v1"] * n),
        "embedding": pa.FixedSizeListArray.from_arrays(emb.ravel(), dim).cast(pa.list_(pa.float32())),
    })


def fill(store: Store, rows: int, dim: int, t0: datetime, chunk: int = 50_000) -> float:
    """Append ``rows`` generated predictions through the store's bulk path (Arrow scan / COPY); rows/s."""
    rng = np.random.default_rng(7)
    t = time.perf_counter()
    for start in range(0, rows, chunk):
        table = bulk_rows(start, min(chunk, rows - start), t0, dim, rng)
        assert store.append_predictions(table).accepted == table.num_rows
    return rows / (time.perf_counter() - t)


def drift_at_scale(args: argparse.Namespace) -> int:
    """Times the scheduler's drift check (``run_drift_checks``, no HTML report) on a window of
    ``--drift-rows`` rows, and the window read alone, from a DuckDB file and from PostgreSQL."""
    import evidently  # noqa: F401 - imported once by a server; not part of any check's time

    from tuneloop.monitor.checks import run_drift_checks
    from tuneloop.monitor.config import load_settings

    rows = args.drift_rows + args.drift_reference
    t0 = datetime(2026, 1, 1)
    reference_end = t0 + timedelta(milliseconds=args.drift_reference)
    print(f"drift check on a {args.drift_rows:,}-row window ({args.drift_dim}-d embeddings; reference: the "
          f"{args.drift_reference:,} rows before it, pinned), median of {args.drift_repeats}; load {os.getloadavg()}")
    pg = PostgresServer()
    pg.start()
    try:
        with tempfile.TemporaryDirectory(prefix="tuneloop-drift-scale-") as tmp:
            settings = load_settings(paths={"data_dir": tmp}, drift={
                "window_size": args.drift_rows, "reference": "pinned", "pinned_start": t0.isoformat(),
                "pinned_end": reference_end.isoformat()})
            opened = {"duckdb": lambda: Store(Path(tmp) / "drift.duckdb"),
                      "postgresql": lambda: open_postgres(pg.new_database())}
            for name, open_store in opened.items():
                with open_store() as store:
                    rate = fill(store, rows, args.drift_dim, t0)
                    reads, checks = [], []
                    for _ in range(args.drift_repeats):
                        reads += window_seconds(store, args.drift_rows, 1)
                        t = time.perf_counter()
                        run = run_drift_checks(store, settings, render=False)
                        checks.append(time.perf_counter() - t)
                        assert run.results, "the drift check recorded no result"
                print(f"  {name:<11} bulk load {rate:,.0f} rows/s; window read s: {spread_s(reads)}; "
                      f"drift check s: {spread_s(checks)}; load {os.getloadavg()}")
    finally:
        pg.remove()
    return 0


def spread_s(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


if __name__ == "__main__":
    drift_args, sys.argv[1:] = drift_arguments(sys.argv[1:])
    raise SystemExit((0 if drift_args.drift_only else main()) or drift_at_scale(drift_args))
