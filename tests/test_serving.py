"""Serving: dynamic batching, hot-swap under load, /v1/predict and /v1/models on a real loopback server.

Three tiny versions are trained once for the module (random 2-layer BERT base, seconds); the
server is a real uvicorn on a free port over a real DuckDB file.
"""

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import free_port, start_server

from tuneloop.monitor import registry
from tuneloop.monitor.config import load_settings
from tuneloop.monitor.serving import LoadedModel, ModelServer, NoModelLoaded, ServeQueueFull
from tuneloop.retrain.build import train_version

LABELS = ["negative", "neutral", "positive"]
WORDS = {"negative": ["terrible", "awful", "hate"], "neutral": ["fine", "okay", "day"],
         "positive": ["great", "love", "excellent"]}


def labelled(n, seed=0):
    rng = random.Random(seed)
    labels = [rng.choice(LABELS) for _ in range(n)]
    return pd.DataFrame({"text": [f"the {rng.choice(WORDS[y])} film {i}" for i, y in enumerate(labels)],
                         "label": labels})


SECTIONS = {
    "model": {"epochs": 1, "threads": 1, "serve_max_batch": 64, "serve_max_wait_ms": 5.0},
    "server": {"max_batch": 50, "max_text_chars": 2000},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, settings): tiny versions v1, v2, v3 under root/data/models, not registered yet."""
    from tuneloop.retrain.tiny import make_tiny_base

    root = tmp_path_factory.mktemp("serving")
    base = make_tiny_base(root / "base")
    sections = {**SECTIONS, "model": {**SECTIONS["model"], "base": str(base)}}
    settings = load_settings(paths={"data_dir": str(root / "data")}, **sections)
    for seed in range(3):
        train_version(settings.models_dir, settings.model, labelled(60, seed), LABELS)
    return root, settings


@pytest.fixture(scope="module")
def live(trained):
    """A real server on loopback over the module's data dir; v1..v3 registered, no champion yet."""
    from tuneloop.monitor.projects import create_project

    root, settings = trained
    server = start_server(root, model=settings.model.model_dump(include=set(SECTIONS["model"]) | {"base"}),
                          server=dict(SECTIONS["server"]))
    with server.client("admin") as admin:
        for v in ("v1", "v2", "v3"):
            assert admin.post(f"/v1/models/{v}/register").status_code == 200
    create_project(server.store, "empty", LABELS)
    yield server
    server.close()


def promote(client, version, **body):
    r = client.post(f"/v1/models/{version}/promote", json=body or None)
    assert r.status_code == 200, r.text
    return r.json()


# -- the batch worker on its own -----------------------------------------------------------------------


def test_model_server_batches_concurrent_callers_and_matches_a_direct_forward(trained):
    models_dir = trained[1].models_dir
    server = ModelServer("default", max_batch=64, max_wait_ms=20).start()
    try:
        with pytest.raises(NoModelLoaded, match="no champion model for project default"):
            server.predict(["nothing loaded yet"], timeout=10)
        loaded = server.swap("v1", models_dir / "v1")
        texts = [f"a {w} film number {i}" for i, w in enumerate(["great", "awful", "okay", "love"] * 12)]
        barrier = threading.Barrier(16)

        def call(i):
            barrier.wait()
            return [server.predict([t], timeout=30) for t in texts[i::16]]

        with ThreadPoolExecutor(16) as pool:
            results = [r for chunk in pool.map(call, range(16)) for r in chunk]
        direct = loaded.classifier.predict([t for i in range(16) for t in texts[i::16]])
        assert [r.labels[0] for r in results] == direct.labels
        np.testing.assert_allclose(np.vstack([r.probs for r in results]), direct.probs, atol=1e-5)
        np.testing.assert_allclose(np.vstack([r.embeddings for r in results]), direct.embeddings, atol=1e-5)
        assert {r.version for r in results} == {"v1"}
        stats = server.stats()
        assert stats["texts"] == len(texts) + 0 and stats["max_batch_texts"] > 1, stats
        assert stats["batches"] < len(texts)  # fewer forward passes than requests
    finally:
        server.stop()


def test_swap_loads_off_the_worker_and_keeps_the_previous_model_warm(trained):
    models_dir = trained[1].models_dir
    server = ModelServer("default", max_batch=8, max_wait_ms=0).start()
    try:
        first = server.swap("v1", models_dir / "v1")
        assert server.predict(["hello"]).version == "v1"
        server.swap("v2", models_dir / "v2")
        assert server.predict(["hello"]).version == "v2"
        assert server.load("v1", models_dir / "v1") is first  # rollback target needs no load
        with pytest.raises(FileNotFoundError):
            server.swap("v9", models_dir / "v9")
        assert server.predict(["still serving"]).version == "v2"
    finally:
        server.stop()


def test_continuous_batching_takes_the_whole_queue_in_one_forward(trained):
    models_dir = trained[1].models_dir
    server = ModelServer("default", max_batch=64)  # the worker starts once the queue is there
    try:
        server.swap("v1", models_dir / "v1")
        futures = [server.submit([f"a great film {i}"]) for i in range(10)]
        futures.append(server.submit([f"an awful film {i}" for i in range(60)]))  # would pass max_batch
        server.start()
        results = [f.result(30) for f in futures]
        assert [r.batch_texts for r in results] == [10] * 10 + [60]
        stats = server.stats()
        assert (stats["batches"], stats["texts"]) == (2, 70)
        assert stats["by_queue_depth"] == {"32-63": {"batches": 1, "texts": 60}, "64-127": {"batches": 1, "texts": 10}}
    finally:
        server.stop()


@contextmanager
def logging_server(path: Path, writer_options: dict | None = None, **server_options):  # type: ignore[no-untyped-def]
    """A ModelServer (not started) logging through a real Writer into a real Store at ``path``."""
    from tuneloop.monitor.storage import Store
    from tuneloop.monitor.writer import Writer

    store = Store(path)
    writer = Writer(store, **(writer_options or {})).start()
    server = ModelServer("default", max_batch=64, writer=writer, **server_options)
    try:
        yield server, writer, store
    finally:
        server.stop()
        writer.stop()
        store.close()


def test_a_forward_is_logged_as_one_write_and_each_caller_answered_after_its_commit(trained, tmp_path):
    # a long group-commit window: only the forward's own group (linger=False) lets the answers come back
    with logging_server(tmp_path / "log.duckdb", {"group_commit_ms": 60_000}) as (server, writer, store):
        server.swap("v1", trained[1].models_dir / "v1")
        started = time.perf_counter() - 0.5  # the callers' requests began half a second ago
        committed, all_answered = [], threading.Event()

        def on_answer(future):  # runs as the caller is answered: its rows must be stored by then
            committed.append(len(store.get_predictions(future.result().logged.ids)))
            if len(committed) == 6:
                all_answered.set()

        futures = []
        for i in range(6):
            futures.append(server.submit([f"a great film {i}", f"an awful day {i}"][: 1 + i % 2],
                                         metadata={"caller": i}, started=started))
            futures[-1].add_done_callback(on_answer)
        server.start()
        results = [f.result(30) for f in futures]
        assert all_answered.wait(30)
        assert writer.prediction_groups == 1  # six callers, one forward, one transaction
        assert committed == [1 + i % 2 for i in range(6)]
        for i, r in enumerate(results):
            rows = store.get_predictions(r.logged.ids).set_index("id").loc[r.logged.ids]
            assert rows["label"].tolist() == r.labels
            assert rows["confidence"].tolist() == r.logged.confidence == [max(p.values()) for p in r.logged.probs]
            assert set(rows["metadata"]) == {json.dumps({"caller": i}, separators=(",", ":"))}
            assert (rows["latency_ms"] >= 500).all()
            assert all(np.allclose(np.asarray(e, dtype=np.float32), r.embeddings[k])
                       for k, e in enumerate(rows["embedding"]))


def test_the_servers_own_scoring_shares_a_forward_but_is_never_logged_as_traffic(trained, tmp_path):
    with logging_server(tmp_path / "log.duckdb") as (server, _, store):
        server.swap("v1", trained[1].models_dir / "v1")
        callers = [server.submit([f"a great film {i}"]) for i in range(3)]
        own = server.submit([f"an old review {i}" for i in range(5)], log=False)  # e.g. re-scoring a reference
        callers.append(server.submit(["an awful day", "a fine day"]))
        server.start()  # one forward takes all four requests
        results, scored = [f.result(30) for f in callers], own.result(30)
        assert {r.batch_texts for r in results} == {scored.batch_texts} == {10}
        assert scored.logged is None and len(scored.labels) == 5
        assert store.count_predictions() == 5  # the callers' texts only
        stored = store.get_predictions([i for r in results for i in r.logged.ids]).set_index("id")
        for r in results:
            assert stored.loc[r.logged.ids, "label"].tolist() == r.labels
            assert stored.loc[r.logged.ids, "text"].str.startswith(("a great", "an awful", "a fine")).all()


def test_a_writer_that_refuses_fails_the_callers_not_the_worker(trained, tmp_path):
    from tuneloop.monitor.writer import WriterStopped

    with logging_server(tmp_path / "log.duckdb") as (server, writer, _):
        server.start()
        server.swap("v1", trained[1].models_dir / "v1")
        writer.stop()
        with pytest.raises(WriterStopped):
            server.predict(["a great film"], timeout=30)
        server.writer = None  # the worker is still serving
        assert server.predict(["a great film"], timeout=30).labels[0] in LABELS


def test_the_served_model_is_merged_and_answers_as_the_adapter_model_does(trained, tmp_path):
    import shutil

    import torch

    from tuneloop.monitor.demo.data import load_tweets
    from tuneloop.retrain.versions import load_version

    # v1 with a clearly non-zero adapter, so that a wrong merge would change the outputs
    version = tmp_path / "v1x"
    shutil.copytree(trained[1].models_dir / "v1", version)
    adapter = load_version(version, threads=1, trainable=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapter.encoder.named_parameters():
            if ".lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    adapter.save(version)
    texts = load_tweets()["text"].iloc[:200].tolist()
    expected = adapter.predict(texts)
    with adapter.encoder.disable_adapter():
        without = adapter.predict(texts)
    assert np.abs(expected.embeddings - without.embeddings).max() > 1e-3  # the adapter matters

    server = ModelServer("default", max_batch=64).start()
    try:
        served = server.swap("v1x", version).classifier
        assert not [n for n, _ in served.encoder.named_modules() if "lora" in n]  # plain layers, no peft wrappers
        got = [server.predict(texts[i : i + 50], timeout=60) for i in range(0, len(texts), 50)]
        assert [label for r in got for label in r.labels] == expected.labels
        np.testing.assert_allclose(np.vstack([r.probs for r in got]), expected.probs, atol=1e-5)
        np.testing.assert_allclose(np.vstack([r.embeddings for r in got]), expected.embeddings, atol=1e-5)
        with pytest.raises(ValueError, match="merged into the encoder for serving"):
            served.save(tmp_path / "copy")
        with pytest.raises(ValueError, match="merged into the encoder for serving"):
            served.base_pooled(texts[:2])
        server.swap("v1", trained[1].models_dir / "v1")  # hot-swap to another merged model and back
        assert server.predict(texts[:1]).version == "v1"
        assert server.swap("v1x", version).classifier is served  # the previous model stays warm
        assert server.predict(texts[:3]).labels == expected.labels[:3]
    finally:
        server.stop()


def test_closed_loop_callers_share_one_forward_instead_of_alternating(trained, tmp_path):
    clients, rounds = 8, 6
    # a generous fill window: the callers answered after each commit are waited for, not left to the next forward
    with logging_server(tmp_path / "log.duckdb", fill_ms=2000) as (server, _, store):
        server.swap("v1", trained[1].models_dir / "v1")
        server.start()
        barrier = threading.Barrier(clients)

        def client(k):
            barrier.wait()
            return [server.predict([f"the great film {k} {j}"], timeout=60) for j in range(rounds)]

        with ThreadPoolExecutor(clients) as pool:
            results = [r for chunk in pool.map(client, range(clients)) for r in chunk]
        assert len(store.get_predictions([i for r in results for i in r.logged.ids])) == clients * rounds
        stats = server.stats()
        # the first forward may start before every client has arrived; after it, each forward holds all of them
        assert stats["batches"] <= rounds + 1, stats
        assert server.batch_sizes[clients] >= rounds - 1, stats


def test_model_queue_is_bounded_and_refuses_instead_of_growing(trained):
    models_dir = trained[1].models_dir
    server = ModelServer("default", max_batch=8, max_queue=4)  # no worker yet: everything waits
    try:
        server.swap("v1", models_dir / "v1")
        first = server.submit(["a", "b", "c"])
        with pytest.raises(ServeQueueFull, match="model.serve_max_queue = 4"):
            server.submit(["d", "e"])
        last = server.submit(["d"])  # fits exactly
        assert server.queued_texts == 4
        server.start()
        assert len(first.result(30).labels) == 3 and len(last.result(30).labels) == 1
        assert server.submit(["e", "f", "g", "h", "i"]).result(30).labels  # alone, a larger request is served
    finally:
        server.stop()


class Gated:
    """The real classifier behind a gate: a forward starts only once the test opens it."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.labels = classifier.labels
        self.entered = threading.Event()
        self.open = threading.Event()

    def predict(self, texts, batch_size=None):
        self.entered.set()
        assert self.open.wait(60)
        return self.classifier.predict(texts, batch_size)


def test_full_model_queue_answers_503_with_retry_after_and_serves_what_it_took(live):
    with live.client("admin") as admin:
        promote(admin, "v1")
    srv = live._server.config.app.state.runtime.serving.get("default")
    assert srv.max_queue == live.settings.model.serve_max_queue == 1024
    served = srv.model
    gated = Gated(served.classifier)
    answers = {}

    def post(name, texts):
        with live.client("ingest") as c:
            answers[name] = c.post("/v1/predict", json={"texts": texts})

    srv.max_queue = 2
    srv.install(LoadedModel(served.version, served.path, gated))
    threads = [threading.Thread(target=post, args=("running", ["a great film"])),
               threading.Thread(target=post, args=("queued", ["an awful film", "an okay film"]))]
    try:
        threads[0].start()
        assert gated.entered.wait(30)  # the worker holds the first request
        threads[1].start()
        deadline = time.monotonic() + 30
        while srv.queued_texts < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.queued_texts == 2
        with live.client("ingest", timeout=10) as c:
            r = c.post("/v1/predict", json={"texts": ["one more"]})
        assert r.status_code == 503 and r.headers["Retry-After"] == str(live.settings.server.retry_after_seconds)
        assert "model.serve_max_queue = 2" in r.json()["detail"]
    finally:
        gated.open.set()
        for t in threads:
            t.join(30)
        srv.max_queue = live.settings.model.serve_max_queue
        srv.install(served)
    assert [answers[k].status_code for k in ("running", "queued")] == [200, 200]
    ids = [p["id"] for k in ("running", "queued") for p in answers[k].json()["predictions"]]
    assert len(live.store.get_predictions(ids)) == 3  # what the server took was served and logged


def test_first_callers_of_a_project_wait_for_its_champion_to_load(live):
    from tuneloop.monitor.projects import create_project
    from tuneloop.monitor.serving import Serving

    create_project(live.store, "second", LABELS)
    registry.register_dir(live.store, "second", live.settings.models_dir, "v2")
    registry.promote(live.store, "second", "v2", "test")
    serving = Serving(live.store, live.settings)
    try:
        assert serving.get("second") is None
        with ThreadPoolExecutor(8) as pool:
            servers = list(pool.map(lambda _: serving.server("second"), range(8)))
        assert len({id(s) for s in servers}) == 1 and {s.version for s in servers} == {"v2"}
        assert serving.get("second") is servers[0]
        assert serving.readiness_info() == {"second": "model v2 loaded"}
    finally:
        serving.stop()


# -- over HTTP ---------------------------------------------------------------------------------------------


def test_readiness_reports_the_model_and_does_not_fail_without_one(live):
    r = httpx.get(f"{live.url}/readyz")
    assert r.status_code == 200 and "default" in r.json()["info"]["serving"]
    with live.client("ingest") as c:
        r = c.post("/v1/predict", json={"texts": ["hello"], "project": "empty"})
        assert r.status_code == 503
        assert r.json()["detail"] == "no champion model for project empty; train one with tuneloop train"
        assert c.post("/v1/predict", json={"texts": ["hello"], "project": "nope"}).status_code == 404
    r = httpx.get(f"{live.url}/readyz")
    assert r.status_code == 200 and r.json()["info"]["serving"]["empty"] == "no model"


def test_predictions_are_logged_with_embedding_and_version(live):
    with live.client("admin") as admin, live.client("ingest") as c:
        promote(admin, "v1")
        ids = []
        for n in range(1, 6):
            r = c.post("/v1/predict", json={"texts": [f"a great film {n} {i}" for i in range(n)],
                                            "metadata": {"source": "test"}})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model_version"] == "v1" and len(body["predictions"]) == n
            for p in body["predictions"]:
                assert set(p["probs"]) == set(LABELS) and abs(sum(p["probs"].values()) - 1) < 1e-4
                assert p["label"] in LABELS and p["confidence"] == max(p["probs"].values())
            ids += [p["id"] for p in body["predictions"]]
    assert len(set(ids)) == 15
    rows = live.store.get_predictions(ids)  # committed before the responses were sent
    assert len(rows) == 15
    assert set(rows["model_version"]) == {"v1"}
    dim = json.loads((Path(live.settings.model.base) / "config.json").read_text())["hidden_size"]
    assert all(len(e) == dim for e in rows["embedding"]) and (rows["latency_ms"] > 0).all()
    assert set(rows["metadata"]) == {'{"source":"test"}'}


def test_bad_inputs_get_clear_4xx(live):
    with live.client("ingest") as c:
        r = c.post("/v1/predict", json={"texts": []})
        assert r.status_code == 422 and "texts is empty" in r.text
        r = c.post("/v1/predict", json={"texts": ["fine", "  "]})
        assert r.status_code == 422 and "[1] are empty or blank" in r.text
        r = c.post("/v1/predict", json={"texts": ["x" * (10 * 1024 * 1024)]})
        assert r.status_code in (413, 422)
        assert "max_text_chars" in r.text or "max_body_bytes" in r.text
        r = c.post("/v1/predict", json={"texts": ["ok"] * 51})
        assert r.status_code == 422 and "server.max_batch = 50" in r.text
        r = c.post("/v1/predict", json={"texts": ["ok"], "colour": "red"})
        assert r.status_code == 422
        r = c.post("/v1/predict", content=b'{"texts": ["ok"], "metadata": {"x": NaN}}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "metadata must be plain JSON" in r.text
        r = c.post("/v1/predict", content=b'{"texts": ["fine", "bad \\ud800 text"]}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "text 1 is not valid Unicode" in r.text
        assert c.post("/v1/models/v2/promote").status_code == 403  # ingest may not promote
    with live.client("admin") as c:
        r = c.post("/v1/models/v42/promote")
        assert r.status_code == 404 and "no version 'v42'" in r.json()["detail"]
        r = c.post("/v1/models/.hidden/promote")
        assert r.status_code == 422 and "invalid version name" in r.text
        for escape in ("..", "%2e%2e", "..%2F..%2Fetc", "v1%2F..%2F..%2Fx"):
            for action in ("promote", "register"):
                r = c.post(f"/v1/models/{escape}/{action}")
                assert r.status_code in (404, 422), (escape, action, r.status_code)
            assert c.get(f"/v1/models/{escape}").status_code in (404, 422)
        r = c.post("/v1/models/v3/register", json={"status": "champion"})
        assert r.status_code == 422
        r = c.post("/v1/models/v8/register")
        assert r.status_code == 404 and "no complete model version" in r.json()["detail"]


def test_models_endpoints_and_rejected_versions(live):
    with live.client("admin") as admin, live.client("label") as reader:
        promote(admin, "v1")
        listing = reader.get("/v1/models").json()
        assert [r["version"] for r in listing["items"]][:3] == ["v1", "v2", "v3"]
        assert listing["champion"] == "v1" and listing["serving"] == "v1"
        assert all("val_accuracy" in r["metrics"] for r in listing["items"])
        assert listing["promotions"][0]["version"] == "v1"  # newest first
        shown = reader.get("/v1/models/v1").json()
        assert shown["status"] == "champion" and shown["labels"] == LABELS and shown["manifest"]["n_rows"] == 60
        assert shown["promotions"][0]["version"] == "v1"
        assert reader.get("/v1/models/v7").status_code == 404
        registry.reject(live.store, "default", "v3", ["golden accuracy fell by 0.05"])
        r = admin.post("/v1/models/v3/promote")
        assert r.status_code == 409 and "golden accuracy fell" in r.json()["detail"]
        assert reader.get("/v1/models").json()["serving"] == "v1"  # nothing changed
        forced = promote(admin, "v3", force=True, reason="accepted by hand")
        assert forced["champion"]["version"] == "v3" and forced["previous"] == "v1" and forced["serving"] == "v3"
        back = admin.post("/v1/models/rollback").json()
        assert back["champion"]["version"] == "v1" and back["serving"] == "v1"


def test_promote_and_rollback_hot_swap_with_no_failed_request(live):
    """20 swaps (promote and rollback) while 6 clients keep predicting: every request succeeds."""
    stop = threading.Event()
    failures, seen = [], []

    def client_loop(k):
        with live.client("ingest") as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = c.post("/v1/predict", json={"texts": [f"an okay film {k} {i}"] * (1 + i % 3)})
                    if r.status_code != 200:
                        failures.append((r.status_code, r.text))
                    else:
                        seen.append(r.json()["model_version"])
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    with live.client("admin") as admin:
        promote(admin, "v1")
        before = live.client("label").get("/v1/serving").json()["projects"]["default"]  # counters are cumulative
        clients = [threading.Thread(target=client_loop, args=(k,)) for k in range(6)]
        for t in clients:
            t.start()
        expected = "v1"
        try:
            for i in range(20):
                if i % 4 == 3:
                    r = admin.post("/v1/models/rollback")
                    assert r.status_code == 200, r.text
                    expected = r.json()["champion"]["version"]
                else:
                    expected = ["v2", "v3", "v1"][i % 3]
                    assert promote(admin, expected, force=True)["serving"] == expected
                # the next request after the swap answers with the new champion
                r = admin.post("/v1/predict", json={"texts": ["right after the swap"]})
                assert r.status_code == 200 and r.json()["model_version"] == expected
                time.sleep(0.05)
        finally:
            stop.set()
            for t in clients:
                t.join(30)
    assert failures == []
    assert set(seen) == {"v1", "v2", "v3"} and len(seen) > 20
    after = live.client("label").get("/v1/serving").json()["projects"]["default"]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests > len(seen)  # this test's requests, counted (the swap checks add 20 more)
    assert batches < requests  # concurrent clients were batched together during the swaps


def test_concurrent_single_text_clients_are_batched(live):
    with live.client("admin") as admin:
        promote(admin, "v1")
    before = live.client("label").get("/v1/serving").json()["projects"]["default"]

    def one(i):
        with live.client("ingest") as c:
            return [c.post("/v1/predict", json={"texts": [f"the great film {i} {j}"]}).status_code
                    for j in range(4)]

    with ThreadPoolExecutor(16) as pool:
        codes = [code for chunk in pool.map(one, range(16)) for code in chunk]
    assert codes == [200] * 64
    after = live.client("label").get("/v1/serving").json()["projects"]["default"]
    assert after["requests"] - before["requests"] == 64
    assert after["batches"] - before["batches"] < 64  # several requests shared a forward pass


# -- the command line ------------------------------------------------------------------------------------


def tuneloop(*args, env=None):
    """Run the real CLI in-process (same code path as the console script, without a new interpreter)."""
    from typer.testing import CliRunner

    from tuneloop.monitor.cli import app

    r = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def _config(path, settings, data_dir, port):
    path.write_text(
        f'[paths]\ndata_dir = "{data_dir}"\n'
        f'[model]\nbase = "{settings.model.base}"\nepochs = 1\nthreads = 1\n'
        f"[server]\nport = {port}\n"
    )
    return path


def test_cli_train_and_models_without_a_server(trained, tmp_path):
    settings = trained[1]
    data = tmp_path / "data.csv"
    labelled(50).to_csv(data, index=False)
    cfg = _config(tmp_path / "c.toml", settings, tmp_path / "d", free_port())
    out = tuneloop("-c", str(cfg), "train", str(data), "--labels", "negative,neutral,positive", "--promote").stdout
    assert "trained v1" in out and "as champion" in out
    assert (tmp_path / "d" / "models" / "v1" / "reference.parquet").is_file()
    out = tuneloop("-c", str(cfg), "train", str(data), "--from", "v1", "--promote").stdout
    assert "trained v2" in out
    out = tuneloop("-c", str(cfg), "models", "rollback", "--reason", "bad").stdout
    assert "rolled back default to v1 (was v2)" in out
    listing = tuneloop("-c", str(cfg), "models", "list").stdout
    assert "v1          champion" in listing and "v2          archived" in listing


def test_cli_train_registers_and_promotes_through_the_running_server(live, tmp_path):
    data = tmp_path / "data.csv"
    labelled(50, seed=9).to_csv(data, index=False)
    cfg = _config(tmp_path / "c.toml", live.settings, live.settings.data_dir, live.settings.server.port)
    env = {"TUNELOOP_TOKEN": live.tokens["admin"]}
    out = tuneloop("-c", str(cfg), "train", str(data), "--promote", env=env).stdout
    assert "with the server" in out and "now serving" in out
    version = out.split()[1]
    with live.client("ingest") as c:
        assert c.post("/v1/predict", json={"texts": ["hello"]}).json()["model_version"] == version
    assert live.store.query("SELECT count(*) AS n FROM reference_rows WHERE reference = ?", [version])["n"][0] == 50
    out = tuneloop("-c", str(cfg), "models", "rollback", env=env).stdout
    assert f"(was {version}); serving" in out
