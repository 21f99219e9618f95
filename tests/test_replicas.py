"""Several ``tuneloop serve`` replicas on one real PostgreSQL database behave as one service.

Each replica is a real server process on its own loopback port; they share the database and the
data directory (model versions). Exactly one leads (advisory lock) and runs the scheduled jobs;
SIGKILLed replicas and a crashed PostgreSQL lose no acknowledged row and duplicate none, the
scheduler resumes on the survivor within the election beat, and a champion promoted through one
replica is served by the other within the stated bound.
"""

from __future__ import annotations

import logging
import queue
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningServer, free_port, toml_dumps
from postgres_server import PostgresServer
from test_crash import Ledger, Streamer

from tuneloop.monitor import registry
from tuneloop.monitor.auth import ROLES, create_token
from tuneloop.monitor.config import load_settings
from tuneloop.monitor.runtime import open_store
from tuneloop.monitor.storage import open_postgres, utcnow
from tuneloop.monitor.storage.notify import ChampionListener

SEED = 20261130
KILLS = 10
LEADER_RETRY_SECONDS = 2.0
"""The default of ``store.leader_retry_seconds``: failover is measured as shipped."""
CHAMPION_POLL_SECONDS = 5.0
"""The default of ``store.champion_poll_seconds``."""
HOT_SWAP_BOUND_SECONDS = CHAMPION_POLL_SECONDS + 5.0
"""The README's bound: the poll plus the load of a (tiny) model; NOTIFY makes it much shorter."""
FIRST_LOAD_SECONDS = 120.0


def start_replicas(directory: Path, url: str, n: int = 2, together: bool = False,
                   **sections: dict[str, Any]) -> list[RunningServer]:
    """``n`` server processes on the database at ``url``, sharing ``directory``/data; tokens made once.
    One after the other (the first one up leads), or ``together`` (any one may lead)."""
    data = Path(directory) / "data"
    data.mkdir(parents=True, exist_ok=True)
    base = {name: dict(values) for name, values in sections.items()}
    base.setdefault("paths", {})["data_dir"] = str(data)
    base.setdefault("store", {})["url"] = url
    base.setdefault("embedder", {}).setdefault("enabled", False)
    replicas = []
    tokens: dict[str, str] = {}
    for i in range(n):
        own = {**base, "server": {**base.get("server", {}), "host": "127.0.0.1", "port": free_port()}}
        settings = load_settings(**own)
        if not tokens:
            store = open_store(settings)
            tokens = {role: create_token(store, role, f"test-{role}") for role in ROLES}
            store.close()
        config_path = Path(directory) / f"replica-{i}.toml"
        config_path.write_text(toml_dumps(own), encoding="utf-8")
        replicas.append(RunningServer(url=f"http://127.0.0.1:{settings.server.port}", settings=settings,
                                      tokens=tokens, subprocess=True, config_path=config_path))
    try:
        for replica in replicas:
            replica.spawn() if together else replica.start()
        for replica in replicas:
            replica.wait_ready()
    except BaseException:
        for replica in replicas:
            replica.close()
        raise
    return replicas


def leads(replica: RunningServer) -> bool | None:
    """Whether the replica says it leads (None: it does not answer)."""
    try:
        return bool(httpx.get(replica.url + "/readyz", timeout=2).json()["info"]["leader"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def leaders(replicas: list[RunningServer]) -> list[int]:
    return [i for i, r in enumerate(replicas) if leads(r)]


def wait_for_one_leader(replicas: list[RunningServer], timeout: float) -> tuple[int, float]:
    """(index of the single leader, seconds it took to have exactly one)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = leaders(replicas)
        if len(found) == 1:
            return found[0], time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"no single leader after {timeout} s: {leaders(replicas)}")


def job_runs(replica: RunningServer, job: str = "drift-checks") -> int:
    """``tuneloop_scheduled_job_runs_total{job}`` of one replica."""
    text = httpx.get(replica.url + "/metrics", headers=replica.headers("admin"), timeout=5).text
    m = re.search(rf'^tuneloop_scheduled_job_runs_total{{job="{job}"}} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


@pytest.fixture
def pg(request):
    """A PostgreSQL server of the test's own (the crash test kills it)."""
    server = PostgresServer()
    request.addfinalizer(server.remove)
    server.start()
    return server


def test_one_leader_runs_the_jobs_pending_feedback_crosses_replicas_and_a_stopped_leader_hands_over(tmp_path, pg):
    a, b = replicas = start_replicas(tmp_path, pg.new_database(), drift={"interval_seconds": 1})
    try:
        leader, _ = wait_for_one_leader(replicas, 10)
        assert leader == 0, "the first replica up takes the lock at start-up"
        time.sleep(2.5)
        assert job_runs(a) >= 1 and job_runs(b) == 0, "the scheduled jobs run on the leader only"

        # a label parked on one replica is resolved by the other's ingest of its prediction
        with b.client("label") as label, a.client("ingest") as ingest:
            r = label.post("/v1/feedback", json={"records": [{"id": "f1", "prediction_id": "p1", "label": "negative"}]})
            assert r.status_code == 200 and r.json()["pending"] == 1, r.text
            r = ingest.post("/v1/predictions", json={"records": [{"id": "p1", "text": "t", "label": "positive"}]})
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        store = open_postgres(a.settings.store.url)
        try:
            assert store.scalar("SELECT count(*) FROM pending_feedback") == 0
            assert store.scalar("SELECT label FROM feedback WHERE prediction_id = 'p1'") == "negative"
        finally:
            store.close()

        a.stop()  # a graceful stop releases the lock at once
        assert wait_for_one_leader([b], 2 * LEADER_RETRY_SECONDS + 1)[0] == 0
        before = job_runs(b)
        time.sleep(2.5)
        assert job_runs(b) > before, "the survivor runs the jobs"
        a.start()
        assert leaders(replicas) == [1], "a restarted replica follows"
    finally:
        for replica in replicas:
            replica.close()


@dataclass
class ReplicaCrashReport:
    kills: int
    leader_kills: int
    failover_seconds: list[float] = field(default_factory=list)
    predictions_acked: int = 0
    feedback_acked: int = 0
    lost: list[str] = field(default_factory=list)
    unexpected_rows: list[str] = field(default_factory=list)
    shared_batch_numbers: int = 0
    miscounted: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    feedback_lost: list[str] = field(default_factory=list)
    downtime_seconds: list[float] = field(default_factory=list)
    """From each kill until the replica answered again."""


def run_replica_crash(directory: Path, pg: PostgresServer, kills: int, seed: int = SEED,
                      clients_per_replica: int = 2, say: Any = print) -> ReplicaCrashReport:
    """Stream writes into two replicas, SIGKILL one of them ``kills`` times (seeded) and PostgreSQL once,
    then audit the database against what the clients were told."""
    rng = random.Random(seed)
    replicas = start_replicas(directory, pg.new_database(), together=True, server={"group_commit_ms": 2.0},
                              drift={"interval_seconds": 1})
    ledger, stop = Ledger(), threading.Event()
    streamers = [Streamer(r.url, r.tokens["ingest"], f"r{i}c{j}", ledger, stop, seed + 10 * i + j)
                 for i, r in enumerate(replicas) for j in range(clients_per_replica)]
    streamers += [Streamer(r.url, r.tokens["label"], f"r{i}f", ledger, stop, seed + 99 + i, kind="feedback", batch=10)
                  for i, r in enumerate(replicas)]
    report = ReplicaCrashReport(kills=kills, leader_kills=0)
    try:
        wait_for_one_leader(replicas, 10)
        for t in streamers:
            t.start()
        for k in range(kills):
            seen = len(ledger.predictions)
            deadline = time.monotonic() + 30
            while len(ledger.predictions) < seen + 50 and time.monotonic() < deadline:  # both are back under load
                time.sleep(0.02)
            time.sleep(rng.uniform(0.2, 0.8))
            leader, _ = wait_for_one_leader(replicas, 15)
            victim = rng.randrange(len(replicas))
            replicas[victim].kill()
            killed_at = time.monotonic()
            database_crash = k == kills // 2
            survivor = replicas[1 - victim]
            runs = job_runs(survivor) if victim == leader else 0
            if victim == leader:
                report.leader_kills += 1
                t0 = time.monotonic()
                while not leads(survivor):
                    assert time.monotonic() - t0 < 3 * LEADER_RETRY_SECONDS + 5, "the survivor never took over"
                    time.sleep(0.05)
                report.failover_seconds.append(time.monotonic() - t0)
            if not database_crash:  # it starts while the clients carry on (after any takeover: it cannot lead first)
                replicas[victim].spawn()
            if victim == leader:
                deadline = time.monotonic() + 10
                while job_runs(survivor) <= runs:
                    assert time.monotonic() < deadline, "the survivor leads but its scheduler does not run"
                    time.sleep(0.1)
            if database_crash:  # PostgreSQL itself crashes too, while one replica is down
                pg.crash()
                time.sleep(rng.uniform(0.5, 1.5))
                pg.start()
                replicas[victim].spawn()
            replicas[victim].wait_ready()
            report.downtime_seconds.append(time.monotonic() - killed_at)
            say(f"kill {k + 1}/{kills}: replica {victim}{' (leader)' if victim == leader else ''}"
                f"{' + PostgreSQL' if k == kills // 2 else ''}, back in {report.downtime_seconds[-1]:.1f} s; "
                f"{len(ledger.predictions)} predictions and "
                f"{len(ledger.feedback)} feedback acknowledged so far")
        wait_for_one_leader(replicas, 15)
        time.sleep(0.5)
        stop.set()
        for t in streamers:
            t.join(60)
            assert not t.is_alive(), f"{t.name} did not finish"
        store = open_postgres(replicas[0].settings.store.url)
        try:
            stored = set(store.query("SELECT id FROM predictions")["id"])
            fb = set(store.query("SELECT id FROM feedback UNION ALL SELECT id FROM pending_feedback")["id"])
            # one batch number per request batch: two replicas never hand out the same one
            report.shared_batch_numbers = int(store.scalar(
                "SELECT count(*) FROM (SELECT ingest_seq FROM predictions GROUP BY ingest_seq "
                "HAVING count(DISTINCT split_part(id, '-', 1)) > 1) shared"))
        finally:
            store.close()
        report.predictions_acked, report.feedback_acked = len(ledger.predictions), len(ledger.feedback)
        report.lost = sorted(ledger.predictions - stored)
        report.unexpected_rows = sorted(stored - ledger.predictions)  # every batch sent was retried until acked
        report.feedback_lost = sorted(ledger.feedback - fb)
        report.miscounted, report.unexpected = ledger.miscounted, ledger.unexpected
        return report
    finally:
        stop.set()
        for replica in replicas:
            replica.close()


@pytest.mark.timeout(600)
def test_two_replicas_survive_sigkills_and_a_database_crash(tmp_path, pg, figure):
    report = run_replica_crash(tmp_path, pg, KILLS)
    failover = sorted(report.failover_seconds)
    figure("replicas: SIGKILLs survived", f"{report.kills} ({report.leader_kills} of the leader) + 1 PostgreSQL crash")
    figure("replicas: acknowledged rows checked", f"{report.predictions_acked} predictions, {report.feedback_acked} "
           "feedback; lost 0, duplicated 0 required")
    down = sorted(report.downtime_seconds)
    figure("replicas: killed replica answering again (median/max s)", f"{down[len(down) // 2]:.1f}/{down[-1]:.1f}")
    if failover:
        figure("replicas: leader failover seconds (median/max)",
               f"{failover[len(failover) // 2]:.1f}/{failover[-1]:.1f}")
    assert report.leader_kills >= 1, "the seed must kill the leader at least once"
    assert report.predictions_acked > 500 and report.feedback_acked > 50
    assert not report.unexpected, report.unexpected[:5]
    assert not report.lost, f"{len(report.lost)} acknowledged predictions lost, e.g. {report.lost[:5]}"
    assert not report.unexpected_rows, f"{len(report.unexpected_rows)} rows stored that no client saw acknowledged"
    assert not report.feedback_lost, f"{len(report.feedback_lost)} acknowledged feedback rows lost"
    assert not report.miscounted, report.miscounted[:5]
    assert report.shared_batch_numbers == 0
    assert max(failover) <= LEADER_RETRY_SECONDS + 2


def served_version(replica: RunningServer) -> str | None:
    r = httpx.post(replica.url + "/v1/predict", json={"texts": ["a great flight"]}, headers=replica.headers("ingest"),
                   timeout=10)
    return r.json()["model_version"] if r.status_code == 200 else None


def seconds_until_served(replica: RunningServer, version: str, limit: float) -> float:
    t0 = time.monotonic()
    while (served := served_version(replica)) != version:
        assert time.monotonic() - t0 < limit, f"{replica.url} still serves {served} after {limit} s, not {version}"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_a_champion_promoted_on_one_replica_is_served_by_the_other_within_the_bound(tmp_path, pg, figure):
    from test_serving import LABELS, labelled

    from tuneloop.retrain.build import train_version
    from tuneloop.retrain.tiny import make_tiny_base

    model = {"base": str(make_tiny_base(tmp_path / "base")), "epochs": 1, "threads": 1}
    shared = load_settings(paths={"data_dir": str(tmp_path / "data")}, model=model)
    v1, v2 = (train_version(shared.models_dir, shared.model, labelled(60, seed), LABELS).version for seed in range(2))
    a, b = replicas = start_replicas(tmp_path, pg.new_database(), model=model)
    try:
        with a.client("admin") as admin_a, b.client("admin") as admin_b:
            for v in (v1, v2):
                assert admin_a.post(f"/v1/models/{v}/register").status_code == 200
            assert admin_a.post(f"/v1/models/{v1}/promote").status_code == 200
            assert served_version(a) == v1  # the replica that promoted swaps before it answers
            # b's first model also imports the ML libraries (seconds on a busy machine): not part of the bound
            first = seconds_until_served(b, v1, FIRST_LOAD_SECONDS)
            assert admin_b.post(f"/v1/models/{v2}/promote").status_code == 200
            swaps = [seconds_until_served(a, v2, HOT_SWAP_BOUND_SECONDS)]
            assert admin_a.post("/v1/models/rollback").status_code == 200
            swaps.append(seconds_until_served(b, v1, HOT_SWAP_BOUND_SECONDS))

        # a change that sends no notification (triggers off in this session) is found by the poll
        store = open_postgres(a.settings.store.url)
        try:
            store.cursor().execute("SET session_replication_role = replica")
            registry.promote(store, "default", v2, "test", "promoted without a notification")
        finally:
            store.close()
        polled = [seconds_until_served(r, v2, HOT_SWAP_BOUND_SECONDS) for r in replicas]
    finally:
        for replica in replicas:
            replica.close()
    figure("replicas: first champion served by the other replica (s, with the ML imports)", f"{first:.1f}")
    figure("replicas: promotion served by the other replica (max s)", f"{max(swaps):.2f}")
    figure("replicas: champion served after a missed notification (max s)", f"{max(polled):.2f}")


def test_a_champion_change_is_announced_at_commit_and_not_before(postgres_url):
    store = open_postgres(postgres_url)
    heard: queue.Queue[str | None] = queue.Queue()
    listener = ChampionListener(postgres_url, heard.put, poll_seconds=600)
    listener.start()
    try:
        assert heard.get(timeout=15) is None, "on connecting, the listener checks everything once"
        with store.transaction() as tx:
            store.versions.add_promotion(tx, "alpha", "v9", utcnow(), "test", None, "promote", None)
            time.sleep(0.5)
            assert heard.empty(), "nothing is announced before the commit"
        assert heard.get(timeout=5) == "alpha"
        with pytest.raises(queue.Empty):
            heard.get(timeout=0.5)
    finally:
        listener.stop()
        store.close()


def test_a_label_and_its_prediction_racing_through_two_replicas_stores_is_never_stranded(postgres_url):
    """Feedback parked as pending by one process while another stores its prediction: one of the two
    transactions must see the other, whichever commits first."""
    parking, ingesting = open_postgres(postgres_url), open_postgres(postgres_url)
    ids = [f"p{i}" for i in range(600)]
    chunks = [ids[i:i + 3] for i in range(0, len(ids), 3)]
    errors: list[BaseException] = []

    def run(step: Any) -> None:
        try:
            for chunk in chunks:
                step(chunk)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(lambda c: parking.append_feedback(
            [{"id": f"f-{i}", "prediction_id": i, "label": "negative"} for i in c]),)),
        threading.Thread(target=run, args=(lambda c: ingesting.append_predictions(
            [{"id": i, "text": f"text {i}", "label": "positive"} for i in c]),)),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:1]
        assert ingesting.scalar("SELECT count(*) FROM pending_feedback") == 0
        assert ingesting.scalar("SELECT count(DISTINCT prediction_id) FROM feedback") == len(ids)
    finally:
        parking.close()
        ingesting.close()


def test_a_database_outage_is_logged_once_by_the_champion_listener_and_its_end_once(pg, caplog):
    url = pg.new_database()
    store = open_postgres(url)
    polls: queue.Queue[str | None] = queue.Queue()

    def refresh(project: str | None) -> None:  # what a replica does on a poll: read the registry
        registry.champion(store, "default")
        polls.put(project)

    listener = ChampionListener(url, refresh, poll_seconds=0.2)
    caplog.set_level(logging.INFO, logger="tuneloop.monitor.storage.notify")
    listener.start()
    try:
        assert polls.get(timeout=15) is None
        pg.crash()
        time.sleep(3)  # some fifteen retries while the database is down
        pg.start()
        deadline = time.monotonic() + 60
        while "answers again" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.1)
    finally:
        listener.stop()
        store.close()
    lines = [r for r in caplog.records if r.name == "tuneloop.monitor.storage.notify"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING], caplog.text
    assert "does not answer" in lines[0].getMessage() and "answers again" in lines[1].getMessage()
    assert not any(r.exc_info for r in lines) and listener.outages == 1
