"""A retrain on two replicas of one real PostgreSQL database: one run at a time, launched by the leader.

A retrain triggered through the replica that does not lead is queued in the store and run once, by
the leader (a real tiny-model job against a deliberately bad champion); it is gated and promoted,
and both replicas then serve the new version within the hot-swap bound. Two triggers sent at the
same moment to both replicas give one run and one 409.
"""

from __future__ import annotations

import threading

import httpx
from conftest import wait_run
from test_replicas import (
    FIRST_LOAD_SECONDS,
    HOT_SWAP_BOUND_SECONDS,
    seconds_until_served,
    start_replicas,
    wait_for_one_leader,
)
from test_retrain_loop import POLICY, log_and_label, prepare_loop, tweets  # noqa: F401 - the module fixture

ROLES = ("ingest", "label", "admin")


def label_through(replica, frame) -> None:
    clients = {role: replica.client(role, timeout=60) for role in ROLES}
    try:
        log_and_label({"clients": clients}, frame, frame["topic"].map(POLICY).tolist())
    finally:
        for c in clients.values():
            c.close()


def v1_served_and_labelled(replicas, frame):
    """Register and promote v1 through the replica that does not lead, wait until the leader serves
    it, and label ``frame`` through the follower; the (leader, follower) pair."""
    index, _ = wait_for_one_leader(replicas, 10)
    lead, other = replicas[index], replicas[1 - index]
    with other.client("admin", timeout=60) as admin:
        assert admin.post("/v1/models/v1/register").status_code == 200
        assert admin.post("/v1/models/v1/promote").status_code == 200
    seconds_until_served(lead, "v1", FIRST_LOAD_SECONDS)
    label_through(other, frame)
    return lead, other


def trigger_together(replicas) -> list[httpx.Response]:
    """``POST /v1/retrain`` on every replica at the same moment; the answers in replica order."""
    barrier = threading.Barrier(len(replicas))
    answers: list[httpx.Response | None] = [None] * len(replicas)

    def send(i: int) -> None:
        with replicas[i].client("admin", timeout=60) as admin:
            barrier.wait(30)
            answers[i] = admin.post("/v1/retrain", json={"reason": f"race {i}"})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(a is not None for a in answers), answers
    return answers  # type: ignore[return-value]


def test_a_retrain_through_the_follower_runs_once_on_the_leader_and_both_serve_it(tmp_path, postgres_url, tweets):  # noqa: F811
    replicas = start_replicas(tmp_path, postgres_url, **prepare_loop(tmp_path, tweets))
    try:
        lead, other = v1_served_and_labelled(replicas, tweets["stream1"])
        with other.client("admin", timeout=60) as admin:
            r = admin.post("/v1/retrain", json={"reason": "through the follower"})
            assert r.status_code == 200, r.text
            run_id = r.json()["run_id"]
            again = admin.post("/v1/retrain", json={"reason": "twice"})
            assert again.status_code == 409 and f"retrain run {run_id}" in again.json()["detail"], again.text
            run = wait_run(admin, run_id)
            assert run["status"] == "promoted", run
            assert f":{lead._proc.pid}:" in run["owner"], "the leader launched the run"
            assert run["metrics"]["gate"]["headline"].startswith("promote: gain +"), run["metrics"]["gate"]
            runs = admin.get("/v1/retrain/runs").json()
            assert [x["id"] for x in runs["items"]] == [run_id] and runs["active_run"] is None
            versions = {v["version"] for v in admin.get("/v1/models").json()["items"]}
            assert versions == {"v1", run["version"]}, "the run trained exactly once"
        for replica in replicas:
            seconds_until_served(replica, run["version"], HOT_SWAP_BOUND_SECONDS)

        label_through(lead, tweets["stream2"])
        answers = trigger_together(replicas)
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        (won,) = [a.json()["run_id"] for a in answers if a.status_code == 200]
        (lost,) = [a.json()["detail"] for a in answers if a.status_code == 409]
        assert f"retrain run {won}" in lost
        with lead.client("admin", timeout=60) as admin:
            final = wait_run(admin, won)
            assert final["status"] in ("promoted", "rejected", "passed"), final
            assert len(admin.get("/v1/retrain/runs").json()["items"]) == 2
    finally:
        for replica in replicas:
            replica.close()
