"""The dashboard's data calls at 10k and at 1M logged predictions.

Every page of the dashboard fetches its data with the loaders in ``tuneloop.dashboard.data``
(the same HTTP calls the page makes). This benchmark seeds two stores — 10k and 1M predictions
over 30 days, 1% labelled, the newest rows with embeddings, a history of drift checks, alerts,
model versions and retrain runs — serves each with the real app on a loopback port, runs every
page's loader several times (the two servers taking turns) and prints, per HTTP call, the best
time at both sizes and the ratio 1M / 10k.

Goals: ratio <= 2 for every call (the dashboard reads rollups and bounded pools, not scans) and
every call under 1 s at 1M.

    .venv/bin/python bench/dashboard.py [--small 10000] [--large 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import uvicorn

from tuneloop.dashboard.api import Api
from tuneloop.dashboard.data import PAGE_LOADERS
from tuneloop.monitor.api.app import create_app
from tuneloop.monitor.auth import create_token
from tuneloop.monitor.config import Settings, load_settings
from tuneloop.monitor.storage import PREDICTION_COLUMNS, Store, utcnow

LABELS = np.array(["negative", "neutral", "positive"])
DAYS = 30
EMBEDDED = 10_000
"""Only the newest rows carry an embedding (what the drift checks and the label queue read)."""
DIM = 384
WINDOW = 500
"""Rows in the latest drift check's current window (drift.window_size's default)."""
BATCH = 100_000


def prediction_batches(n: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Arrow batches of ``n`` predictions spread evenly over the last DAYS days, oldest first."""
    rng = np.random.default_rng(seed)
    now = utcnow()
    start = now - timedelta(days=DAYS)
    step = timedelta(days=DAYS) / n
    for lo in range(0, n, BATCH):
        m = min(BATCH, n - lo)
        conf = rng.uniform(0.34, 1.0, m)
        labels = LABELS[rng.integers(0, 3, m)]
        probs = [json.dumps({"negative": 0.1, "neutral": 0.1, "positive": 0.8})] * m
        emb_from = max(0, n - EMBEDDED - lo)
        vectors = rng.standard_normal((max(0, m - emb_from), DIM), dtype=np.float32)
        embedding = [None] * min(m, emb_from) + [v for v in vectors]
        yield pa.table({
            "project": ["default"] * m,
            "id": [f"p{lo + i:09d}" for i in range(m)],
            "ts": pa.array([start + step * (lo + i) for i in range(m)], pa.timestamp("us")),
            "model_version": ["v1" if lo + i < n // 2 else "v2" for i in range(m)],
            "text": [f"tweet {lo + i} about a delayed flight and the crew" for i in range(m)],
            "label": labels,
            "confidence": conf,
            "margin": conf / 2,
            "probs": probs,
            "embedding": pa.array(embedding, pa.list_(pa.float32())),
            "latency_ms": pa.nulls(m, pa.float64()),
            "metadata": pa.nulls(m, pa.string()),
        }).select(PREDICTION_COLUMNS)


def seed(store: Store, n: int, reports_dir: Path) -> None:
    """Predictions (Arrow batches), 1% feedback, and the small tables at the same size for both runs."""
    for batch in prediction_batches(n):
        store.append_predictions(batch)
    rng = np.random.default_rng(1)
    labelled = rng.choice(n, size=max(n // 100, 10), replace=False)
    now = utcnow()
    store.append_feedback(pa.table({
        "prediction_id": [f"p{i:09d}" for i in labelled],
        "label": LABELS[rng.integers(0, 3, len(labelled))],
        "source": ["human"] * len(labelled),
        "annotator": ["bench"] * len(labelled),
        "ts": pa.array([now] * len(labelled), pa.timestamp("us")),
    }))
    metrics = json.dumps({"holdout": {"accuracy": 0.8, "macro_f1": 0.78}, "golden": {"accuracy": 0.81}})
    with store.transaction() as cur:
        for i, (version, status) in enumerate((("v1", "archived"), ("v2", "challenger"), ("v3", "rejected"))):
            cur.execute("INSERT INTO model_versions VALUES ('default', ?, ?, NULL, ?, ?, ?, NULL, ?, NULL)",
                        [version, now - timedelta(days=20 - 5 * i), status, f"/nonexistent/{version}", metrics,
                         now - timedelta(days=20 - 5 * i)]).fetchall()
        # Drift checks every 30 min for DAYS days (8 metrics each), a few alerts and retrain runs.
        check_rows = []
        # The latest check (id 0) compared the newest WINDOW rows, has a report and example ids.
        newest = now - timedelta(days=DAYS) / n
        window_start = now - timedelta(days=DAYS) * WINDOW / n
        examples = {"p_value": 0.01, "farthest_ids": [f"p{i:09d}" for i in range(n - 10, n)],
                    "farthest_scores": [0.5] * 10}
        report = reports_dir / "default" / "check-0.html"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("<html><body><h1>Evidently report</h1>" + "<p>row</p>" * 20_000 + "</body></html>")
        for k in range(DAYS * 48):
            ts = now - timedelta(minutes=30 * k)
            for metric in ("embedding_drift", "prediction_drift", "confidence_drift", "text_length_drift",
                           "oov_rate_drift", "non_ascii_drift", "labelled_accuracy", "estimated_accuracy"):
                latest = k == 0
                check_rows.append({
                    "id": k, "project": "default", "ts": ts,
                    "window_start": window_start if latest else ts - timedelta(hours=1),
                    "window_end": newest if latest else ts, "reference": "v1", "metric": metric,
                    "value": float(rng.uniform(0, 1)), "threshold": 0.5, "drifted": bool(rng.uniform() > 0.9),
                    "details": json.dumps(examples if latest and metric == "embedding_drift" else {"p_value": 0.5}),
                    "report_path": "default/check-0.html" if latest else None})
        cur.register("check_rows", pa.Table.from_pylist(check_rows))
        cur.execute("INSERT INTO drift_checks BY NAME SELECT * FROM check_rows").fetchall()
        cur.unregister("check_rows")
        for k in range(20):
            cur.execute("INSERT INTO alerts VALUES (?, 'default', ?, 'embedding_drift', 'warning', 'drift', ?, "
                        "NULL, NULL, NULL, NULL)", [k, now - timedelta(days=k), "open" if k < 2 else "closed"])
            cur.execute("INSERT INTO retrain_runs (id, project, started, finished, trigger, status, n_examples, "
                        "metrics) VALUES (?, 'default', ?, ?, 'drift', 'rejected', 1000, ?)",
                        [k, now - timedelta(days=k, hours=1), now - timedelta(days=k), metrics]).fetchall()


@contextmanager
def serve(settings: Settings, store: Store) -> Iterator[str]:
    """The real app on a free loopback port (uvicorn in a thread); yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store=store), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise RuntimeError("the server did not become ready")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def page_calls(api: Api, name: str) -> list[tuple[str, float]]:
    """Load one page's data; (call, seconds) for each HTTP call it made (ids in paths as {id})."""
    before = len(api.timings)
    PAGE_LOADERS[name](api)
    return [(f"{c.method} {re.sub(r'/[0-9]+(?=/|$)', '/{id}', c.path)}", c.seconds) for c in api.timings[before:]]


def measure(apis: list[Api], repeat: int) -> list[dict[tuple[str, str], float]]:
    """Best-of-``repeat`` seconds per (page, call) for each server (the minimum, as ``timeit`` advises:
    the other runs measure the machine's load, not the call).

    The servers take turns page by page (the order flips every round), so machine load hits both alike.
    """
    for api in apis:  # warm-up: first-query costs are not what an operator sees
        for name in PAGE_LOADERS:
            page_calls(api, name)
    samples: list[dict[tuple[str, str], list[float]]] = [defaultdict(list) for _ in apis]
    for r in range(repeat):
        for name in PAGE_LOADERS:
            order = range(len(apis)) if r % 2 == 0 else reversed(range(len(apis)))
            for i in order:
                for call, seconds in page_calls(apis[i], name):
                    samples[i][(name, call)].append(seconds)
    return [{k: min(v) for k, v in s.items()} for s in samples]


def prepare(n: int, root: Path) -> tuple[Settings, Store, str]:
    settings = load_settings(None, paths={"data_dir": str(root / f"data-{n}")},
                             drift={"interval_seconds": 86_400}, retrain={"enabled": False},
                             embedder={"enabled": False})
    store = Store(settings.db_path)
    t0 = time.perf_counter()
    seed(store, n, settings.reports_dir)
    print(f"seeded {n:,} predictions in {time.perf_counter() - t0:.1f} s", flush=True)
    return settings, store, create_token(store, "admin", "bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (s1, store1, t1), (s2, store2, t2) = prepare(args.small, Path(tmp)), prepare(args.large, Path(tmp))
        try:
            with serve(s1, store1) as url1, serve(s2, store2) as url2:
                apis = [Api(url1, t1, timeout=120), Api(url2, t2, timeout=120)]
                small, large = measure(apis, args.repeat)
        finally:
            store1.close()
            store2.close()
    print(f"\n{'page':9s} {'call':32s} {args.small:>10,} {args.large:>10,}  ratio")
    failed = []
    for page in PAGE_LOADERS:
        calls = [k for k in small if k[0] == page]
        for key in calls:
            a, b = small[key], large.get(key, float("nan"))
            ratio = b / a if a > 0 else float("nan")
            over = b >= 1.0 or ratio > 2.0
            if over:
                failed.append(f"{key[1]} ({page})")
            print(f"{page:9s} {key[1]:32s} {a * 1000:8.1f}ms {b * 1000:8.1f}ms  {ratio:5.2f}"
                  + ("  <-- over goal" if over else ""))
        ta, tb = sum(small[k] for k in calls), sum(large.get(k, 0.0) for k in calls)
        print(f"{page:9s} {'= page total':32s} {ta * 1000:8.1f}ms {tb * 1000:8.1f}ms  {tb / ta:5.2f}")
    print(f"\ngoal: ratio <= 2 and < 1 s at {args.large:,} for every call; "
          + ("all met" if not failed else f"missed by {len(failed)}: {'; '.join(failed)}"))


if __name__ == "__main__":
    main()
