"""Registry safety: whatever is killed, and whenever, the champion is a complete version and serves.

* The retrain job (child process) is SIGKILLed at seeded random points of its phases (loading the
  snapshot, training, writing the version directory) while a watcher lists the models the whole
  time: no half-written version is ever listed, the run ends ``failed`` with the reason, the
  champion keeps serving, no temp directory is left behind.
* The server process is SIGKILLed during promotions and during a retrain run: after the restart
  there is exactly one champion, it is complete, it is what serves, and the interrupted run is
  marked failed (its orphaned job stops without writing a version).
* A write to a full disk (a small tmpfs when the system allows mounting one, else a file size
  limit on the server process; ``TUNELOOP_TEST_DISK_FULL=rlimit`` forces the latter) is refused
  cleanly (507, nothing half-stored), reads keep working, and writes resume once space is back.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import RunningServer, start_server, wait_run

from tuneloop.monitor.storage import Store
from tuneloop.retrain.tiny import keyword_sentiment
from tuneloop.retrain.versions import TMP_PREFIX, is_complete, list_versions

SEED = 7
RETRAIN = {"epochs": 2, "min_holdout": 5, "holdout_fraction": 0.25, "cooldown_seconds": 0, "replay_max": 100,
           "check_interval_seconds": 3600, "timeout_seconds": 300,
           "target_gain": 0.9}  # a few dozen labels may start a run: these tests are about crashes, not the gate
MODEL = {"threads": 1, "batch_size": 16}


def install_champion(server: RunningServer, version_dir: Path, names: tuple[str, ...] = ("v1",)) -> None:
    """Copy a trained version under each name into the server's models dir, register them, promote the first."""
    admin = server.client("admin", timeout=120)
    for name in names:
        shutil.copytree(version_dir, server.settings.models_dir / name)
        assert admin.post(f"/v1/models/{name}/register").status_code == 200
    r = admin.post(f"/v1/models/{names[0]}/promote")
    assert r.status_code == 200, r.text


def add_feedback(server: RunningServer, n: int, seed: int) -> None:
    data = keyword_sentiment(n, seed=seed)
    out = server.client("ingest").post("/v1/predict", json={"texts": data["text"].tolist()})
    assert out.status_code == 200, out.text
    ids = [p["id"] for p in out.json()["predictions"]]
    r = server.client("label").post("/v1/feedback", json={"records": [
        {"prediction_id": i, "label": y} for i, y in zip(ids, data["label"], strict=True)]})
    assert r.status_code == 200, r.text


def champion_serves(server: RunningServer) -> str:
    """The one champion: registered, complete on disk, and what /v1/predict answers with."""
    models = server.client("label").get("/v1/models").json()
    champions = [m for m in models["items"] if m["status"] == "champion"]
    assert len(champions) == 1, models
    row = champions[0]
    assert is_complete(row["path"]), row
    assert models["serving"] == row["version"], models
    out = server.client("ingest").post("/v1/predict", json={"texts": ["I love this great movie"]})
    assert out.status_code == 200 and out.json()["model_version"] == row["version"], out.text
    return row["version"]


class ListingWatcher(threading.Thread):
    """Lists versions (API and models dir) in a loop; records any listed version that is not complete."""

    def __init__(self, server: RunningServer) -> None:
        super().__init__(daemon=True)
        self.server, self.stop, self.bad, self.looks = server, threading.Event(), [], 0

    def run(self) -> None:
        with self.server.client("label") as http:
            while not self.stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    for m in http.get("/v1/models").json()["items"]:
                        if not is_complete(m["path"]):
                            self.bad.append(("api", m["version"]))
                for name in list_versions(self.server.settings.models_dir):
                    if not is_complete(self.server.settings.models_dir / name):
                        self.bad.append(("dir", name))
                self.looks += 1
                time.sleep(0.02)


def progress_phases(run_dir: Path) -> list[str]:
    path = run_dir / "progress.jsonl"
    if not path.is_file():
        return []
    phases = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            phases.append(json.loads(line)["phase"])
    return phases


@pytest.mark.slow
def test_killing_the_retrain_job_anywhere_leaves_the_champion_serving(running_server, tmp_path, sentiment_version,
                                                                     figure):
    server = running_server(tmp_path, model=MODEL, retrain=RETRAIN)
    install_champion(server, sentiment_version)
    add_feedback(server, 90, seed=11)
    admin = server.client("admin", timeout=60)
    rng = random.Random(SEED)
    watcher = ListingWatcher(server)
    watcher.start()
    outcomes = []
    try:
        for phase in ("load", "train", "write"):
            before = {m["version"] for m in admin.get("/v1/models").json()["items"]}
            r = admin.post("/v1/retrain", json={"reason": f"kill during {phase}"})
            assert r.status_code == 200, r.text
            run_id = r.json()["run_id"]
            run_dir = server.settings.runs_dir / f"run-{run_id}"
            deadline = time.monotonic() + 120
            killed = False
            planned = None  # the version the run was to write, named when it started
            while time.monotonic() < deadline:
                run = admin.get(f"/v1/retrain/runs/{run_id}").json()
                planned = run.get("version") or planned
                if run["status"] not in ("queued", "running"):
                    break  # finished before the kill point
                if run.get("pid") and phase in progress_phases(run_dir):
                    time.sleep(rng.uniform(0.0, 0.15))
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(run["pid"], signal.SIGKILL)
                        killed = True
                    break
                time.sleep(0.005)
            run = wait_run(admin, run_id, timeout=180)
            outcomes.append((phase, killed, run["status"]))
            if killed and run["status"] == "failed":
                assert run["reasons"] and "SIGKILL" in run["reasons"][0], run
                assert {m["version"] for m in admin.get("/v1/models").json()["items"]} == before
                assert planned, "the killed run never said which version it was writing"
                assert not (server.settings.models_dir / planned).exists()
            else:  # the job got through before the kill: then it must have ended properly
                assert run["status"] in ("promoted", "passed", "rejected"), run
            assert not [p for p in server.settings.models_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
            champion_serves(server)
    finally:
        watcher.stop.set()
        watcher.join(10)
    assert not watcher.bad, watcher.bad
    assert watcher.looks > 20
    assert sum(k for _, k, s in outcomes if s == "failed") >= 2, outcomes
    figure("registry: retrain job SIGKILLs", f"{sum(k for _, k, _ in outcomes)} of {len(outcomes)} runs killed "
           f"({', '.join(f'{p}: {s}' for p, _, s in outcomes)}); {watcher.looks} listings, none half-written")


@pytest.mark.slow
def test_killing_the_server_during_promotion_or_retrain(tmp_path, sentiment_version, figure):
    server = start_server(tmp_path, subprocess=True, model=MODEL, retrain=RETRAIN)
    try:
        install_champion(server, sentiment_version, ("v1", "v2"))
        rng = random.Random(SEED)
        kills = []
        for target in ("v2", "v1"):
            def promote(target: str = target) -> None:
                with contextlib.suppress(httpx.HTTPError):
                    server.client("admin", timeout=60).post(f"/v1/models/{target}/promote")

            thread = threading.Thread(target=promote, daemon=True)
            thread.start()
            time.sleep(rng.uniform(0.0, 0.4))
            server.kill()
            thread.join(30)
            server.start()
            champion = champion_serves(server)
            history = server.client("admin").get("/v1/models/" + champion).json()["promotions"]
            assert history and history[0]["version"] == champion, history
            kills.append(f"promote {target} -> champion {champion}")

        # the server dies while a retrain job trains: the run is failed on restart, the orphan stops
        before = champion_serves(server)
        add_feedback(server, 60, seed=12)
        r = server.client("admin").post("/v1/retrain", json={"reason": "server killed"})
        assert r.status_code == 200, r.text
        run_id = r.json()["run_id"]
        run_dir = server.settings.runs_dir / f"run-{run_id}"
        deadline = time.monotonic() + 120
        while "train" not in progress_phases(run_dir):
            assert time.monotonic() < deadline, progress_phases(run_dir)
            time.sleep(0.02)
        pid = server.client("admin").get(f"/v1/retrain/runs/{run_id}").json()["pid"]
        server.kill()
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(30)  # the job was told (parent-death signal) and stopped
        server.start()
        run = server.client("admin").get(f"/v1/retrain/runs/{run_id}").json()
        assert run["status"] == "failed" and "server restarted" in run["reasons"][0], run
        if run.get("version"):
            assert not is_complete(server.settings.models_dir / run["version"])
        assert champion_serves(server) == before
        kills.append("retrain -> failed, champion kept")
    finally:
        server.close()
    figure("registry: server SIGKILLs during promotion/retrain", "; ".join(kills))


# -- a full disk -----------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int = 48):
    """A directory on a tmpfs of ``size_mb`` (yields "tmpfs"), or a plain directory (yields "rlimit")."""
    path.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("TUNELOOP_TEST_DISK_FULL", "")
    mounted = False
    if mode != "rlimit" and os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                                 capture_output=True).returncode == 0
    try:
        yield "tmpfs" if mounted else "rlimit"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _limit_file_size(limit: int):  # type: ignore[no-untyped-def]
    def preexec() -> None:  # in the server child: EFBIG instead of SIGXFSZ beyond `limit` bytes per file
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return preexec


def test_a_full_disk_refuses_writes_cleanly_and_serving_goes_on(tmp_path, figure):
    disk = tmp_path / "disk"
    with small_disk(disk) as mode:
        server = start_server(disk, subprocess=True)
        filler = disk / "filler"
        try:
            ingest, label = server.client("ingest"), server.client("label")
            acked, refused = [], []

            def batch(k: int) -> tuple[list[str], httpx.Response]:
                ids = [f"b{k}-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
                return ids, ingest.post("/v1/predictions", json={"records": [
                    {"id": i, "text": "disk " + "x" * 2000, "label": "neutral"} for i in ids]})

            for k in range(5):
                ids, r = batch(k)
                assert r.status_code == 200 and (r.json()["accepted"], r.json()["duplicates"]) == (40, 0), r.text
                acked += ids
            if mode == "tmpfs":  # leave ~300 kB free
                free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
                with open(filler, "wb") as f:
                    f.write(b"\0" * max(0, free - 300_000))
            else:  # restart the server with a file size limit just above its files' current sizes
                server.stop()
                biggest = max(p.stat().st_size for p in server.settings.data_dir.iterdir() if p.is_file())
                server.preexec = _limit_file_size(biggest + 300_000)
                server.start()
            status = 200
            for k in range(5, 200):
                ids, r = batch(k)
                if r.status_code != 200:
                    status = r.status_code
                    refused += ids
                    assert r.status_code == 507 and "disk is full" in r.json()["detail"], r.text
                    assert r.headers.get("retry-after")
                    break
                assert (r.json()["accepted"], r.json()["duplicates"]) == (40, 0), r.text  # stored once, as told
                acked += ids
            assert status == 507, "the disk never filled up"
            # reads and the rest of the service keep working while the disk is full
            assert ingest.get("/healthz").status_code == 200
            assert label.get("/v1/predictions", params={"limit": 5}).status_code == 200
            assert label.get("/v1/stats").status_code == 200
            fb = label.post("/v1/feedback", json={"records": [{"prediction_id": acked[0], "label": "positive",
                                                               "id": "fb-" + "y" * 100}] * 1})
            assert fb.status_code in (200, 507), fb.text
            # space comes back: writes resume
            if mode == "tmpfs":
                filler.unlink()
            else:
                psutil.Process(server._proc.pid).rlimit(psutil.RLIMIT_FSIZE,
                                                        (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            ids, r = batch(999)
            assert r.status_code == 200 and (r.json()["accepted"], r.json()["duplicates"]) == (40, 0), r.text
            acked += ids
            server.kill()  # and a crash afterwards loses nothing acknowledged
            server.preexec = None
            with Store(server.settings.db_path) as store:
                stored = [r[0] for r in store.cursor().execute("SELECT id FROM predictions").fetchall()]
        finally:
            server.close()
            filler.unlink(missing_ok=True)
    assert set(acked) <= set(stored), f"{len(set(acked) - set(stored))} acknowledged rows lost"
    assert not set(refused) & set(stored), "a refused batch was partly stored"
    figure("registry: full disk", f"{mode}: writes refused with 507 after {len(acked) - 40} rows, "
           f"served throughout, {len(acked)} acknowledged rows intact after resume + SIGKILL")
