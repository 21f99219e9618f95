"""Crash durability: SIGKILL the real ``tuneloop serve`` process while clients stream writes.

Several clients (threads, httpx) send prediction batches with unique ids, one sends feedback for
acknowledged predictions, and the SDK :class:`~tuneloop.monitor.client.Client` buffers its own
rows; meanwhile the server process is SIGKILLed at seeded random moments (some during start-up,
while DuckDB replays its WAL), restarted on the same port and database file, and the clients
retry what failed with the same ids. Afterwards, with the database opened straight from the
file after a last SIGKILL: every acknowledged id is stored, and so is every SDK row; and each
answer the clients got counted every row of its batch exactly once (accepted, duplicate or
pending), with duplicates only on a retry whose earlier attempt had committed.

The harness is shared with ``bench/crash.py`` (many more kills).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningServer, start_server

from tuneloop.monitor.storage import Store

SEED = 20251125
CI_KILLS = 10
LABELS = ("negative", "neutral", "positive")


@dataclass
class Ledger:
    """What the clients were told was stored (2xx), and what went wrong on the way."""

    predictions: set[str] = field(default_factory=set)
    feedback: set[str] = field(default_factory=set)
    requests: int = 0
    retries: int = 0
    unexpected: list[str] = field(default_factory=list)  # answers other than 2xx / 503 / connection errors
    miscounted: list[str] = field(default_factory=list)  # 2xx answers whose counts do not add up to the batch
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked(self, kind: str, ids: list[str]) -> None:
        with self.lock:
            getattr(self, kind).update(ids)

    def sample_predictions(self, rng: random.Random, n: int) -> list[str]:
        with self.lock:
            pool = list(self.predictions)
        return rng.sample(pool, min(n, len(pool)))


class Streamer(threading.Thread):
    """Sends batches with fresh unique ids; retries a failed batch (same ids) until it is acknowledged."""

    def __init__(self, url: str, token: str, name: str, ledger: Ledger, stop: threading.Event, seed: int,
                 kind: str = "predictions", batch: int = 25) -> None:
        super().__init__(name=f"stream-{name}", daemon=True)
        self.url, self.token, self.prefix, self.ledger, self.stop = url, token, name, ledger, stop
        self.rng, self.kind, self.batch = random.Random(seed), kind, batch
        self.sent = 0

    def _body(self, seq: int) -> tuple[list[str], dict[str, Any]] | None:
        if self.kind == "predictions":
            ids = [f"{self.prefix}-{seq + i}" for i in range(self.batch)]
            return ids, {"records": [{"id": i, "text": f"crash durability text {i} ✈ ünïcode", "confidence": 0.8,
                                      "label": LABELS[self.rng.randrange(3)]} for i in ids]}
        targets = self.ledger.sample_predictions(self.rng, self.batch)
        if not targets:
            return None
        ids = [f"fb-{self.prefix}-{seq + i}" for i in range(len(targets))]
        return ids, {"records": [{"id": f, "prediction_id": p, "label": LABELS[self.rng.randrange(3)]}
                                 for f, p in zip(ids, targets, strict=True)]}

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10) as http:
            seq = 0
            while not self.stop.is_set():
                made = self._body(seq)
                if made is None:
                    time.sleep(0.05)
                    continue
                ids, body = made
                seq += len(ids)
                self._send_until_acked(http, ids, body)
                time.sleep(self.rng.uniform(0, 0.01))

    def _send_until_acked(self, http: httpx.Client, ids: list[str], body: dict[str, Any]) -> None:
        """Retry the same batch until a 2xx; nothing is abandoned (the stop only ends the stream)."""
        path = f"/v1/{self.kind}"
        attempt = -1
        while True:
            attempt += 1
            self.ledger.requests += 1
            try:
                r = http.post(path, json=body)
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code < 300:
                self._check_counts(r.json(), len(ids), first_attempt=attempt == 0)
                self.ledger.acked(self.kind, ids)
                self.sent += len(ids)
                return
            if r is not None and r.status_code != 503:
                self.ledger.unexpected.append(f"{path} -> {r.status_code}: {r.text[:300]}")
            self.ledger.retries += 1
            time.sleep(0.05)


    def _check_counts(self, answer: dict[str, Any], n: int, first_attempt: bool) -> None:
        """Every row of the batch is counted once; a first attempt cannot find its own rows already stored."""
        counted = answer["accepted"] + answer["duplicates"] + answer.get("pending", 0)
        if counted != n or (first_attempt and answer["duplicates"]):
            with self.ledger.lock:
                self.ledger.miscounted.append(f"{self.kind} ({'first' if first_attempt else 'retry'}): {answer}")


class SdkLogger(threading.Thread):
    """Logs predictions through the buffered SDK client at a steady rate; remembers every id."""

    def __init__(self, client: Any, stop: threading.Event, rate: float = 200.0) -> None:
        super().__init__(name="sdk-logger", daemon=True)
        self.client, self.stop, self.rate = client, stop, rate
        self.ids: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            for _ in range(10):
                self.ids.append(self.client.log_prediction(f"sdk text {n} 🚀", LABELS[n % 3], confidence=0.7))
                n += 1
            time.sleep(10 / self.rate)


@dataclass
class CrashReport:
    kills: int
    kills_during_startup: int
    predictions_acked: int
    feedback_acked: int
    sdk_rows: int
    requests: int
    retries: int
    restart_seconds: list[float]
    lost: list[str]
    duplicates: int
    feedback_lost: list[str]
    sdk_lost: list[str]
    sdk_errors: int
    unexpected: list[str]
    first_start_seconds: float = 0.0
    stream_seconds: float = 0.0

    @property
    def rows_checked(self) -> int:
        return self.predictions_acked + self.feedback_acked + self.sdk_rows


def kill_and_restart(server: RunningServer, rng: random.Random, during_startup: bool) -> float:
    """SIGKILL the server (if up), optionally once more during start-up, then start it; returns restart seconds."""
    if server.running:
        server.kill()
    if during_startup:  # kill while it opens the file (WAL replay, migrations) or starts its services
        server.spawn()
        time.sleep(rng.uniform(0.0, 1.5))
        if server.running:
            server.kill()
        else:  # it died by itself: that is a failure worth seeing
            raise AssertionError(f"server exited on its own during start-up{server._log_tail()}")
    t0 = time.monotonic()
    server.start()
    return time.monotonic() - t0


def run_crash(directory: Path, kills: int, seed: int = SEED, clients: int = 4, startup_kill_share: float = 0.3,
              up_seconds: tuple[float, float] = (0.3, 1.2), tail_seconds: float = 0.5, say: Any = print
              ) -> CrashReport:
    """Stream writes into a subprocess server, SIGKILL it ``kills`` times, and audit the file afterwards.

    Every kill comes at a random moment once the restarted server has acknowledged new rows (so each
    one lands under load); ``tail_seconds`` of streaming follow the last restart.
    """
    from tuneloop.monitor.client import Client

    rng = random.Random(seed)
    t0 = time.monotonic()
    server = start_server(directory, subprocess=True, server={"group_commit_ms": 2.0})
    first_start = time.monotonic() - t0
    ledger, stop = Ledger(), threading.Event()
    streamers = [Streamer(server.url, server.tokens["ingest"], f"c{i}", ledger, stop, seed + i)
                 for i in range(clients)]
    streamers.append(Streamer(server.url, server.tokens["label"], "f0", ledger, stop, seed + 99, kind="feedback"))
    sdk = Client(server.url, token=server.tokens["ingest"], batch_size=50, flush_interval=0.1, backoff=0.05,
                 max_backoff=0.5, max_retries=100_000)
    sdk_logger = SdkLogger(sdk, stop)
    restarts: list[float] = []
    startup_kills = 0
    down_ids: list[str] = []
    try:
        t_stream = time.monotonic()
        for t in [*streamers, sdk_logger]:
            t.start()
        for k in range(kills):
            seen = len(ledger.predictions)
            deadline = time.monotonic() + 30
            while len(ledger.predictions) == seen and time.monotonic() < deadline:  # the clients are back
                time.sleep(0.02)
            time.sleep(rng.uniform(*up_seconds))
            during = rng.random() < startup_kill_share
            startup_kills += during
            if k == kills // 2:  # rows buffered while the server is down must arrive after the restart
                server.kill()
                down_ids = [sdk.log_prediction(f"logged while down {i}", "neutral") for i in range(300)]
                time.sleep(0.3)
                assert sdk.pending > 0, "the SDK claims to have delivered rows to a dead server"
            restarts.append(kill_and_restart(server, rng, during))
            say(f"kill {k + 1}/{kills}{' (+1 during start-up)' if during else ''}: restarted in "
                f"{restarts[-1]:.1f} s; {len(ledger.predictions)} predictions and {len(ledger.feedback)} feedback "
                f"acknowledged so far")
        time.sleep(tail_seconds)
        stop.set()
        for t in [*streamers, sdk_logger]:
            t.join(60)
            assert not t.is_alive(), f"{t.name} did not finish (server up at {server.url})"
        stream_seconds = time.monotonic() - t_stream
        assert sdk.flush(timeout=60), f"the SDK could not deliver {sdk.pending} rows after the restarts"
        sdk_ids = sdk_logger.ids + down_ids
        sdk_errors = len(sdk.errors)
        sdk.close(timeout=10)
        server.kill()  # the last one too: the audit below opens the file as a crash left it
        with Store(server.settings.db_path) as store:  # WAL replay in this process
            stored = {r[0] for r in store.cursor().execute("SELECT id FROM predictions").fetchall()}
            fb = set(r[0] for r in store.cursor().execute(
                "SELECT id FROM feedback UNION ALL SELECT id FROM pending_feedback").fetchall())
        # The primary key makes a stored duplicate impossible; what can go wrong is what clients are told.
        duplicates = len(ledger.miscounted)
        return CrashReport(
            kills=kills + startup_kills, kills_during_startup=startup_kills,
            predictions_acked=len(ledger.predictions), feedback_acked=len(ledger.feedback), sdk_rows=len(sdk_ids),
            requests=ledger.requests, retries=ledger.retries, restart_seconds=restarts,
            lost=sorted(ledger.predictions - set(stored)), duplicates=duplicates,
            feedback_lost=sorted(ledger.feedback - fb), sdk_lost=sorted(set(sdk_ids) - set(stored)),
            sdk_errors=sdk_errors, unexpected=ledger.unexpected, first_start_seconds=first_start,
            stream_seconds=stream_seconds,
        )
    finally:
        stop.set()
        server.close()


@pytest.mark.timeout(600)
def test_acknowledged_rows_survive_sigkill(tmp_path, figure):
    report = run_crash(tmp_path, CI_KILLS)
    figure("crash: SIGKILLs survived", f"{report.kills} ({report.kills_during_startup} during start-up)")
    figure("crash: acknowledged rows checked", f"{report.rows_checked} ({report.predictions_acked} predictions, "
           f"{report.feedback_acked} feedback, {report.sdk_rows} SDK rows); lost 0, duplicates 0 required")
    figure("crash: restart seconds (median/max)",
           f"{sorted(report.restart_seconds)[len(report.restart_seconds) // 2]:.1f}/{max(report.restart_seconds):.1f}")
    assert report.predictions_acked > 500 and report.feedback_acked > 50 and report.sdk_rows > 300
    assert not report.unexpected, report.unexpected[:5]
    assert not report.lost, f"{len(report.lost)} acknowledged predictions lost, e.g. {report.lost[:5]}"
    assert not report.feedback_lost, f"{len(report.feedback_lost)} acknowledged feedback rows lost"
    assert report.duplicates == 0, "answers whose counts did not add up to their batch (see miscounted)"
    assert not report.sdk_lost and report.sdk_errors == 0, (len(report.sdk_lost), report.sdk_errors)
