"""A real server on a loopback port with seeded data, for the dashboard's AppTest and browser tests.

Seeding replays six days through the registry and the Store before the server starts: real
(tiny) model versions and their promotions, the predictions those models made (the last 1.5 days
on another topic), feedback, a real drift check after every 12 hours of traffic (with Evidently
reports for the last ones) and the alerts they opened, a rejected version and its retrain run.
The dashboard then sees all of it only through the HTTP API.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import RunningServer, start_server

from tuneloop.monitor.config import Settings, load_settings
from tuneloop.monitor.storage import Store, utcnow

LABELS = ["negative", "neutral", "positive"]
PHRASES = {  # in-domain traffic (what the models were trained on)
    "negative": ["flight delayed again", "they lost my bag", "worst service ever", "rude staff at the gate",
                 "cancelled flight and no help"],
    "neutral": ["boarding at gate twelve", "what is the flight number", "changed my seat today",
                "landed in denver", "on the way to the airport"],
    "positive": ["great crew tonight", "loved the snacks", "on time for once", "friendly staff thanks",
                 "smooth landing"],
}
DRIFTED = {  # the newest third of the stream: another topic, other words, longer texts
    "negative": ["coachella lineup this year is a total letdown honestly", "festival wristbands broke twice"],
    "neutral": ["coachella weekend two starts friday in indio", "shuttle passes for the festival arrive tomorrow"],
    "positive": ["coachella sunset set was unreal, best weekend of my life", "that desert stage lineup rocks"],
}


def tiny_base(directory: Path) -> Path:
    """The tiny random base model the seeded versions are trained from (knows the in-domain words)."""
    from tuneloop.retrain.tiny import make_tiny_base

    words = sorted({w for texts in PHRASES.values() for t in texts for w in t.split()})
    return make_tiny_base(directory, words)


SECTIONS: dict[str, dict] = {
    "model": {"epochs": 10, "learning_rate": 0.002, "patience": 10, "threads": 1},
    "drift": {"window_size": 120, "sample_size": 100, "resamples": 20, "min_labels": 10, "interval_seconds": 3600,
              "open_after": 2},
    "retrain": {"enabled": False, "auto_promote": False, "epochs": 1, "min_holdout": 5, "target_gain": 0.9,
                "cooldown_seconds": 0},  # a retrain may start on the few labels here (target_gain: 5 holdout rows)
}
DAYS = 6
N = 720  # predictions over DAYS days: 5 an hour
CHUNK = 60  # arrive in 12-hour chunks; a drift check runs after each
SHIFT_AT = 3 * N // 4  # from here on (the last 1.5 days) the traffic is about another topic
PROMOTE_V2_AT = N // 2  # v2 takes over half-way


def training_rows(copies: int) -> pd.DataFrame:
    return pd.DataFrame([{"text": f"{text} {i}", "label": label} for label, texts in PHRASES.items()
                         for text in texts for i in range(copies)])


def stream(n: int = N) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(7)
    texts, labels = [], []
    for i in range(n):
        label = LABELS[i % 3]
        pool = DRIFTED[label] if i >= SHIFT_AT else PHRASES[label]
        texts.append(f"{pool[int(rng.integers(len(pool)))]} {i}")
        labels.append(label)
    return texts, labels


def _train(store: Store, settings: Settings, version: str, copies: int, parent: str | None, at) -> None:  # type: ignore[no-untyped-def]
    from tuneloop.monitor import registry
    from tuneloop.retrain.build import train_version

    train_version(settings.models_dir, settings.model, training_rows(copies),
                  labels=None if parent else settings.project.labels, version=version, from_version=parent)
    registry.register_dir(store, "default", settings.models_dir, version)
    registry.promote(store, "default", version, actor="seed", reason="retrained on feedback" if parent else None)
    store.execute("UPDATE model_versions SET created_at = ?, promoted_at = ? WHERE version = ?",
                  [at - timedelta(hours=1), at, version])
    store.execute("UPDATE promotions SET ts = ? WHERE version = ?", [at, version])


def seed(store: Store, settings: Settings) -> None:
    """Replay DAYS days in order: v1 serves, v2 is promoted half-way, the topic shifts for the last 1.5
    days; labels trickle in; a real drift check runs after every 12-hour chunk (its time set to the
    chunk's end, as if the scheduler had run then). Then a rejected v3, a waiting challenger v4 and
    the retrain run that produced v3."""
    from tuneloop.monitor import registry
    from tuneloop.monitor.checks import run_drift_checks
    from tuneloop.retrain.versions import load_version

    now = utcnow()
    start = now - timedelta(days=DAYS)
    step = timedelta(days=DAYS) / N
    texts, labels = stream()
    _train(store, settings, "v1", 4, None, start)
    model, version = load_version(settings.models_dir / "v1"), "v1"
    for lo in range(0, N, CHUNK):
        if lo == PROMOTE_V2_AT:
            _train(store, settings, "v2", 6, "v1", start + step * lo)
            model, version = load_version(settings.models_dir / "v2"), "v2"
        part = range(lo, min(lo + CHUNK, N))
        pred = model.predict([texts[i] for i in part])
        rows = [{
            "id": f"p{i:04d}", "ts": start + step * i, "model_version": version, "text": texts[i],
            "label": pred.labels[k], "confidence": float(pred.confidence[k]), "embedding": pred.embeddings[k].tolist(),
            "probs": json.dumps(dict(zip(model.labels, map(float, pred.probs[k]), strict=True))),
        } for k, i in enumerate(part)]
        store.append_predictions(rows)
        store.append_feedback([{"prediction_id": r["id"], "label": labels[int(r["id"][1:])], "source": "import",
                                "annotator": "seed", "ts": r["ts"] + timedelta(hours=1)} for r in rows[::4]])
        checked_at, real = start + step * part[-1] + timedelta(minutes=5), utcnow()
        run = run_drift_checks(store, settings, render=lo + CHUNK >= N - CHUNK)
        store.execute("UPDATE drift_checks SET ts = ? WHERE id = ?", [checked_at, run.check_id])
        store.execute("UPDATE alerts SET ts = ? WHERE ts >= ?", [checked_at, real])
        store.execute("UPDATE alerts SET closed_at = ? WHERE closed_at >= ?", [checked_at, real])
    v2 = settings.models_dir / "v2"
    for name in ("v3", "v4"):  # copies of v2: enough for the registry and for serving to load
        shutil.copytree(v2, settings.models_dir / name)
        registry.register_dir(store, "default", settings.models_dir, name, parent="v2")
    registry.reject(store, "default", "v3", ["holdout accuracy 0.800 < champion 0.833 + margin 0.02"])
    for name, hours in (("v3", 2), ("v4", 1)):
        store.execute("UPDATE model_versions SET created_at = ? WHERE version = ?",
                      [now - timedelta(hours=hours), name])
    _retrain_run(store, settings, now, registry.get_version(store, "default", "v2")["metrics"])


def _retrain_run(store: Store, settings: Settings, now, metrics: dict) -> None:  # type: ignore[no-untyped-def]
    """One finished (rejected) retrain run with its log and progress files, as the retrain service writes them."""
    directory = settings.runs_dir / "run-1"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "job.log").write_text("[load] 120 training rows (60 new, 60 replay)\n[train] epoch 1/1 loss 0.61\n"
                                       "[evaluate] holdout accuracy: challenger 0.800, champion 0.833\n")
    (directory / "progress.jsonl").write_text(json.dumps({"phase": "done", "fraction": 1.0,
                                                          "message": "version v3 written"}) + "\n")
    store.execute(
        "INSERT INTO retrain_runs (id, project, started, finished, trigger, status, n_examples, version, metrics, "
        "reasons) VALUES (nextval('retrain_run_ids'), 'default', ?, ?, 'drift', 'rejected', 120, 'v3', ?, ?)",
        [now - timedelta(hours=2, minutes=10), now - timedelta(hours=2), json.dumps(metrics),
         json.dumps(["holdout accuracy 0.800 < champion 0.833 + margin 0.02"])],
    )


def seeded_server(root: Path, base: Path) -> RunningServer:
    """Seed ``root/data`` (``base``: a tiny base model dir), then serve it with the shared test fixture code.

    Tokens are those of ``conftest.start_server``: ``test-ingest``, ``test-label``, ``test-admin``.
    """
    sections = {**SECTIONS, "model": {**SECTIONS["model"], "base": str(base)}}
    settings = load_settings(None, paths={"data_dir": str(root / "data")}, **sections)
    with Store(settings.db_path) as store:
        seed(store, settings)
    return start_server(root, **sections)


_shared: dict[str, RunningServer] = {}


def shared_env(tmp_path_factory, request) -> RunningServer:  # type: ignore[no-untyped-def]
    """One seeded server per test session, whichever test module asks first (closed at session end)."""
    if "server" not in _shared:
        root = tmp_path_factory.mktemp("dashboard")
        server = seeded_server(root, tiny_base(root / "base"))
        _shared["server"] = server
        request.session.config.add_cleanup(lambda: (server.close(), _shared.clear()))
    return _shared["server"]
