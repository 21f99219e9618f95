"""A bounded soak: predict + ingest + feedback + dashboard reads, while drift checks and a retrain run.

Loopback only, a real ``tuneloop serve`` process with a (tiny) champion, stops by itself. After a
warm-up (first drift check, a first retrain run cancelled once its job starts, allocator and caches
settled) the server's RSS and
the request latencies are measured over the first and the last window of the run: no errors,
RSS growth under 10 %, p99 latency at the start and the end reported. ``bench/soak.py`` runs the
same harness for longer.
"""

from __future__ import annotations

import random
import shutil
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import RunningServer, start_server

from tuneloop.retrain.tiny import keyword_sentiment

CI_SECONDS = 30.0
LABELS = ("negative", "neutral", "positive")
EXPECTED = {("POST", "/v1/retrain"): {409}, ("POST", "/v1/checks"): {409}}
"""Answers that are not errors: a retrain while one runs, a drift check before there is enough data."""


@dataclass
class Recorder:
    start: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, str, float]] = field(default_factory=list)  # (t, endpoint, seconds)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, http: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response | None:
        t0 = time.monotonic()
        try:
            r = http.request(method, path, **kw)
        except httpx.HTTPError as e:
            with self.lock:
                self.errors.append(f"{method} {path}: {type(e).__name__} {e}")
            return None
        dt = time.monotonic() - t0
        with self.lock:
            self.samples.append((t0 - self.start, f"{method} {path}", dt))
            self.statuses[(method, path, r.status_code)] += 1
            if r.status_code >= 300 and r.status_code not in EXPECTED.get((method, path), ()):
                self.errors.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
        return r

    def p99(self, t_from: float, t_to: float, prefix: str = "") -> float:
        xs = sorted(d for t, e, d in self.samples if t_from <= t < t_to and e.startswith(prefix))
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("nan")


@dataclass
class SoakReport:
    seconds: float
    requests: int
    errors: list[str]
    rss_start_mb: float
    rss_end_mb: float
    p99_start_ms: dict[str, float]
    p99_end_ms: dict[str, float]
    retrains: list[str]
    drift_checks: int
    statuses: dict[str, int]

    @property
    def rss_growth(self) -> float:
        return self.rss_end_mb / self.rss_start_mb - 1


def _loop(stop: threading.Event, pause: float, fn: Any) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            fn()
            stop.wait(pause)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def run_soak(directory: Path, version_dir: Path, seconds: float, warmup: float = 8.0, seed: int = 3,
             retrain_every: float | None = None, say: Any = print) -> SoakReport:
    """Start a server with ``version_dir`` as champion, warm it up, load it for ``seconds``, measure.

    One retrain runs in the measured window (starting after a fifth of it), or, with ``retrain_every``,
    one after another with that pause between them.
    """
    server: RunningServer = start_server(
        directory, subprocess=True, model={"threads": 1, "batch_size": 16},
        drift={"window_size": 200, "sample_size": 200, "resamples": 10, "interval_seconds": 3600},
        retrain={"epochs": 1, "min_holdout": 5, "target_gain": 0.9, "cooldown_seconds": 0, "replay_max": 200,
                 "check_interval_seconds": 3600, "timeout_seconds": 300})
    rec, stop = Recorder(), threading.Event()
    rng = random.Random(seed)
    texts = keyword_sentiment(400, seed=seed)
    predicted: list[tuple[str, str]] = []  # (prediction id, true label)
    threads: list[threading.Thread] = []
    retrains: list[str] = []
    checks = [0]
    try:
        admin = server.client("admin", timeout=120)
        shutil.copytree(version_dir, server.settings.models_dir / "v1")
        assert admin.post("/v1/models/v1/register").status_code == 200
        assert admin.post("/v1/models/v1/promote").status_code == 200
        proc = psutil.Process(server._proc.pid)
        clients = {role: server.client(role, timeout=60) for role in ("ingest", "label", "admin")}

        def predict() -> None:
            k = rng.randrange(len(texts) - 4)
            batch = texts.iloc[k:k + rng.randint(1, 4)]
            r = rec.call(clients["ingest"], "POST", "/v1/predict", json={"texts": batch["text"].tolist()})
            if r is not None and r.status_code == 200:
                with rec.lock:
                    predicted.extend(zip((p["id"] for p in r.json()["predictions"]), batch["label"], strict=True))

        def ingest() -> None:
            rec.call(clients["ingest"], "POST", "/v1/predictions", json={"records": [
                {"text": f"logged elsewhere {rng.random()}", "label": rng.choice(LABELS), "confidence": 0.8}
                for _ in range(20)]})

        def feedback() -> None:
            with rec.lock:
                picked = rng.sample(predicted, min(10, len(predicted)))
            if picked:
                rec.call(clients["label"], "POST", "/v1/feedback", json={"records": [
                    {"prediction_id": i, "label": y} for i, y in picked]})

        def dashboard() -> None:
            for path in ("/v1/stats", "/v1/label-queue", "/v1/models", "/v1/alerts"):
                rec.call(clients["label"], "GET", path)

        def drift_check() -> None:
            r = rec.call(clients["admin"], "POST", "/v1/checks")
            if r is not None and r.status_code == 200:
                checks[0] += 1

        def retrain_and_wait(warm_up: bool = False) -> None:
            """A retrain run, watched to its end; ``warm_up``: cancelled once its job is spawned (the server
            side has exported the snapshot and imported what a run needs, without paying for training)."""
            r = rec.call(clients["admin"], "POST", "/v1/retrain", json={"reason": "soak"})
            if r is None or r.status_code != 200:
                return
            run_id = r.json()["run_id"]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:  # even past the stop: a run that started is seen to its end
                run = clients["admin"].get(f"/v1/retrain/runs/{run_id}").json()
                if warm_up and run.get("pid"):
                    rec.call(clients["admin"], "POST", f"/v1/retrain/runs/{run_id}/cancel")
                    warm_up = False
                    continue
                if run["status"] not in ("queued", "running"):
                    if run["reasons"] and run["reasons"][0].startswith("cancelled"):
                        return  # the warm-up run
                    retrains.append(run["status"])
                    if run["status"] in ("failed", "cancelled"):
                        rec.errors.append(f"retrain run {run_id} {run['status']}: {run['reasons']}")
                    return
                time.sleep(0.1)

        threads += [_loop(stop, 0.0, predict), _loop(stop, 0.0, predict), _loop(stop, 0.02, ingest),
                    _loop(stop, 0.1, feedback), _loop(stop, 0.5, dashboard)]
        # warm-up: traffic, a first drift check and a first (cancelled) retrain run: imports and caches settle
        time.sleep(warmup / 2)
        drift_check()
        retrain_and_wait(warm_up=True)
        time.sleep(warmup / 2)
        t_start = time.monotonic() - rec.start
        rss_start = proc.memory_info().rss
        say(f"warm-up done at {t_start:.0f} s: RSS {rss_start / 1e6:.0f} MB, {len(rec.samples)} requests so far")
        threads.append(_loop(stop, 4.0, drift_check))
        time.sleep(seconds * 0.2)
        threads.append(_loop(stop, retrain_every if retrain_every is not None else seconds, retrain_and_wait))
        time.sleep(seconds * 0.8)
        t_end = time.monotonic() - rec.start
        rss_end = proc.memory_info().rss
        stop.set()
        for t in threads:
            t.join(300)
        window = max(5.0, seconds / 5)
        endpoints = ("POST /v1/predict", "POST /v1/predictions", "POST /v1/feedback", "GET ")
        measured = [s for s in rec.samples if s[0] >= t_start]
        return SoakReport(
            seconds=t_end - t_start, requests=len(measured), errors=list(rec.errors),
            rss_start_mb=rss_start / 1e6, rss_end_mb=rss_end / 1e6,
            p99_start_ms={e: 1000 * rec.p99(t_start, t_start + window, e) for e in endpoints},
            p99_end_ms={e: 1000 * rec.p99(t_end - window, t_end, e) for e in endpoints},
            retrains=retrains, drift_checks=checks[0],
            statuses={f"{m} {p} {s}": n for (m, p, s), n in sorted(rec.statuses.items())},
        )
    finally:
        stop.set()
        server.close()


def _fmt(ms: dict[str, float]) -> str:
    return ", ".join(f"{e.strip()} {v:.0f} ms" for e, v in ms.items())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_no_errors_and_bounded_memory(tmp_path, sentiment_version, figure):
    report = run_soak(tmp_path, sentiment_version, CI_SECONDS)
    figure("soak: requests / errors", f"{report.requests} requests in {report.seconds:.0f} s after warm-up, "
           f"{len(report.errors)} errors; {report.drift_checks} drift checks; retrains {report.retrains}")
    figure("soak: server RSS", f"{report.rss_start_mb:.0f} MB -> {report.rss_end_mb:.0f} MB "
           f"({report.rss_growth:+.1%})")
    figure("soak: p99 latency at the start", _fmt(report.p99_start_ms))
    figure("soak: p99 latency at the end", _fmt(report.p99_end_ms))
    assert not report.errors, report.errors[:10]
    assert report.requests > 200 and report.drift_checks >= 2 and len(report.retrains) >= 1, report
    assert report.rss_growth < 0.10, (report.rss_start_mb, report.rss_end_mb)
    assert statistics.mean(report.p99_end_ms.values()) < 10_000
