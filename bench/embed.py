"""Background embedding: its throughput vs the bare encoder, and its effect on ingest latency.

1. Throughput. The same real tweets are embedded (a) by the bare packaged encoder
   (``Encoder.encode``, batch 64, in input order and sorted by length) and (b) by the
   :class:`BackgroundEmbedder` thread after being logged without embeddings (select, encode,
   UPDATE per batch). Rounds alternate so machine load hits both alike; the figure is
   background rows/s / bare rows/s (goal >= 0.8; the stricter, length-sorted bare run is the
   denominator).
   Both run at the same OS priority here (see ``throughput``).
2. Ingest latency. A real server (``tuneloop serve`` on loopback) with a backlog of rows without
   embeddings receives ``POST /v1/predictions`` (10 records, no embeddings) at a steady rate;
   p99 latency with the embedder off vs on (busy with the backlog, at its default
   ``[embedder] nice``), in alternating phases. Goal: ratio <= 1.5.

    .venv/bin/python bench/embed.py [--texts 1024] [--rounds 2] [--seconds 20] [--rate 20] [--pairs 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from tuneloop.monitor.config import EmbedderSettings, load_settings
from tuneloop.monitor.demo.data import load_tweets
from tuneloop.monitor.embedder import BackgroundEmbedder, SharedEncoder, pending_by_project
from tuneloop.monitor.storage import Store


def tweets(n: int, seed: int) -> list[str]:
    df = load_tweets()
    return df["text"].sample(n, random_state=seed).astype(str).tolist()


def bare_rate(shared: SharedEncoder, texts: list[str], sort: bool) -> float:
    enc = shared._encoder
    batch = sorted(texts, key=len) if sort else texts
    t0 = time.perf_counter()
    enc.encode(batch, batch_size=64)
    return len(texts) / (time.perf_counter() - t0)


def background_rate(settings, texts: list[str], directory: Path, tag: str) -> float:  # type: ignore[no-untyped-def]
    with Store(directory / f"bg-{tag}.duckdb") as store:
        store.append_predictions([{"text": t, "label": "neutral"} for t in texts])
        embedder = BackgroundEmbedder(store, settings)
        t0 = time.perf_counter()
        embedder.start()
        while pending_by_project(store):
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        embedder.stop()
        return len(texts) / elapsed


def throughput(args: argparse.Namespace, directory: Path) -> float:
    # nice 0 here: this part measures the pipeline's overhead against the bare encoder at equal OS
    # priority (on a shared machine a niced thread also yields to unrelated processes); the latency
    # part below runs the server's default priority.
    settings = load_settings(paths={"data_dir": str(directory)},
                             embedder={"poll_seconds": 0.05, "nice": 0, "batch_size": args.batch_size})
    shared = SharedEncoder.get(settings.model.base, settings.model.max_length)
    shared.encode(["warm up the encoder"] * 8)
    bare_in_order, bare_sorted, background = [], [], []
    for r in range(args.rounds):
        texts = tweets(args.texts, seed=r)
        steps = [("bare", False), ("bare", True), ("bg", None)]
        for kind, sort in steps if r % 2 == 0 else steps[::-1]:
            if kind == "bare":
                (bare_sorted if sort else bare_in_order).append(bare_rate(shared, texts, bool(sort)))
            else:
                background.append(background_rate(settings, texts, directory, str(r)))
    b_in, b_sorted, bg = (float(np.median(x)) for x in (bare_in_order, bare_sorted, background))
    print(f"texts per round: {args.texts} real tweets, rounds: {args.rounds}, torch threads: "
          f"{__import__('torch').get_num_threads()}")
    print(f"bare encoder, input order     : {b_in:8.1f} rows/s")
    print(f"bare encoder, sorted by length: {b_sorted:8.1f} rows/s")
    print(f"background embedder           : {bg:8.1f} rows/s "
          f"(select + encode + UPDATE per {settings.embedder.batch_size} rows)")
    ratio = bg / b_sorted
    print(f"ratio background / bare (sorted)    : {ratio:.2f}  (goal >= 0.8)")
    print(f"ratio background / bare (input order): {bg / b_in:.2f}")
    return ratio


# ---- ingest latency ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(directory: Path, enabled: bool, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = directory / f"bench-{int(enabled)}.toml"
    cfg.write_text(
        f'[paths]\ndata_dir = "{directory}"\n[server]\nport = {port}\n[auth]\nenabled = false\n'
        f"[embedder]\nenabled = {str(enabled).lower()}\npoll_seconds = 0.2\nbatch_size = {args.batch_size}\n"
        f"nice = {args.nice}\n"
        "[drift]\ninterval_seconds = 86400\n[retrain]\nenabled = false\n[logging]\nlevel = \"WARNING\"\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.monitor.cli", "--config", str(cfg), "serve"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pending(client: httpx.Client) -> int:
    return int(client.get("/v1/projects/default").json()["counts"]["pending_embeddings"])


def measure(client: httpx.Client, texts: list[str], seconds: float, rate: float, tag: str) -> np.ndarray:
    latencies = []
    interval = 1.0 / rate
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        due = start + i * interval
        time.sleep(max(0.0, due - time.perf_counter()))
        records = [{"id": f"{tag}-{i}-{j}", "text": texts[(i * 10 + j) % len(texts)], "label": "neutral"}
                   for j in range(10)]
        t0 = time.perf_counter()
        r = client.post("/v1/predictions", json={"records": records})
        latencies.append(time.perf_counter() - t0)
        r.raise_for_status()
        i += 1
    return np.array(latencies) * 1000


def ingest_latency(args: argparse.Namespace, directory: Path) -> float:
    directory.mkdir(parents=True, exist_ok=True)
    texts = tweets(4000, seed=7)
    with Store(directory / "tuneloop.duckdb") as store:  # the backlog the embedder will chew on
        for k in range(0, args.backlog, 1000):
            store.append_predictions([{"id": f"backlog-{k + j}", "text": texts[(k + j) % len(texts)],
                                       "label": "neutral"} for j in range(min(1000, args.backlog - k))])
    results: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for enabled in [False, True] * args.pairs:  # alternating, so a change of machine load hits both
        proc, url = serve(directory, enabled, args)
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                measure(client, texts, 2.0, args.rate, f"warm{len(results[enabled])}{int(enabled)}")  # not counted
                if enabled:  # wait until the embedder has loaded its encoder and is busy
                    before = pending(client)
                    while pending(client) >= before:
                        time.sleep(0.2)
                p_before = pending(client)
                lat = measure(client, texts, args.seconds, args.rate, f"m{len(results[enabled])}{int(enabled)}")
                p_after = pending(client)
        finally:
            stop(proc)
        results[enabled].append(lat)
        state = "on " if enabled else "off"
        print(f"embedder {state}: {len(lat)} requests of 10 records at {args.rate}/s: "
              f"p50 {np.percentile(lat, 50):6.1f} ms  p99 {np.percentile(lat, 99):6.1f} ms  max {lat.max():6.1f} ms; "
              f"pending embeddings {p_before} -> {p_after}"
              + (f" (embedded {(p_before + 10 * len(lat) - p_after) / args.seconds:.1f} rows/s meanwhile)"
                 if enabled else ""))
    per_pair = [np.percentile(a, 99) / np.percentile(b, 99) for a, b in zip(results[True], results[False], strict=True)]
    print(f"p99 ratio per pair: {', '.join(f'{r:.2f}' for r in per_pair)}")
    on, off = np.concatenate(results[True]), np.concatenate(results[False])
    print(f"pooled: p99 off {np.percentile(off, 99):.1f} ms, on {np.percentile(on, 99):.1f} ms "
          f"(p50 off {np.percentile(off, 50):.1f} ms, on {np.percentile(on, 50):.1f} ms)")
    ratio = float(np.percentile(on, 99) / np.percentile(off, 99))
    print(f"ratio p99 with / without embedder: {ratio:.2f}  (goal <= 1.5)")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--backlog", type=int, default=20_000)
    ap.add_argument("--pairs", type=int, default=3, help="off/on latency phases, alternating")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--batch-size", type=int, default=EmbedderSettings().batch_size, help="[embedder] batch_size")
    ap.add_argument("--nice", type=int, default=EmbedderSettings().nice, help="[embedder] nice (latency part)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-embed-") as tmp:
        directory = Path(tmp)
        if not args.skip_throughput:
            print("== background embedding throughput ==")
            throughput(args, directory)
        if not args.skip_ingest:
            print("== ingest latency with the embedder busy ==")
            ingest_latency(args, directory / "server")


if __name__ == "__main__":
    main()
