"""Serving benchmark on the real packaged base model (all-MiniLM-L6-v2), in one run:

1. ``POST /v1/predict`` at batch 32 with every prediction logged (HTTP + JSON + group-committed
   DuckDB rows) against the bare model forward on the same batches in this process.
   Goal: logging + HTTP add at most 10 % to the forward.
2. 16 concurrent single-text clients against dynamic batching (``serve_max_batch = 64``) and
   against batch-1 serving (``serve_max_batch = 1``). Goal: dynamic batching >= 3x throughput.

Both servers are real ``tuneloop serve`` processes on loopback, each with its own data dir and
the same version. Phases alternate in rounds so that machine noise hits both sides alike.

    .venv/bin/python bench/serve.py [--rounds 3] [--batches 6] [--seconds 8] [--train-rows 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LABELS = ["negative", "neutral", "positive"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def make_version(root: Path, train_rows: int, tweets) -> Path:  # type: ignore[no-untyped-def]
    """Version v1 on the packaged base: trained briefly on real tweets, or an untrained head."""
    from tuneloop.monitor import registry
    from tuneloop.monitor.config import load_settings
    from tuneloop.retrain.model import TextClassifier
    from tuneloop.retrain.versions import data_manifest, write_version

    settings = load_settings(paths={"data_dir": str(root)}, model={"epochs": 1})
    if train_rows:
        t = time.perf_counter()
        trained = registry.train_version(settings, tweets.iloc[:train_rows][["text", "label"]], LABELS, version="v1")
        print(f"trained v1 on {train_rows} tweets in {time.perf_counter() - t:.0f}s", flush=True)
        return trained.path
    clf = TextClassifier.from_base(settings.model.base, LABELS, settings.model)
    return write_version(settings.models_dir, "v1", clf, {"note": "untrained head"},
                         data_manifest(tweets.iloc[:10][["text", "label"]]))


def start_server(data_dir: Path, version_dir: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    from tuneloop.monitor import registry
    from tuneloop.monitor.store import Store

    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    if not (models / "v1").exists():
        shutil.copytree(version_dir, models / "v1")
    with Store(data_dir / "tuneloop.duckdb") as store:
        registry.register_dir(store, "default", models, "v1")
        registry.promote(store, "default", "v1", "bench")
    port = free_port()
    cfg = data_dir / "bench.toml"
    cfg.write_text(
        f'[paths]\ndata_dir = "{data_dir}"\n[server]\nport = {port}\n[auth]\nenabled = false\n'
        f"[model]\nserve_max_batch = {max_batch}\nthreads = {threads}\n[drift]\ninterval_seconds = 86400\n"
        "[retrain]\nenabled = false\n[embedder]\nenabled = false\n[logging]\nlevel = \"WARNING\"\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.monitor.cli", "-c", str(cfg), "serve"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200 and "v1" in str(r.json().get("info", {})):
                return proc, url
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def bare_round(clf, batches: list[list[str]], worker: ThreadPoolExecutor) -> list[float]:  # type: ignore[no-untyped-def]
    """The forward alone, run on a long-lived worker thread exactly as the server's batch worker runs it
    (torch's CPU parallelism can behave differently on the main thread, notably when cores are busy)."""
    out = []
    for b in batches:
        t = time.perf_counter()
        worker.submit(clf.predict, b, batch_size=len(b)).result()
        out.append(time.perf_counter() - t)
    return out


def http_round(client: httpx.Client, batches: list[list[str]]) -> list[float]:
    out = []
    for b in batches:
        t = time.perf_counter()
        r = client.post("/v1/predict", json={"texts": b})
        out.append(time.perf_counter() - t)
        r.raise_for_status()
    return out


async def concurrent_round(url: str, texts: list[str], clients: int, seconds: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one(k: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            i = k
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await c.post("/v1/predict", json={"texts": [texts[i % len(texts)]]})
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200
                i += clients

    await asyncio.gather(*(one(k) for k in range(clients)))
    return len(latencies), latencies, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=6, help="batches of 32 per side per round")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per concurrency phase per round")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--train-rows", type=int, default=300, help="0 = untrained head (forward cost is the same)")
    ap.add_argument("--threads", type=int, default=0, help="model.threads for both servers and the bare forward")
    args = ap.parse_args()

    from tuneloop.monitor.demo_data import load_tweets
    from tuneloop.retrain.model import set_threads
    from tuneloop.retrain.versions import load_version

    tweets = load_tweets().sample(frac=1.0, random_state=0)
    texts = tweets["text"].tolist()
    root = Path(tempfile.mkdtemp(prefix="tuneloop-bench-serve-"))
    procs = []
    try:
        version_dir = make_version(root / "train", args.train_rows, tweets)
        dyn, dyn_url = start_server(root / "dynamic", version_dir, 64, args.threads)
        procs.append(dyn)
        one, one_url = start_server(root / "batch1", version_dir, 1, args.threads)
        procs.append(one)
        clf = load_version(version_dir, threads=args.threads)
        pool = texts[1000:]
        print(f"servers up; torch threads {__import__('torch').get_num_threads()}, load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

        # -- 1. logging + HTTP overhead at batch 32 ---------------------------------------------------
        bare, http = [], []
        worker = ThreadPoolExecutor(1, initializer=set_threads, initargs=(args.threads,))
        with httpx.Client(base_url=dyn_url, timeout=120) as client, worker:
            warm = [pool[i : i + 32] for i in range(0, 64, 32)]
            bare_round(clf, warm, worker)
            http_round(client, warm)
            for r in range(args.rounds):
                batches = [pool[(r * args.batches + i) * 32 : (r * args.batches + i + 1) * 32]
                           for i in range(args.batches)]
                bare += bare_round(clf, batches, worker)
                http += http_round(client, batches)
        logged = httpx.get(f"{dyn_url}/v1/status").json().get("project_predictions")
        del clf

        # -- 2. dynamic batching vs batch-1 under concurrent single-text clients ----------------------
        dyn_n, one_n, dyn_lat, one_lat, errors = 0, 0, [], [], 0
        asyncio.run(concurrent_round(dyn_url, pool, 4, 2))  # warm both
        asyncio.run(concurrent_round(one_url, pool, 4, 2))
        before = httpx.get(f"{dyn_url}/v1/serving").json()["projects"]["default"]
        for _ in range(args.rounds):
            n, lat, e = asyncio.run(concurrent_round(dyn_url, pool, args.clients, args.seconds))
            dyn_n, dyn_lat, errors = dyn_n + n, dyn_lat + lat, errors + e
            n, lat, e = asyncio.run(concurrent_round(one_url, pool, args.clients, args.seconds))
            one_n, one_lat, errors = one_n + n, one_lat + lat, errors + e
        after = httpx.get(f"{dyn_url}/v1/serving").json()["projects"]["default"]
        batches_run = after["batches"] - before["batches"]
        mean_batch = (after["texts"] - before["texts"]) / max(batches_run, 1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
        shutil.rmtree(root, ignore_errors=True)

    texts_per_side = len(bare) * 32
    bare_tput, http_tput = texts_per_side / sum(bare), texts_per_side / sum(http)
    overhead = sum(http) / sum(bare) - 1
    total = args.rounds * args.seconds
    dyn_tput, one_tput = dyn_n / total, one_n / total

    def row(name: str, rate: float, lat: list[float]) -> str:
        return f"   {name:28}{rate:>10.1f}{pct(lat, 50) * 1e3:>10.1f}{pct(lat, 99) * 1e3:>10.1f}"

    print()
    print(f"1. batch 32, {len(bare)} batches per side ({args.rounds} alternating rounds)")
    print(f"   {'':28}{'texts/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(row("bare forward (worker thread)", bare_tput, bare))
    print(row("POST /v1/predict + logging", http_tput, http))
    print(f"   HTTP + logging overhead: {overhead:+.1%} of the forward (goal <= +10%); "
          f"p50 ratio {statistics.median(http) / statistics.median(bare):.3f}; rows logged {logged}")
    print(f"2. {args.clients} concurrent single-text clients, {total:.0f}s per side")
    print(f"   {'':28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(row("dynamic batching (max 64)", dyn_tput, dyn_lat))
    print(row("batch-1 serving", one_tput, one_lat))
    print(f"   dynamic batching speed-up: {dyn_tput / max(one_tput, 1e-9):.2f}x (goal >= 3x); mean batch "
          f"{mean_batch:.1f} texts over {batches_run} forwards; failed requests {errors}")


if __name__ == "__main__":
    main()
