"""The background embedder on a real DuckDB file with a tiny real encoder."""

import json
import os
import threading
import time

import numpy as np
import pytest

from tuneloop.monitor.config import load_settings
from tuneloop.monitor.embedder import BackgroundEmbedder, SharedEncoder, pending_by_project, write_embeddings
from tuneloop.monitor.storage import Store
from tuneloop.retrain.encoder import Encoder
from tuneloop.retrain.tiny import make_tiny_base

WORDS = ["the", "flight", "was", "late", "again", "love", "the", "new", "phone", "great", "music", "terrible",
         "service"]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture
def settings(tmp_path, tiny_base):
    return load_settings(paths={"data_dir": tmp_path}, embedder={"base": str(tiny_base), "batch_size": 16,
                                                                  "poll_seconds": 0.05})


def texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(2, 12))) for _ in range(n)]


def rows(n, start=0, embedding=None):
    return [{"id": f"r{start + i}", "text": t, "label": "neutral", "embedding": embedding}
            for i, t in enumerate(texts(n, start))]


def embeddings(store, project="default"):
    found = store.cursor().execute(
        "SELECT id, text, embedding FROM predictions WHERE project = ? ORDER BY id", [project]).fetchall()
    return {i: (text, emb) for i, text, emb in found}


def test_fills_null_embeddings_with_the_encoder_and_leaves_given_ones(settings, tiny_base):
    dim = json.loads((tiny_base / "config.json").read_text())["hidden_size"]
    with Store(settings.db_path) as store:
        store.append_predictions(rows(40))
        given = [0.5] * dim
        store.append_predictions(rows(5, start=100, embedding=given))
        store.append_predictions(rows(7), project="other")  # same ids, another project
        embedder = BackgroundEmbedder(store, settings)
        assert embedder.drain() == 47
        assert pending_by_project(store) == {}
        got = embeddings(store)
        expected = Encoder(tiny_base).encode([got[f"r{i}"][0] for i in range(40)])
        np.testing.assert_allclose(np.stack([got[f"r{i}"][1] for i in range(40)]), expected, atol=1e-5)
        assert all(got[f"r{100 + i}"][1] == given for i in range(5))
        assert all(e is not None and len(e) == dim for _, e in embeddings(store, "other").values())
        assert store.count_predictions() == 45  # an UPDATE of the list column neither loses nor copies rows


def test_resumes_after_restart_and_embeds_each_row_once(settings):
    with Store(settings.db_path) as store:
        store.append_predictions(rows(50))
        embedder = BackgroundEmbedder(store, settings)
        assert embedder.run_once() == 16  # oldest first: the first batch, then "crash"
        first = {k: v[1] for k, v in embeddings(store).items() if v[1] is not None}
        assert len(first) == 16
    with Store(settings.db_path) as store:  # restart: the only state is which rows are NULL
        assert pending_by_project(store) == {"default": 34}
        assert BackgroundEmbedder(store, settings).drain() == 34
        after = embeddings(store)
        assert all(after[k][1] == v for k, v in first.items())
        assert all(e is not None for _, e in after.values())


def test_write_skips_rows_that_already_have_an_embedding(settings):
    with Store(settings.db_path) as store:
        store.append_predictions(rows(3))
        rowids = [r[0] for r in store.cursor().execute("SELECT rowid FROM predictions ORDER BY id").fetchall()]
        vectors = np.ones((3, 4), dtype=np.float32)
        ids = ["r0", "r1", "r2"]
        assert write_embeddings(store, rowids[1:] + rowids[:1], ["default"] * 3, ids, vectors) == 0  # both must agree
        assert write_embeddings(store, rowids, ["default"] * 3, ids, vectors) == 3
        assert write_embeddings(store, rowids, ["default"] * 3, ids, 2 * vectors) == 0
        assert embeddings(store)["r0"][1] == [1.0] * 4


def test_thread_keeps_up_with_concurrent_appends(settings):
    with Store(settings.db_path) as store:
        embedder = BackgroundEmbedder(store, settings)
        embedder.start()
        try:
            def writer(project):
                for b in range(15):
                    store.append_predictions(rows(12, start=b * 12), project=project)
                    time.sleep(0.01)

            threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            deadline = time.monotonic() + 60
            while pending_by_project(store) and time.monotonic() < deadline:
                time.sleep(0.05)
            if os.getpriority(os.PRIO_PROCESS, 0) == 0:  # the thread yields the CPU to request handling
                assert os.getpriority(os.PRIO_PROCESS, embedder._thread.native_id) == settings.embedder.nice == 10
        finally:
            embedder.stop()
        assert pending_by_project(store) == {}
        counts = store.query("SELECT project, count(*) AS n, count(DISTINCT id) AS ids FROM predictions GROUP BY 1")
        assert sorted(counts.itertuples(index=False)) == [("a", 180, 180), ("b", 180, 180)]
        assert embedder.embedded_total == 360
        assert embedder.status()["running"] is False


def test_encoder_loads_only_when_there_is_work(settings):
    with Store(settings.db_path) as store:
        store.append_predictions(rows(5, embedding=[0.1] * 8))
        shared = SharedEncoder.get(settings.embedder.base + "/", settings.model.max_length)  # a fresh instance
        embedder = BackgroundEmbedder(store, settings, encode=None)
        embedder._shared = shared
        assert embedder.drain() == 0
        assert not shared.loaded and not embedder.encoder_loaded
        store.append_predictions(rows(2, start=50))
        assert embedder.drain() == 2
        assert shared.loaded


def test_a_failing_encoder_is_retried_and_reported(settings):
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return np.zeros((len(batch), 8), dtype=np.float32)

    with Store(settings.db_path) as store:
        store.append_predictions(rows(3))
        embedder = BackgroundEmbedder(store, settings, encode=flaky)
        embedder.start()
        try:
            deadline = time.monotonic() + 10
            while pending_by_project(store) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            embedder.stop()
        assert pending_by_project(store) == {} and len(calls) >= 2
