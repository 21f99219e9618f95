"""Versions and promotions mirrored to a real MLflow tracking store (a SQLite file), read back with MlflowClient.

The live loop of ``test_retrain_loop`` (real server, real child training job on a tiny BERT) runs with
``mlflow.tracking_uri`` set: the hand-promoted v1, a retrain that the gate promotes and a rollback each
move the ``champion`` alias; then the store becomes unreachable and a retrain still finishes, reporting
the failure in its run record.
"""

from __future__ import annotations

import pytest
from conftest import free_port, wait_run
from test_retrain_loop import POLICY, log_and_label, running_loop, tweets  # noqa: F401 (tweets: a fixture)

mlflow = pytest.importorskip("mlflow")

from tuneloop.monitor import mlflow_tracking  # noqa: E402

MODEL = mlflow_tracking.model_name("default")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tweets):  # noqa: F811
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TUNELOOP_MLFLOW__TRACKING_URI", uri)
        env.setenv("TUNELOOP_MLFLOW__EXPERIMENT", "sentiment")
        env.setenv("TUNELOOP_MLFLOW__ARTIFACT_LOCATION", str(root / "artifacts"))
        with running_loop(root, tweets) as loop:
            yield {**loop, "mlflow": mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), "root": root}


def champion_version(client) -> str:  # type: ignore[no-untyped-def]
    """The tuneloop version the MLflow ``champion`` alias points at."""
    return client.get_model_version_by_alias(MODEL, "champion").tags[mlflow_tracking.VERSION_TAG]


def retrain(loop, frame) -> dict:  # type: ignore[no-untyped-def]
    log_and_label(loop, frame, frame["topic"].map(POLICY).tolist())
    r = loop["clients"]["admin"].post("/v1/retrain", json={"reason": "new feedback"})
    assert r.status_code == 200, r.text
    return wait_run(loop["clients"]["label"], r.json()["run_id"])


def test_promotion_retrain_and_rollback_move_the_champion_alias(tracked, tweets):  # noqa: F811
    client, admin = tracked["mlflow"], tracked["clients"]["admin"]
    assert champion_version(client) == "v1"  # promoted by hand before tracking knew it: logged on promotion

    run = retrain(tracked, tweets["stream1"])
    assert run["status"] == "promoted", run
    report = run["metrics"]["mlflow"]
    assert "error" not in report and report["model"] == MODEL, report
    assert report["champion"]["model_version"] == report["model_version"]
    assert champion_version(client) == run["version"]
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == report["model_version"]

    logged = client.get_run(report["run_id"]).data
    gate = run["metrics"]["gate"]
    assert logged.tags["gate.decision"] == "promote" and logged.tags[mlflow_tracking.VERSION_TAG] == run["version"]
    assert logged.metrics["gate.lower"] == pytest.approx(gate["stats"]["lower"])
    assert logged.metrics["gate.upper"] == pytest.approx(gate["stats"]["upper"])
    assert logged.metrics["val_accuracy"] == pytest.approx(run["metrics"]["val_accuracy"])
    assert logged.params["model.lora_r"] == "8" and logged.params["base_model_type"] == "bert"
    artifacts = {a.path for a in client.list_artifacts(report["run_id"], "version")}
    assert {"version/adapter", "version/head.safetensors", "version/labels.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(report["run_id"])} >= {"gate.json", "version"}
    assert (tracked["root"] / "artifacts").is_dir()

    r = admin.post("/v1/models/rollback", json={})
    assert r.status_code == 200, r.text
    assert champion_version(client) == "v1"
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]  # v1 is not logged twice


def test_an_unreachable_store_never_fails_a_retrain(tracked, tweets):  # noqa: F811
    tracked["settings"].mlflow.tracking_uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = retrain(tracked, tweets["stream2"])
    assert run["status"] in ("promoted", "rejected"), run
    assert "error" in run["metrics"]["mlflow"], run["metrics"]["mlflow"]
    assert run["metrics"]["gate"]["summary"]
