"""Serving benchmark on the real packaged base model (all-MiniLM-L6-v2), in one run:

1. ``POST /v1/predict`` at batch 32 with every prediction logged (HTTP + JSON + group-committed
   DuckDB rows) against the bare model forward on the same batches in this process.
   Goal: logging + HTTP add at most 10 % to the forward.
2. 16 concurrent single-text clients against dynamic batching (``serve_max_batch = 64``) and
   against batch-1 serving (``serve_max_batch = 1``). Goal: dynamic batching >= 3x throughput.

   Also printed: concurrent single-text throughput against the offline batch-32 throughput of
   phase 1 (goal >= 0.8x), and the mean batch against the queue depth it was taken from.

Beside wall-clock figures, CPU-time figures are printed: CPU seconds of the server process (read
from /proc) per text against CPU seconds of the bare forward per text. On a machine shared with
other work they move far less than wall-clock rates, which follow whatever else runs; on idle cores
the wall-clock ratios approach them.

The concurrent clients are asyncio tasks in this process, one keep-alive connection each, speaking
plain HTTP/1.1 (:class:`LeanClient`): they share the cores with the server, so they are kept cheap,
and their own CPU per request is printed beside the server's.

Both servers are real ``tuneloop serve`` processes on loopback, each with its own data dir and
the same version. Every figure is a ratio measured within one round; rounds alternate which side
goes first so that machine noise hits both sides alike, and the summary gives the median round
with the range over rounds. Thread counts are pinned (``--threads``, default: the CPU count) for
torch, OpenMP and MKL in this process and in both servers (one uvicorn worker each), so both sides
compete for the cores the same way in every run.

In phase 1 the two sides also alternate batch by batch inside a round (bare then HTTP on one
batch, HTTP then bare on the next), so that a burst of load from other processes lands on both.
With ``--profile``, py-spy samples the dynamic server in one extra round of each phase, run after
the measured rounds: sampling pauses the process it samples, so it never overlaps a measurement.

    .venv/bin/python bench/serve.py [--rounds 7] [--batches 6] [--seconds 5] [--threads N]
                                    [--profile DIR]   # py-spy on the dynamic server (flame graphs)
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store import spread  # noqa: E402 - median [min..max], as bench/store.py prints it

os.environ.setdefault("HF_HUB_OFFLINE", "1")
THREADS = int(os.environ.get("TUNELOOP_BENCH_THREADS") or os.cpu_count() or 1)


def pin_threads(threads: int) -> None:
    """Fix the OpenMP/MKL pool sizes (read once, when torch loads) for this process and its children."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)

LABELS = ["negative", "neutral", "positive"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def make_version(root: Path, train_rows: int, tweets) -> Path:  # type: ignore[no-untyped-def]
    """Version v1 on the packaged base: trained briefly on real tweets, or an untrained head."""
    from tuneloop.monitor.config import load_settings
    from tuneloop.retrain.build import train_version
    from tuneloop.retrain.model import TextClassifier
    from tuneloop.retrain.versions import data_manifest, write_version

    settings = load_settings(paths={"data_dir": str(root)}, model={"epochs": 1})
    if train_rows:
        t = time.perf_counter()
        rows = tweets.iloc[:train_rows][["text", "label"]]
        trained = train_version(settings.models_dir, settings.model, rows, LABELS, version="v1")
        print(f"trained v1 on {train_rows} tweets in {time.perf_counter() - t:.0f}s", flush=True)
        return trained.path
    clf = TextClassifier.from_base(settings.model.base, LABELS, settings.model)
    return write_version(settings.models_dir, "v1", clf, {"note": "untrained head"},
                         data_manifest(tweets.iloc[:10][["text", "label"]]))


def start_server(data_dir: Path, version_dir: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    from tuneloop.monitor import registry
    from tuneloop.monitor.storage import Store

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


def start_profile(pid: int, out: Path) -> subprocess.Popen | None:
    """py-spy on a server process (all threads, native frames off), written as a flame graph on stop."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("py-spy is not installed: pip install py-spy", flush=True)
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "-r", "200", "-o", str(out), "-f", "raw"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)


IDLE_FRAMES = ("Condition.wait", "Queue.get", "_worker (", "Runner.run (", "select (", "Event.wait", "Writer._run (")
"""Leaf frames of threads waiting for work (py-spy's raw format samples them too)."""


def summarise_profile(path: Path, top: int = 10) -> list[str]:
    """The busy samples of a py-spy raw profile by thread role, then the heaviest leaf frames."""
    roles: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or frames[-1].startswith(IDLE_FRAMES):
            continue
        role = next((name for key, name in (("ModelServer._process", "forward"), ("Writer._run", "writer"),
                                             ("Runner.run", "event loop")) if key in stack), "other")
        roles[role] += int(count)
        leaves[f"{role}: {' < '.join(f.split(' (')[0] for f in frames[-1:-4:-1])}"] += int(count)
    busy = sum(roles.values()) or 1
    out = [f"{path.name}: {busy} busy samples; " + ", ".join(f"{r} {n / busy:.0%}" for r, n in roles.most_common())]
    out += [f"  {n / busy:6.1%}  {leaf}" for leaf, n in leaves.most_common(top)]
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_batch(clf, batch: list[str], worker: ThreadPoolExecutor) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall, CPU) seconds of the forward alone, run on a long-lived worker thread exactly as the server's
    batch worker runs it (torch's CPU parallelism can behave differently on the main thread)."""
    t, c = time.perf_counter(), time.process_time()
    worker.submit(clf.predict, batch, batch_size=len(batch)).result()
    return time.perf_counter() - t, time.process_time() - c


def http_batch(client: httpx.Client, batch: list[str], server_pid: int) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of one ``POST /v1/predict``."""
    t, c = time.perf_counter(), cpu_seconds(server_pid)
    r = client.post("/v1/predict", json={"texts": batch})
    elapsed = time.perf_counter() - t
    r.raise_for_status()
    return elapsed, cpu_seconds(server_pid) - c


def paired_round(clf, client: httpx.Client, batches: list[list[str]], worker: ThreadPoolExecutor,  # type: ignore[no-untyped-def]
                 server_pid: int, first_http: bool) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(bare, http) (wall, CPU) seconds per batch; the side that goes first alternates from batch to batch."""
    bare, http = [], []
    for i, b in enumerate(batches):
        if (i % 2 == 0) == first_http:
            http.append(http_batch(client, b, server_pid))
            bare.append(bare_batch(clf, b, worker))
        else:
            bare.append(bare_batch(clf, b, worker))
            http.append(http_batch(client, b, server_pid))
    return bare, http


class LeanClient:
    """One keep-alive HTTP/1.1 connection that posts JSON and reads the answer by its Content-Length.

    The bench's clients share the 2 cores with the server they measure; httpx spends several CPU
    milliseconds per request, which the server then lacks. This client spends a fraction of that, so
    the concurrent figures measure the server rather than the load generator. It reads exactly what
    the server sends (status line, headers with Content-Length, body); anything else is an error.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def connect(cls, url: str) -> LeanClient:
        host, _, port = url.removeprefix("http://").partition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        payload = orjson.dumps(body)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *headers = head.decode("latin-1").split("\r\n")
        length = next(int(v) for k, _, v in (h.partition(":") for h in headers) if k.lower() == "content-length")
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def concurrent_round(url: str, texts: list[str], clients: int, seconds: float) -> tuple[int, list[float], int]:
    """``clients`` closed-loop single-text callers (one asyncio task and keep-alive connection each)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one(k: int) -> None:
        nonlocal errors
        client = await LeanClient.connect(url)
        try:
            i = k
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                status, _ = await client.post("/v1/predict", {"texts": [texts[i % len(texts)]]})
                latencies.append(time.perf_counter() - t)
                errors += status != 200
                i += clients
        finally:
            await client.close()

    await asyncio.gather(*(one(k) for k in range(clients)))
    return len(latencies), latencies, errors


def by_depth(before: dict, after: dict) -> list[tuple[str, int, float]]:
    """(queue depth bucket, forwards, mean texts per forward) between two /v1/serving snapshots."""
    rows = []
    for depth, now in after.get("by_queue_depth", {}).items():
        then = before.get("by_queue_depth", {}).get(depth, {"batches": 0, "texts": 0})
        n = now["batches"] - then["batches"]
        if n:
            rows.append((depth, n, (now["texts"] - then["texts"]) / n))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", type=int, default=6, help="batches of 32 per side per round")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per concurrency phase per side per round")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--train-rows", type=int, default=300, help="0 = untrained head (forward cost is the same)")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="torch/OpenMP threads for both servers and the bare forward (default: CPU count)")
    ap.add_argument("--profile", type=Path, help="write py-spy flame graphs of the dynamic server here")
    args = ap.parse_args()
    pin_threads(args.threads)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    from tuneloop.monitor.demo.data import load_tweets
    from tuneloop.retrain.model import set_threads
    from tuneloop.retrain.versions import load_version

    set_threads(args.threads)
    tweets = load_tweets().sample(frac=1.0, random_state=0)
    texts = tweets["text"].tolist()
    root = Path(tempfile.mkdtemp(prefix="tuneloop-bench-serve-"))
    procs = []
    load = [os.getloadavg()[0]]
    overheads, p50_ratios, bare_rates, http_rates = [], [], [], []
    speedups, vs_offline, dyn_rates, one_rates = [], [], [], []
    cpu_overheads, cpu_speedups, cpu_vs_offline, bare_cpu_per_text = [], [], [], []
    dyn_lat, one_lat, errors = [], [], 0
    client_cpu_ms, server_cpu_ms = [], []  # per request on the dynamic side: this process's clients vs the server
    try:
        version_dir = make_version(root / "train", args.train_rows, tweets)
        dyn, dyn_url = start_server(root / "dynamic", version_dir, 64, args.threads)
        procs.append(dyn)
        one, one_url = start_server(root / "batch1", version_dir, 1, args.threads)
        procs.append(one)
        clf = load_version(version_dir, threads=args.threads).merge_for_serving()  # the model as the servers run it
        pool = texts[1000:]
        print(f"servers up; torch threads {__import__('torch').get_num_threads()} (pinned {args.threads}), "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

        # -- 1. logging + HTTP overhead at batch 32 ---------------------------------------------------
        worker = ThreadPoolExecutor(1, initializer=set_threads, initargs=(args.threads,))
        with httpx.Client(base_url=dyn_url, timeout=120) as client, worker:
            warm = [pool[i : i + 32] for i in range(0, 64, 32)]
            paired_round(clf, client, warm, worker, dyn.pid, False)
            for r in range(args.rounds):
                batches = [pool[(r * args.batches + i) * 32 : (r * args.batches + i + 1) * 32]
                           for i in range(args.batches)]
                timed = paired_round(clf, client, batches, worker, dyn.pid, first_http=bool(r % 2))
                (bare, bare_cpu), (http, http_cpu) = (list(zip(*side, strict=True)) for side in timed)
                cpu_overheads.append(sum(http_cpu) / sum(bare_cpu) - 1)
                bare_cpu_per_text.append(sum(bare_cpu) / (32 * len(bare)))
                overheads.append(sum(http) / sum(bare) - 1)
                p50_ratios.append(statistics.median(http) / statistics.median(bare))
                bare_rates.append(32 * len(bare) / sum(bare))
                http_rates.append(32 * len(http) / sum(http))
            if args.profile:  # one unmeasured round under py-spy
                profile = start_profile(dyn.pid, args.profile / "serve-batch32.txt")
                for b in batches:
                    http_batch(client, b, dyn.pid)
                stop_profile(profile)
        logged = httpx.get(f"{dyn_url}/v1/status").json().get("project_predictions")
        del clf
        load.append(os.getloadavg()[0])

        # -- 2. dynamic batching vs batch-1 under concurrent single-text clients ----------------------
        asyncio.run(concurrent_round(dyn_url, pool, 4, 2))  # warm both
        asyncio.run(concurrent_round(one_url, pool, 4, 2))
        before = httpx.get(f"{dyn_url}/v1/serving").json()["projects"]["default"]
        for r in range(args.rounds):
            sides = [(dyn_url, dyn_lat, dyn.pid), (one_url, one_lat, one.pid)]
            rates, cpu_per_request = {}, {}
            for url, lat, pid in sides[:: -1 if r % 2 else 1]:
                c, own = cpu_seconds(pid), time.process_time()
                n, got, e = asyncio.run(concurrent_round(url, pool, args.clients, args.seconds))
                cpu_per_request[url] = (cpu_seconds(pid) - c) / max(n, 1)
                if url == dyn_url:
                    client_cpu_ms.append((time.process_time() - own) / max(n, 1) * 1e3)
                    server_cpu_ms.append(cpu_per_request[url] * 1e3)
                rates[url] = n / args.seconds
                lat += got
                errors += e
            dyn_rates.append(rates[dyn_url])
            one_rates.append(rates[one_url])
            speedups.append(rates[dyn_url] / max(rates[one_url], 1e-9))
            vs_offline.append(rates[dyn_url] / bare_rates[r])
            cpu_speedups.append(cpu_per_request[one_url] / max(cpu_per_request[dyn_url], 1e-9))
            cpu_vs_offline.append(bare_cpu_per_text[r] / max(cpu_per_request[dyn_url], 1e-9))
        after = httpx.get(f"{dyn_url}/v1/serving").json()["projects"]["default"]
        batches_run = after["batches"] - before["batches"]
        mean_batch = (after["texts"] - before["texts"]) / max(batches_run, 1)
        depths = by_depth(before, after)
        load.append(os.getloadavg()[0])
        if args.profile:  # one unmeasured round under py-spy
            profile = start_profile(dyn.pid, args.profile / "serve-concurrent.txt")
            asyncio.run(concurrent_round(dyn_url, pool, args.clients, args.seconds))
            stop_profile(profile)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
        shutil.rmtree(root, ignore_errors=True)

    def row(name: str, rates: list[float], lat: list[float]) -> str:
        return f"   {name:30}{spread(rates, '{:.1f}'):>24}{pct(lat, 50) * 1e3:>9.1f}{pct(lat, 99) * 1e3:>9.1f}"

    print()
    print(f"load average (1 min) at start / after phase 1 / at end: {' / '.join(f'{x:.1f}' for x in load)}; "
          f"threads pinned to {args.threads}; figures: median [min..max] over {args.rounds} rounds")
    print(f"1. batch 32, {args.batches} batches per side per round")
    print(f"   {'':30}{'texts/s':>24}")
    print(f"   {'bare forward (worker thread)':30}{spread(bare_rates, '{:.1f}'):>24}")
    print(f"   {'POST /v1/predict + logging':30}{spread(http_rates, '{:.1f}'):>24}")
    print(f"   HTTP + logging overhead: {spread(overheads, '{:+.1%}')} of the forward (goal <= +10%); "
          f"p50 ratio {spread(p50_ratios)}; rows logged {logged}")
    print(f"   by CPU time: server {spread(cpu_overheads, '{:+.1%}')} over the bare forward's "
          f"{spread([c * 1e3 for c in bare_cpu_per_text], '{:.1f}')} CPU ms per text")
    print(f"2. {args.clients} concurrent single-text clients, {args.seconds:.0f}s per side per round")
    print(f"   {'':30}{'req/s':>24}{'p50 ms':>9}{'p99 ms':>9}")
    print(row("dynamic batching (max 64)", dyn_rates, dyn_lat))
    print(row("batch-1 serving", one_rates, one_lat))
    print(f"   dynamic batching speed-up: {spread(speedups, '{:.2f}x')} (goal >= 3x); failed requests {errors}")
    print(f"   concurrent single-text vs offline batch-32 throughput: {spread(vs_offline, '{:.2f}x')} (goal >= 0.8x)")
    print(f"   by CPU time per text: speed-up {spread(cpu_speedups, '{:.2f}x')}, "
          f"vs offline batch-32 {spread(cpu_vs_offline, '{:.2f}x')}")
    print(f"   CPU per request on the dynamic side: server {spread(server_cpu_ms, '{:.1f}')} ms, this bench's "
          f"own clients {spread(client_cpu_ms, '{:.1f}')} ms (they share the cores with the server)")
    print(f"   mean batch {mean_batch:.1f} texts over {batches_run} forwards; by queue depth when taken:")
    for depth, n, mean in depths:
        print(f"     {depth:>8} texts queued: {n:6} forwards, mean batch {mean:5.1f}")
    if args.profile:
        for name in ("serve-batch32.txt", "serve-concurrent.txt"):
            if (args.profile / name).exists():
                print("\n".join(summarise_profile(args.profile / name)))


if __name__ == "__main__":
    main()
