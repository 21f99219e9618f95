"""Retrain jobs on a real local Ray cluster (retrain.launcher = "ray").

One Ray head per module, started by the fixture on free loopback ports in its own temp dir and
stopped (every process it started, by pid) at the end. The same live server as the retrain-loop
tests (tiny model, a deliberately bad champion) submits its job to the cluster's job API: the run
promotes a new version, a cancel stops the Ray job, an unreachable cluster fails the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import free_port, wait_run
from job_control import held
from test_retrain_loop import (
    POLICY,
    champion,
    log_and_label,
    predict,
    running_loop,
    tweets,  # noqa: F401 - the module fixture the loop is built from
    wait_idle,
)

RAY_START_TIMEOUT = 180


def _ray_or_skip():
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:
        message = f"Ray is not installed ({e}): pip install -e '.[ray]' (make test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return JobSubmissionClient


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop(procs: list[psutil.Process]) -> list[psutil.Process]:
    """SIGTERM, then SIGKILL a few seconds later; the processes still alive afterwards."""
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=3)  # the GCS server and `ray start --block` ignore SIGTERM
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return psutil.wait_procs(alive, timeout=10)[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray head with its dashboard (the job API) on loopback; yields its client and address."""
    client_class = _ray_or_skip()
    temp = Path(tempfile.mkdtemp(prefix="tlray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    dashboard = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port()}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=true",
           "--disable-usage-stats", "--object-store-memory=100000000", f"--temp-dir={temp}",
           *(f"{flag}={port}" for flag, port in ports.items())]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    log = open(temp / "ray-start.log", "wb")  # noqa: SIM115 - handed to the child process
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    log.close()
    address = f"http://127.0.0.1:{dashboard}"
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + RAY_START_TIMEOUT
        while True:
            assert head.poll() is None, f"ray start exited: {(temp / 'ray-start.log').read_text()[-3000:]}"
            try:
                client = client_class(address)
                break
            except Exception as e:  # not up yet
                assert time.monotonic() < deadline, f"no Ray job API at {address} after {RAY_START_TIMEOUT} s: {e}"
                time.sleep(1)
        seen.update({p.pid: p for p in _descendants(psutil.Process(head.pid))})
        yield {"client": client, "address": address}
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            seen.update({p.pid: p for p in _descendants(psutil.Process(head.pid))})
        mine = [p for p in psutil.process_iter() if _started_in(p, temp)]  # re-parented ones, by their temp dir
        seen.update({p.pid: p for p in mine})
        left = _stop(list(seen.values()))
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes still running: {[p.pid for p in left]}"


def _started_in(proc: psutil.Process, temp: Path) -> bool:
    try:
        return any(str(temp) in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


@pytest.fixture(scope="module")
def ray_loop(ray_cluster, tmp_path_factory, tweets):  # noqa: F811 - the imported fixture
    with running_loop(tmp_path_factory.mktemp("rayloop"), tweets, launcher="ray",
                      ray_address=ray_cluster["address"], ray_num_cpus=1, ray_num_gpus=0) as loop:
        yield {**loop, **ray_cluster}


def ray_job_of(loop, run_id: int):
    """The Ray job the server submitted for ``run_id`` (found by the run's snapshot path in its command)."""
    snapshot = str((loop["settings"].runs_dir / f"run-{run_id}" / "snapshot").resolve())
    jobs = [j for j in loop["client"].list_jobs() if snapshot in (j.entrypoint or "")]
    assert len(jobs) == 1, [j.entrypoint for j in loop["client"].list_jobs()]
    return jobs[0]


def job_process(loop, run_id: int, timeout: float = 120) -> int | None:
    """The pid of the run's job process, started on this machine by the Ray cluster; None when the run
    ended before its job started."""
    snapshot = str((loop["settings"].runs_dir / f"run-{run_id}" / "snapshot").resolve())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.process_iter():
            try:
                cmdline = p.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if "tuneloop.retrain.job" in cmdline and snapshot in cmdline:
                return p.pid
        if loop["clients"]["admin"].get(f"/v1/retrain/runs/{run_id}").json()["status"] not in ("queued", "running"):
            return None
        time.sleep(0.01)
    raise AssertionError(f"no job process for run {run_id} after {timeout} s")


def start_run(loop, frame, reason: str) -> tuple[str, int]:
    """Once the server is idle, label ``frame`` and trigger a retrain; the champion before it and the run id."""
    admin = loop["clients"]["admin"]
    wait_idle(admin)
    before = champion(loop)
    log_and_label(loop, frame, frame["topic"].map(POLICY).tolist())
    r = admin.post("/v1/retrain", json={"reason": reason})
    assert r.status_code == 200, r.text
    return before, r.json()["run_id"]


def test_a_run_on_ray_is_gated_and_promoted(ray_loop, tweets):  # noqa: F811
    admin = ray_loop["clients"]["admin"]
    before, run_id = start_run(ray_loop, tweets["stream1"], "on ray")
    run = wait_run(admin, run_id)
    assert run["status"] == "promoted", run
    gate = run["metrics"]["gate"]
    assert gate["headline"].startswith("promote: gain +") and gate["stats"]["lower"] > 0.10, gate
    assert run["progress"]["phase"] == "done"
    job = ray_job_of(ray_loop, run_id)
    assert str(job.status) in ("SUCCEEDED", "JobStatus.SUCCEEDED"), job
    assert any(f"Running entrypoint for job {job.submission_id}" in line for line in
               (ray_loop["settings"].runs_dir / f"run-{run_id}" / "job.log").read_text().splitlines())
    assert champion(ray_loop) == run["version"] != before
    assert predict(admin, ["@united my flight is delayed again"])["model_version"] == run["version"]


def test_cancel_stops_the_ray_job(ray_loop, tweets):  # noqa: F811
    admin = ray_loop["clients"]["admin"]
    before, run_id = start_run(ray_loop, tweets["stream2"], "to cancel on ray")
    pid = job_process(ray_loop, run_id)
    assert pid is not None, admin.get(f"/v1/retrain/runs/{run_id}").json()
    with held(pid):  # the tiny job cannot finish before the cancel lands
        c = admin.post(f"/v1/retrain/runs/{run_id}/cancel")
        assert c.status_code == 200, c.text
    run = wait_run(admin, run_id, timeout=120)
    assert run["status"] == "cancelled" and run["version"] is None, run
    assert str(ray_job_of(ray_loop, run_id).status) in ("STOPPED", "JobStatus.STOPPED")
    assert champion(ray_loop) == before


def test_an_unreachable_cluster_fails_the_run_and_the_champion_serves(ray_loop, tweets):  # noqa: F811
    admin = ray_loop["clients"]["admin"]
    retrain = ray_loop["settings"].retrain  # the server reads it when a run starts
    nowhere = f"http://127.0.0.1:{free_port()}"
    retrain.ray_address = nowhere
    try:
        before, run_id = start_run(ray_loop, tweets["stream2"], "cluster down")
        run = wait_run(admin, run_id, timeout=120)
    finally:
        retrain.ray_address = ray_loop["address"]
    assert run["status"] == "failed", run
    assert nowhere in run["reasons"][0] and "Ray cluster" in run["reasons"][0], run
    assert champion(ray_loop) == before
    assert predict(admin, ["my iphone screen"])["model_version"] == before


def test_a_ray_job_past_the_timeout_is_stopped_and_the_run_fails(ray_loop, tweets):  # noqa: F811
    admin = ray_loop["clients"]["admin"]
    models = ray_loop["settings"].models_dir
    dirs_before = sorted(p.name for p in models.iterdir())
    retrain = ray_loop["settings"].retrain
    retrain.timeout_seconds = 10
    try:
        before, run_id = start_run(ray_loop, tweets["stream2"], "too slow")
        pid = job_process(ray_loop, run_id)  # None: stopped by the timeout before it started (a loaded machine)
        with held(pid) if pid else contextlib.nullcontext():  # held: it cannot end by itself, SIGTERM stays pending
            run = wait_run(admin, run_id, timeout=120)
    finally:
        retrain.timeout_seconds = 300
    assert run["status"] == "failed" and run["reasons"][0].startswith("timeout: the job ran longer than 10 s"), run
    assert str(ray_job_of(ray_loop, run_id).status) in ("STOPPED", "JobStatus.STOPPED")
    assert champion(ray_loop) == before and sorted(p.name for p in models.iterdir()) == dirs_before


def test_a_ray_run_triggered_on_one_postgres_replica_is_served_by_both(ray_cluster, tmp_path, postgres_url,
                                                                       tweets):  # noqa: F811
    """Two replicas of one PostgreSQL database, the retrain job on the Ray cluster: the run triggered
    through the replica that does not lead is launched by the leader on Ray, gated and promoted, and
    both replicas serve the new version within the hot-swap bound."""
    from test_replica_retrain import v1_served_and_labelled
    from test_replicas import HOT_SWAP_BOUND_SECONDS, seconds_until_served, start_replicas
    from test_retrain_loop import prepare_loop

    sections = prepare_loop(tmp_path, tweets, launcher="ray", ray_address=ray_cluster["address"],
                            ray_num_cpus=1, ray_num_gpus=0)
    replicas = start_replicas(tmp_path, postgres_url, **sections)
    try:
        lead, other = v1_served_and_labelled(replicas, tweets["stream1"])
        with other.client("admin", timeout=60) as admin:
            r = admin.post("/v1/retrain", json={"reason": "on ray, through the follower"})
            assert r.status_code == 200, r.text
            run = wait_run(admin, r.json()["run_id"])
        assert run["status"] == "promoted", run
        assert f":{lead._proc.pid}:" in run["owner"], "the leader launched the run"
        snapshot = str((tmp_path / "data" / "runs" / f"run-{run['id']}" / "snapshot").resolve())
        jobs = [j for j in ray_cluster["client"].list_jobs() if snapshot in (j.entrypoint or "")]
        assert len(jobs) == 1 and str(jobs[0].status) in ("SUCCEEDED", "JobStatus.SUCCEEDED"), jobs
        waited = [seconds_until_served(replica, run["version"], HOT_SWAP_BOUND_SECONDS) for replica in replicas]
        assert all(w <= HOT_SWAP_BOUND_SECONDS for w in waited), waited
    finally:
        for replica in replicas:
            replica.close()
