"""Partly poisoned feedback through the real retrain path, with the shipped gate: no promotion.

Each case is its own server whose champion is a good tiny model trained on a keyword policy over
real tweets. Feedback is logged through ``/v1/predict`` and ``/v1/feedback``, partly poisoned
(30 % or 50 % of the labels moved to the next class, or every label of one class taught as
another), and ``POST /v1/retrain`` runs the real snapshot -> job -> gate path with the shipped
gate (only the training length is shortened, and the planner's target gain is raised so that a
few hundred labels may start a run). The run must not promote.

Flipped labels teach nothing the paired test can mistake for a gain. A targeted relabelling is
different: the holdout comes from the same relabelled stream, so the challenger "wins" it; only
a clean pinned golden set (``retrain.golden_path``) can see through that, and the targeted case
runs with one, as an operator who fears it would.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import start_server
from test_retrain_loop import LABELS, POLICY, TOPIC_WORDS, policy_frame, tweets, wait_run  # noqa: F401 - a fixture

from tuneloop.monitor.config import load_settings
from tuneloop.retrain.build import train_version

N_FEEDBACK = 210
"""Rows of feedback per run (``tweets["stream1"]``): the shipped random slice (20 %) leaves about
40 holdout rows, above min_holdout (30)."""
MODEL = {"epochs": 6, "batch_size": 16, "patience": 4, "learning_rate": 0.03, "max_length": 48, "threads": 1}
RETRAIN = {"epochs": 2, "cooldown_seconds": 0, "check_interval_seconds": 3600, "timeout_seconds": 300,
           "target_gain": 0.3}
"""Training length, scheduling and the planner's target: the gate, holdout and replay settings are the shipped ones."""


@pytest.fixture(scope="module")
def champion_dir(tmp_path_factory, tweets):  # noqa: F811 - the fixture
    """A good champion (it learned the policy), trained once and copied into each case's server."""
    from tuneloop.retrain.tiny import make_tiny_base

    root = tmp_path_factory.mktemp("poison-real")
    base = make_tiny_base(root / "base", vocab_words=TOPIC_WORDS)
    settings = load_settings(paths={"data_dir": str(root / "seed")}, model={"base": str(base), **MODEL})
    trained = train_version(settings.models_dir, settings.model, policy_frame(tweets["train"]), LABELS, version="v1")
    return base, trained.path


def poisoned(truth: list[str], case: str, rng: np.random.Generator) -> list[str]:
    if case == "targeted":  # every airline complaint (negative) taught as positive
        return ["positive" if y == "negative" else y for y in truth]
    share = {"flip-30": 0.3, "flip-50": 0.5}[case]
    flip = rng.permutation(len(truth)) < round(share * len(truth))
    return [LABELS[(LABELS.index(y) + 1) % 3] if f else y for y, f in zip(truth, flip, strict=True)]


@pytest.mark.parametrize("case", ["flip-30", "flip-50", "targeted"])
def test_partly_poisoned_feedback_is_not_promoted_through_the_real_path(case, tmp_path, tweets, champion_dir,  # noqa: F811
                                                                         figure):
    base, version_dir = champion_dir
    retrain = dict(RETRAIN)
    if case == "targeted":  # the defence against an attacker who also writes the holdout: a pinned clean set
        # 90 rows per topic: on 60 the challenger's 10-point loss on the relabelled class is only just
        # significant (p = 0.047), and a pinned set is there to catch exactly that loss
        pinned = pd.concat([tweets["golden"], tweets["stream2"]])
        golden = pinned.assign(label=pinned["topic"].map(POLICY)).dropna(subset=["label"])
        golden[["text", "label"]].to_parquet(tmp_path / "golden.parquet", index=False)
        retrain["golden_path"] = str(tmp_path / "golden.parquet")
    sections = {"paths": {"data_dir": str(tmp_path / "data")}, "model": {"base": str(base), **MODEL},
                "retrain": retrain}
    models_dir = load_settings(**sections).models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(version_dir, models_dir / "v1")
    server = start_server(tmp_path, **sections)
    try:
        with server.client("admin", timeout=120) as admin, server.client("label") as label:
            assert admin.post("/v1/models/v1/register").status_code == 200
            assert admin.post("/v1/models/v1/promote").status_code == 200
            frame = tweets["stream1"]
            # The champion answers through /v1/predict; the answers are logged under fixed client ids, so
            # which rows fall in the random evaluation slice (a hash of the id) is the same on every run.
            answer = admin.post("/v1/predict", json={"texts": frame["text"].tolist()})
            assert answer.status_code == 200, answer.text
            ids = [f"{case}-{i}" for i in range(len(frame))]
            r = admin.post("/v1/predictions", json={"records": [
                {"id": i, "text": t, "label": p["label"], "probs": p["probs"], "model_version": "v1"}
                for i, t, p in zip(ids, frame["text"], answer.json()["predictions"], strict=True)]})
            assert r.status_code == 200 and r.json()["accepted"] == len(ids), r.text
            labels = poisoned(frame["topic"].map(POLICY).tolist(), case, np.random.default_rng(11))
            r = label.post("/v1/feedback", json={"records": [
                {"prediction_id": i, "label": y} for i, y in zip(ids, labels, strict=True)]})
            assert r.status_code == 200 and r.json()["accepted"] == len(ids), r.text
            r = admin.post("/v1/retrain", json={"reason": f"poisoned feedback ({case})"})
            assert r.status_code == 200, r.text
            run = wait_run(admin, r.json()["run_id"])
            figure(f"poisoning (real path, shipped gate): {case}",
                   f"{N_FEEDBACK} feedback rows, run {run['status']}: {(run['reasons'] or ['-'])[0]}")
            assert run["status"] == "rejected", run
            assert run["reasons"], run
            assert admin.get("/v1/models").json()["serving"] == "v1"
    finally:
        server.close()
