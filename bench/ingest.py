"""Collector throughput: HTTP ingest vs a raw in-process DuckDB Arrow append, SDK caller cost, server RSS.

One run measures, on this machine:

1. HTTP ingest rows/s into a real ``tuneloop serve`` subprocess: batches of 1000 rows with 384-d
   float embeddings, 4 concurrent clients, bodies pre-encoded (Arrow IPC, what the SDK sends;
   JSON for reference), every request answered after its COMMIT;
2. the baseline: the same rows appended in-process with ``INSERT INTO predictions SELECT * FROM
   arrow_table`` into a fresh file with the same schema, batch by batch. The phases alternate
   (baseline, HTTP, baseline, HTTP) and the best of each is kept, so load spikes from other
   processes hit both alike. Goal: HTTP/raw >= 0.3;
3. the SDK's caller-side cost per ``log_prediction`` (p50/p99; goal p99 < 50 us) while its
   sender thread ships the rows to the server;
4. the SDK's DataFrame path: ``log_predictions(DataFrame)`` of the same rows, end-to-end rows/s
   next to the per-row ``log_prediction`` loop (``--sdk-repeats`` alternating runs, medians);
5. the server's peak RSS (VmHWM);
6. the cost of pending feedback (feedback whose prediction has not arrived): the store's append
   rate (the writer thread's path) with 0, 1 and 10,000 pending rows next to a large feedback
   table, median of ``--repeats`` runs. Pending rows must cost close to nothing per commit.

    .venv/bin/python bench/ingest.py [--batches 40] [--json-batches 6] [--sdk-rows 100000] [--sdk-repeats 3]
    .venv/bin/python bench/ingest.py --pending-only [--feedback-rows 200000] [--repeats 3]
    .venv/bin/python bench/ingest.py --sdk-only [--sdk-rows 100000] [--sdk-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pyarrow as pa

from tuneloop.monitor.auth import create_token
from tuneloop.monitor.client import Client, arrow_stream
from tuneloop.monitor.collect import to_store_table
from tuneloop.monitor.storage import MIGRATIONS, Store, open_postgres

DIM, BATCH, CLIENTS = 384, 1000, 4
LABELS = np.array(["negative", "neutral", "positive"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batch(k: int, rng: np.random.Generator) -> pa.Table:
    """One request's rows as the wire table the SDK sends (ids unique per run)."""
    probs = rng.dirichlet(np.ones(3), BATCH)
    return pa.table({
        "id": pa.array([f"b{k}-{i}" for i in range(BATCH)]),
        "text": pa.array([f"review {k}-{i}: the flight was fine, the food less so" for i in range(BATCH)]),
        "label": pa.array(LABELS[probs.argmax(1)]),
        "confidence": pa.array(probs.max(1)),
        "probs": pa.array([list(zip(LABELS.tolist(), p.tolist(), strict=True)) for p in probs],
                          pa.map_(pa.string(), pa.float64())),
        "embedding": pa.FixedSizeListArray.from_arrays(rng.standard_normal(BATCH * DIM, dtype=np.float32), DIM),
        "model_version": pa.array(["v1"] * BATCH),
    })


def json_body(table: pa.Table) -> bytes:
    rows = table.to_pylist()
    for r in rows:
        r["probs"] = dict(r["probs"])
    return json.dumps({"records": rows}).encode()


def start_server(data_dir: Path, store_url: str = "") -> tuple[subprocess.Popen, str, str]:
    """A ``tuneloop serve`` subprocess on ``data_dir`` (and the PostgreSQL database ``store_url``, if given)."""
    port = free_port()
    with open_postgres(store_url) if store_url else Store(data_dir / "tuneloop.duckdb") as store:
        token = create_token(store, "ingest", "bench")
    config = data_dir / "bench.toml"
    config.write_text(f'[paths]\ndata_dir = "{data_dir}"\n[store]\nurl = "{store_url}"\n[server]\nport = {port}\n'
                      '[embedder]\nenabled = false\n[logging]\nlevel = "WARNING"\n')
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.monitor.cli", "--config", str(config), "serve"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url, token
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def http_ingest(url: str, token: str, bodies: list[bytes], content_type: str, clients: int = CLIENTS) -> float:
    """Rows/s for posting ``bodies`` with ``clients`` concurrent connections (each answered after COMMIT)."""
    work: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for b in bodies:
        work.put(b)
    failures: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
                          timeout=300) as c:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                r = c.post("/v1/predictions", content=body)
                if r.status_code != 200 or r.json()["accepted"] != BATCH:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    if failures:
        raise SystemExit(f"ingest failed: {failures[:3]}")
    return len(bodies) * BATCH / elapsed


def raw_append(tables: list[pa.Table], path: Path) -> float:
    """Rows/s for the raw in-process Arrow append of the same rows into a fresh file, same schema."""
    con = duckdb.connect(str(path))
    for _, sql in MIGRATIONS:
        con.execute(sql)
    t = time.perf_counter()
    for arrow_table in tables:  # noqa: B007 - read by DuckDB's replacement scan
        con.execute("INSERT INTO predictions SELECT * FROM arrow_table")
    elapsed = time.perf_counter() - t
    con.close()
    return len(tables) * BATCH / elapsed


def as_raw(table: pa.Table, seq: int) -> pa.Table:
    """The wire table in the store's exact column layout (what the server itself derives)."""
    store_table = to_store_table(table)
    n = store_table.num_rows
    return pa.table({"project": pa.array(["default"] * n), **{c: store_table[c] for c in store_table.column_names},
                     "ingest_seq": pa.array([seq] * n, pa.int64())})


def sdk_cost(url: str, token: str, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Nanoseconds per log_prediction call (with a 384-d embedding and probs), and rows/s delivered."""
    embeddings = rng.standard_normal((1000, DIM), dtype=np.float32)
    probs = {"negative": 0.1, "neutral": 0.2, "positive": 0.7}
    costs = np.empty(rows, np.int64)
    tl = Client(url, token, batch_size=1000, max_buffer=200_000)
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for i in range(rows):
        t = clock()
        tl.log_prediction("the seat was fine and the crew were kind", "positive", probs=probs,
                          embedding=embeddings[i % 1000], model_version="v1")
        costs[i] = clock() - t
    ok = tl.close()
    elapsed = time.perf_counter() - start
    if not ok or tl.sent["predictions"] != rows:
        raise SystemExit(f"SDK lost rows: sent {tl.sent}, errors {tl.errors[:1]}")
    return costs, rows / elapsed


def pending_append_rate(path: Path, pending: int, feedback_rows: int, batches: list[pa.Table]) -> float:
    """Rows/s of prediction appends into a store holding ``feedback_rows`` feedback rows and
    ``pending`` feedback rows for predictions that never arrive."""
    labels = pa.array(np.resize(LABELS, feedback_rows))
    with Store(path) as store:
        old_ids = pa.array([f"old{i}" for i in range(feedback_rows)])
        store.append_predictions(pa.table({"id": old_ids, "text": pa.array(["old"] * feedback_rows), "label": labels}))
        store.append_feedback(pa.table({"prediction_id": old_ids, "label": labels}))
        if pending:
            store.append_feedback(pa.table({"prediction_id": pa.array([f"never{i}" for i in range(pending)]),
                                            "label": pa.array(np.resize(LABELS, pending))}))
        t = time.perf_counter()
        for table in batches:
            store.append_predictions(table)
        return sum(b.num_rows for b in batches) / (time.perf_counter() - t)


def pending_cost(tmp: Path, feedback_rows: int, repeats: int, rng: np.random.Generator) -> dict[int, list[float]]:
    """Append rates (rows/s) per pending count, ``repeats`` runs each, the counts interleaved."""
    rates: dict[int, list[float]] = {0: [], 1: [], 10_000: []}
    for r in range(repeats):
        for pending in rates:
            batches = [to_store_table(make_batch(500_000 + r * 1000 + k, rng)) for k in range(20)]
            rates[pending].append(pending_append_rate(tmp / f"pending-{pending}-{r}.duckdb", pending, feedback_rows,
                                                      batches))
    return rates


def print_pending(rates: dict[int, list[float]], feedback_rows: int) -> None:
    print(f"store appends (20 x {BATCH} rows, {feedback_rows:,} feedback rows stored), median of "
          f"{len(rates[0])} runs:")
    base = float(np.median(rates[0]))
    for pending, values in rates.items():
        med = float(np.median(values))
        print(f"  {pending:>6,} pending feedback rows : {med:10,.0f} rows/s   ratio to none {med / base:.2f}   "
              "runs: " + ", ".join(f"{x:,.0f}" for x in values))


def sdk_frame_rate(url: str, token: str, rows: int, rng: np.random.Generator) -> float:
    """Rows/s delivered for one ``log_predictions(DataFrame)`` of ``rows`` rows, including close()."""
    import pandas as pd

    embeddings = rng.standard_normal((1000, DIM), dtype=np.float32)
    frame = pd.DataFrame({
        "text": ["the seat was fine and the crew were kind"] * rows, "label": ["positive"] * rows,
        "probs": [{"negative": 0.1, "neutral": 0.2, "positive": 0.7}] * rows,
        "embedding": [embeddings[i % 1000] for i in range(rows)], "model_version": ["v1"] * rows,
    })
    tl = Client(url, token, batch_size=1000, max_buffer=200_000)
    start = time.perf_counter()
    tl.log_predictions(frame)
    ok = tl.close()
    elapsed = time.perf_counter() - start
    if not ok or tl.sent["predictions"] != rows:
        raise SystemExit(f"SDK lost rows: sent {tl.sent}, errors {tl.errors[:1]}")
    return rows / elapsed


def sdk_paths(url: str, token: str, rows: int, repeats: int,
              rng: np.random.Generator) -> tuple[np.ndarray, list[float], list[float]]:
    """Per-row and DataFrame SDK runs, alternating so load from other processes hits both alike:
    the last run's per-call costs and the rows/s of each run."""
    row_rates, frame_rates = [], []
    for _ in range(repeats):
        costs, rate = sdk_cost(url, token, rows, rng)
        row_rates.append(rate)
        frame_rates.append(sdk_frame_rate(url, token, rows, rng))
    return costs, row_rates, frame_rates


def print_sdk_paths(rows: int, row_rates: list[float], frame_rates: list[float]) -> None:
    for name, rates in (("per-row log_prediction", row_rates), ("log_predictions(DataFrame)", frame_rates)):
        print(f"SDK end-to-end, {name:<27} ({rows} rows incl. close): median {np.median(rates):,.0f} rows/s, "
              f"range {min(rates):,.0f}-{max(rates):,.0f}   runs: " + ", ".join(f"{x:,.0f}" for x in rates))
    print(f"  ratio DataFrame/per-row (medians)  : {np.median(frame_rates) / np.median(row_rates):10.2f}")


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40, help="1000-row batches per HTTP/raw round")
    ap.add_argument("--json-batches", type=int, default=6)
    ap.add_argument("--sdk-rows", type=int, default=100_000)
    ap.add_argument("--feedback-rows", type=int, default=200_000, help="feedback table size for the pending case")
    ap.add_argument("--repeats", type=int, default=3, help="runs per pending count")
    ap.add_argument("--pending-only", action="store_true", help="only measure the cost of pending feedback")
    ap.add_argument("--sdk-repeats", type=int, default=3, help="alternating per-row / DataFrame SDK runs")
    ap.add_argument("--sdk-only", action="store_true", help="only compare the SDK's per-row and DataFrame paths")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.pending_only:
        with tempfile.TemporaryDirectory() as tmp:
            print_pending(pending_cost(Path(tmp), args.feedback_rows, args.repeats, rng), args.feedback_rows)
        return
    if args.sdk_only:
        with tempfile.TemporaryDirectory() as tmp:
            proc, url, token = start_server(Path(tmp) / "server")
            try:
                _, row_rates, frame_rates = sdk_paths(url, token, args.sdk_rows, args.sdk_repeats, rng)
            finally:
                proc.terminate()
                proc.wait(60)
        print_sdk_paths(args.sdk_rows, row_rates, frame_rates)
        return

    rounds = [[make_batch(r * 10_000 + k, rng) for k in range(args.batches)] for r in range(2)]
    json_tables = [make_batch(90_000 + k, rng) for k in range(args.json_batches)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        proc, url, token = start_server(tmp_path / "server")
        rss_steps = {"idle": rss_mb(proc.pid, "VmRSS")}
        try:
            raw_rates, http_rates = [], []
            for r, tables in enumerate(rounds):
                raw_tables = [as_raw(t, i + 1) for i, t in enumerate(tables)]
                raw_rates.append(raw_append(raw_tables, tmp_path / f"raw{r}.duckdb"))
                http_rates.append(http_ingest(url, token, [arrow_stream(t) for t in tables],
                                              "application/vnd.apache.arrow.stream"))
            rss_steps["after Arrow ingest"] = rss_mb(proc.pid)
            json_rate = http_ingest(url, token, [json_body(t) for t in json_tables], "application/json")
            rss_steps["after JSON ingest"] = rss_mb(proc.pid)
            costs, row_rates, frame_rates = sdk_paths(url, token, args.sdk_rows, args.sdk_repeats, rng)
            rss = rss_steps["after SDK"] = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)

    raw, http = max(raw_rates), max(http_rates)
    us = costs / 1000
    print(f"rows per request {BATCH}, embedding dim {DIM}, {CLIENTS} concurrent clients, "
          f"{args.batches} requests per round, 2 rounds")
    print(f"raw DuckDB Arrow append (in-process) : {raw:10,.0f} rows/s   rounds: "
          + ", ".join(f"{x:,.0f}" for x in raw_rates))
    print(f"HTTP ingest, Arrow IPC bodies        : {http:10,.0f} rows/s   rounds: "
          + ", ".join(f"{x:,.0f}" for x in http_rates))
    print(f"  ratio HTTP/raw                     : {http / raw:10.2f}   (goal >= 0.3)")
    print(f"HTTP ingest, JSON bodies (reference) : {json_rate:10,.0f} rows/s   ratio to raw {json_rate / raw:.2f}")
    p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
    print(f"SDK log_prediction caller cost       : p50 {p50:.1f} us, p99 {p99:.1f} us, p99.9 {p999:.0f} us, "
          f"max {us.max():.0f} us   (goal p99 < 50 us)")
    print_sdk_paths(args.sdk_rows, row_rates, frame_rates)
    print(f"server peak RSS                      : {rss:10.0f} MB   ("
          + ", ".join(f"{k}: {v:.0f}" for k, v in rss_steps.items()) + "; idle is current RSS)")
    with tempfile.TemporaryDirectory() as tmp:
        print_pending(pending_cost(Path(tmp), args.feedback_rows, args.repeats, rng), args.feedback_rows)


if __name__ == "__main__":
    main()
