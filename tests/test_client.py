"""The Python SDK against a real server: batching, flush on close, retries, idempotency, errors."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pytest

from tuneloop.monitor.client import BufferFullError, Client, predictions_table


def ids_in(store, ids):  # type: ignore[no-untyped-def]
    return set(store.get_predictions(list(ids))["id"])


def test_close_flushes_every_logged_row(module_server):
    srv = module_server
    with Client(srv.url, srv.tokens["ingest"], batch_size=300, flush_interval=5) as tl:
        ids = [tl.log_prediction(f"text {i}", "positive", probs={"positive": 0.7, "negative": 0.3},
                                 embedding=np.full(384, 0.1, np.float32), model_version="v9",
                                 ts=datetime(2025, 2, 3, 4, 5, 6, tzinfo=UTC), metadata={"i": i})
               for i in range(1234)]
        assert tl.pending > 0  # still buffered: flush_interval is long and close() must send them
    assert tl.errors == [] and tl.sent["predictions"] == 1234
    assert ids_in(srv.store, ids) == set(ids)
    row = srv.store.get_predictions([ids[5]]).iloc[0]
    assert row["ts"] == datetime(2025, 2, 3, 4, 5, 6) and row["confidence"] == pytest.approx(0.7)
    assert row["metadata"] == '{"i":5}' and len(row["embedding"]) == 384


def test_feedback_follows_its_prediction_and_retries_are_noops(module_server):
    srv = module_server
    with Client(srv.url, srv.tokens["label"], batch_size=50, flush_interval=0.05) as tl:
        pid = tl.log_prediction("late again", "negative", id="fixed-id-" + str(time.time_ns()))
        fid = tl.log_feedback(pid, "neutral", annotator="ana")
        assert tl.flush(30)
        again = tl.log_prediction("late again", "negative", id=pid)  # same id: stored once
        assert again == pid and tl.flush(30)
    assert tl.errors == []
    fb = srv.store.query("SELECT id, label, annotator FROM feedback WHERE prediction_id = ?", [pid])
    assert fb.to_dict("records") == [{"id": fid, "label": "neutral", "annotator": "ana"}]
    assert len(srv.store.get_predictions([pid])) == 1


def test_only_the_records_the_server_refuses_are_set_aside(module_server):
    srv = module_server
    with Client(srv.url, srv.tokens["ingest"], batch_size=100) as tl:
        good = [tl.log_prediction(f"fine {i}", "neutral") for i in range(8)]
        bad_label = tl.log_prediction("odd", "furious")
        bad_dim = tl.log_prediction("odd", "neutral", embedding=[0.0] * 3)
        assert tl.flush(30)
    refused = {i for e in tl.errors for i in e.ids}
    assert refused == {bad_label, bad_dim} and all(e.status == 422 for e in tl.errors)
    assert ids_in(srv.store, good) == set(good) and not ids_in(srv.store, refused)
    assert tl.errors[0].records[0]["text"] == "odd"  # kept, so the caller can fix and resend


def test_permanent_4xx_is_recorded_not_retried(module_server):
    srv = module_server
    tl = Client(srv.url, srv.tokens["ingest"], max_retries=5, backoff=5)
    tl.log_feedback("some-id", "neutral")  # feedback needs role label
    start = time.monotonic()
    assert tl.flush(30)
    assert time.monotonic() - start < 4  # no backoff sleeps
    assert [(e.kind, e.status) for e in tl.errors] == [("feedback", 403)]
    tl.close()


def test_caller_errors_raise_immediately(module_server):
    with Client(module_server.url, module_server.tokens["ingest"]) as tl:
        with pytest.raises(TypeError):
            tl.log_prediction(None, "neutral")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            tl.log_prediction("x", "neutral", metadata={"bad": float("nan")})
        with pytest.raises(ValueError):
            tl.log_feedback("x", "neutral", source="oracle")
    with pytest.raises(RuntimeError):
        tl.log_prediction("x", "neutral")


def test_full_buffer_raises_or_blocks(module_server):
    from conftest import free_port

    down = Client(f"http://127.0.0.1:{free_port()}", "t", max_buffer=10, on_full="raise", max_retries=100,
                  flush_interval=60)
    for i in range(10):
        down.log_prediction(f"t{i}", "neutral")
    with pytest.raises(BufferFullError):
        down.log_prediction("one too many", "neutral")
    assert not down.close(timeout=0.5)  # nothing could be sent: all of it is reported, none dropped silently
    assert sum(len(e.ids) for e in down.errors) == 10

    srv = module_server
    with Client(srv.url, srv.tokens["ingest"], max_buffer=20, batch_size=10, flush_interval=0.01) as tl:
        ids = [tl.log_prediction(f"b{i}", "neutral") for i in range(100)]  # blocks while the buffer is full
    assert tl.errors == [] and ids_in(srv.store, ids) == set(ids)


def test_rows_logged_while_the_server_is_down_arrive_exactly_once(tmp_path, running_server):
    srv = running_server(tmp_path, subprocess=True)
    tl = Client(srv.url, srv.tokens["ingest"], batch_size=100, flush_interval=0.05, max_retries=60,
                backoff=0.05, max_backoff=0.5)
    first = [tl.log_prediction(f"before {i}", "positive") for i in range(200)]
    assert tl.flush(60) and tl.sent["predictions"] == 200  # acknowledged = committed
    srv.kill()  # SIGKILL: nothing gets to clean up
    second = [tl.log_prediction(f"during {i}", "negative") for i in range(300)]
    time.sleep(1.0)  # the sender is now retrying against a dead port
    assert not tl.flush(0.1)
    srv.start()  # same port, same database
    assert tl.flush(60)
    assert tl.close() and tl.errors == []
    srv.stop()
    from tuneloop.monitor.storage import Store

    with Store(srv.settings.db_path) as store:
        assert store.count_predictions() == 500  # each row once: the acknowledged ones survived the kill
        assert ids_in(store, first + second) == set(first + second)


def test_predictions_table_is_what_the_server_expects():
    table = predictions_table([
        ("a", "t", "neutral", None, None, None, None, 1_700_000_000.5, None),
        ("b", "u", "positive", 0.9, {"positive": 0.9, "neutral": 0.1}, [0.5, 0.5], "v1",
         datetime(2024, 1, 1), '{"k":1}'),
    ])
    assert table.column_names == ["id", "text", "label", "ts", "confidence", "probs", "embedding", "model_version",
                                  "metadata"]
    assert table["ts"][0].as_py() == datetime.fromtimestamp(1_700_000_000.5, UTC)
    assert table["ts"][1].as_py() == datetime(2024, 1, 1, tzinfo=UTC)
    assert table["embedding"].to_pylist() == [None, [0.5, 0.5]]


def test_errors_keep_only_the_latest_failed_requests(module_server):
    srv = module_server
    tl = Client(srv.url, srv.tokens["ingest"], max_errors=2)
    for i in range(5):
        tl.log_feedback(f"some-id-{i}", "neutral", id=f"fb-{i}")  # feedback needs role label: refused for good
        assert tl.flush(30)
    assert [e.ids for e in tl.errors] == [["fb-3"], ["fb-4"]] and tl.errors_dropped == 3
    assert not tl.close()  # dropped errors still count as errors
# -- many rows at once, a decorator, event loops, and a client-only install -----------------------


def test_log_predictions_takes_a_dataframe_and_an_arrow_table(module_server):
    import pandas as pd
    import pyarrow as pa

    srv = module_server
    n = 1200
    df = pd.DataFrame({
        "text": [f"frame row {i}" for i in range(n)],
        "label": [["negative", "neutral", "positive"][i % 3] for i in range(n)],
        "confidence": [0.5 + (i % 50) / 100 for i in range(n)],
        "ts": pd.date_range("2025-04-01", periods=n, freq="s", tz="UTC"),
        "metadata": [{"row": i} for i in range(n)],
    })
    table = pa.table({"text": ["arrow a", "arrow b"], "label": ["neutral", "positive"], "id": ["arrow-" + str(
        time.time_ns()), None], "probs": [{"neutral": 0.6, "positive": 0.4}, None]})
    with Client(srv.url, srv.tokens["ingest"], batch_size=500) as tl:
        frame_ids = tl.log_predictions(df)
        table_ids = tl.log_predictions(table)
        with pytest.raises(ValueError, match="unknown prediction columns"):
            tl.log_predictions(df.assign(score=1.0))
        with pytest.raises(TypeError, match="DataFrame or a pyarrow Table"):
            tl.log_predictions([{"text": "x", "label": "neutral"}])
    assert tl.errors == [] and len(set(frame_ids)) == n and table_ids[0].startswith("arrow-")
    assert ids_in(srv.store, frame_ids + table_ids) == set(frame_ids + table_ids)
    row = srv.store.get_predictions([frame_ids[7]]).iloc[0]
    assert row["ts"] == datetime(2025, 4, 1, 0, 0, 7) and row["metadata"] == '{"row":7}'
    assert srv.store.get_predictions([table_ids[0]]).iloc[0]["confidence"] == pytest.approx(0.6)


def test_decorator_logs_inputs_and_outputs_of_sync_and_async_predict(module_server):
    import asyncio

    srv = module_server
    tag = str(time.time_ns())
    with Client(srv.url, srv.tokens["ingest"], on_full="raise") as tl:
        @tl.logged(model_version="dec-v1")
        def predict(texts):
            return [{"label": "positive", "score": 0.75} for _ in texts]

        @tl.logged
        async def predict_one(text):
            await asyncio.sleep(0)
            return ("negative", 0.6)

        assert predict([f"{tag} a", f"{tag} b"]) == [{"label": "positive", "score": 0.75}] * 2
        assert predict.__name__ == "predict"

        async def in_a_loop():
            answer = await predict_one(f"{tag} c")
            assert await tl.aflush(30)
            return answer

        assert asyncio.run(in_a_loop()) == ("negative", 0.6)
    assert tl.errors == []
    rows = srv.store.query("SELECT text, label, confidence, model_version FROM predictions WHERE text LIKE ? "
                           "ORDER BY text", [f"{tag}%"]).to_dict("records")
    assert rows == [{"text": f"{tag} a", "label": "positive", "confidence": 0.75, "model_version": "dec-v1"},
                    {"text": f"{tag} b", "label": "positive", "confidence": 0.75, "model_version": "dec-v1"},
                    {"text": f"{tag} c", "label": "negative", "confidence": 0.6, "model_version": None}]


CLIENT_ONLY_SCRIPT = r"""
import json, sys
import tuneloop.monitor.client as sdk
heavy = sorted(m for m in ("torch", "transformers", "peft", "evidently", "streamlit", "pandas", "duckdb",
                           "fastapi", "sklearn") if m in sys.modules)
import pandas as pd  # the application's own DataFrame
n = 10_000
df = pd.DataFrame({"text": [f"client-only {i}" for i in range(n)], "label": ["neutral"] * n,
                   "confidence": [0.5] * n})
with sdk.Client(sys.argv[1], sys.argv[2], batch_size=1000) as tl:
    ids = tl.log_predictions(df)
errors = [(e.status, str(e.detail)[:300]) for e in tl.errors]
print(json.dumps({"heavy": heavy, "errors": errors, "sent": tl.sent["predictions"], "first": ids[0],
                  "last": ids[-1]}))
"""


@pytest.mark.slow
def test_a_client_only_venv_logs_10000_rows_from_a_dataframe(module_server, tmp_path):
    """A fresh venv with the project (no dependencies) plus httpx and pyarrow: no torch, no server stack."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(root)], check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet"]
    subprocess.run([*pip, "--no-deps", *map(str, wheels.glob("tuneloop-*.whl"))], check=True)
    subprocess.run([*pip, "httpx", "pyarrow", "pandas"], check=True)
    listed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "list",
                             "--format=json"], check=True, capture_output=True, text=True).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert not installed & {"torch", "transformers", "evidently", "streamlit", "fastapi", "duckdb"}, installed

    srv = module_server
    run = subprocess.run([str(venv / "bin" / "python"), "-c", CLIENT_ONLY_SCRIPT, srv.url, srv.tokens["ingest"]],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [] and report["errors"] == [] and report["sent"] == 10_000, report
    assert len(ids_in(srv.store, [report["first"], report["last"]])) == 2
    n = srv.store.query("SELECT count(*) AS n FROM predictions WHERE text LIKE 'client-only %'")["n"][0]
    assert n == 10_000


# -- log_predictions sends slices of the caller's table; records are told apart only when needed ---


def test_dataframe_rows_the_server_refuses_are_set_aside_and_the_rest_stored_in_order(module_server):
    import pandas as pd

    srv = module_server
    tag, n, refused_at = str(time.time_ns()), 1200, {3, 499, 500, 1199}
    df = pd.DataFrame({
        "id": [f"{tag}-given-{i}" if i % 7 == 0 else None for i in range(n)],
        "text": [f"{tag} row {i}" for i in range(n)],
        "label": ["furious" if i in refused_at else "neutral" for i in range(n)],
        "probs": [{"neutral": 0.75, "positive": 0.25}] * n,
        "embedding": [np.full(384, i / n, np.float32) for i in range(n)],
        "metadata": [{"row": i} for i in range(n)],
    })
    with Client(srv.url, srv.tokens["ingest"], batch_size=500, flush_interval=5) as tl:
        ids = tl.log_predictions(df)
    assert len(ids) == n and len(set(ids)) == n
    assert all(ids[i] == f"{tag}-given-{i}" for i in range(0, n, 7))
    assert {i for e in tl.errors for i in e.ids} == {ids[i] for i in refused_at}
    assert all(e.status == 422 for e in tl.errors) and tl.sent["predictions"] == n - len(refused_at)
    refused = sorted((r["text"], r["label"], r["metadata"]) for e in tl.errors for r in e.records)
    assert refused == sorted((f"{tag} row {i}", "furious", f'{{"row":{i}}}') for i in refused_at)
    stored = srv.store.get_predictions(ids).set_index("id")
    assert set(stored.index) == {ids[i] for i in range(n) if i not in refused_at}
    for i in (0, 4, 498, 501, 1198):  # each id names its own row
        row = stored.loc[ids[i]]
        assert row["text"] == f"{tag} row {i}" and row["metadata"] == f'{{"row":{i}}}'
        assert row["embedding"][0] == pytest.approx(i / n) and row["confidence"] == pytest.approx(0.75)


def test_dataframe_rows_count_against_max_buffer(module_server):
    import pandas as pd
    from conftest import free_port

    def frame(n, tag):  # type: ignore[no-untyped-def]
        return pd.DataFrame({"text": [f"{tag} {i}" for i in range(n)], "label": ["neutral"] * n})

    down = Client(f"http://127.0.0.1:{free_port()}", "t", max_buffer=250, batch_size=100, on_full="raise",
                  max_retries=100, backoff=2, flush_interval=60)
    down.log_predictions(frame(100, "in flight"))
    deadline = time.monotonic() + 10
    while down._taken < 100 and time.monotonic() < deadline:  # the sender holds it, retrying (seconds apart)
        time.sleep(0.01)
    assert len(down.log_predictions(frame(200, "buffered"))) == 200
    for i in range(50):
        down.log_prediction(f"one more {i}", "neutral")
    assert down.pending == 350
    with pytest.raises(BufferFullError):  # 250 rows buffered: the table's rows count, not its slices
        down.log_prediction("one too many", "neutral")
    with pytest.raises(BufferFullError):
        down.log_predictions(frame(1, "too many"))
    assert not down.close(timeout=0.5)
    assert sum(len(e.ids) for e in down.errors) == 350  # every buffered row reported, none dropped silently

    srv = module_server
    tag = str(time.time_ns())
    with Client(srv.url, srv.tokens["ingest"], max_buffer=250, batch_size=100, flush_interval=0.01) as tl:
        ids = tl.log_predictions(frame(3000, tag))  # twelve times the buffer: blocks until there is room
    assert tl.errors == [] and tl.sent["predictions"] == 3000 and ids_in(srv.store, ids) == set(ids)


def test_feedback_logged_after_a_dataframe_is_sent_after_its_predictions(module_server):
    import pandas as pd
    import pyarrow as pa

    srv = module_server
    tag, n = str(time.time_ns()), 2000
    sent: list[tuple[str, set[str]]] = []

    def record_request(request):  # type: ignore[no-untyped-def]
        body = request.read()
        if request.url.path == "/v1/predictions":
            sent.append(("predictions", set(pa.ipc.open_stream(body).read_all()["id"].to_pylist())))
        else:
            import json

            sent.append(("feedback", {r["prediction_id"] for r in json.loads(body)["records"]}))

    df = pd.DataFrame({"text": [f"{tag} {i}" for i in range(n)], "label": ["positive"] * n})
    with Client(srv.url, srv.tokens["label"], batch_size=300, flush_interval=5) as tl:
        tl._http.event_hooks["request"].append(record_request)
        ids = tl.log_predictions(df)
        fids = [tl.log_feedback(ids[i], "negative") for i in (n - 1, 0, n // 2)]
    assert tl.errors == []
    first_sent = {}
    for position, (kind, keys) in enumerate(sent):
        for key in keys:
            first_sent.setdefault((kind, key), position)
    for i in (n - 1, 0, n // 2):
        assert first_sent[("predictions", ids[i])] < first_sent[("feedback", ids[i])]
    stored = srv.store.query("SELECT id, predicted_label FROM feedback WHERE prediction_id IN (?, ?, ?)",
                             [ids[n - 1], ids[0], ids[n // 2]]).to_dict("records")
    assert sorted(stored, key=lambda r: r["id"]) == sorted(
        [{"id": f, "predicted_label": "positive"} for f in fids], key=lambda r: r["id"])


def test_a_table_the_wire_format_cannot_carry_sets_aside_only_the_culprit_rows(module_server):
    import pyarrow as pa

    srv = module_server
    tag = str(time.time_ns())
    table = pa.table({"text": [f"{tag} {i}" for i in range(6)], "label": ["neutral"] * 6,
                      "ts": ["1700000000", "1700000001.5", "not a time", "1700000003", "", "1700000005"]})
    with Client(srv.url, srv.tokens["ingest"], batch_size=100) as tl:
        ids = tl.log_predictions(table)
    assert [(e.ids, e.status) for e in tl.errors] == [([ids[2]], None), ([ids[4]], None)]
    assert "cannot be encoded" in tl.errors[0].detail and tl.errors[0].records[0]["text"] == f"{tag} 2"
    kept = [ids[i] for i in (0, 1, 3, 5)]
    assert ids_in(srv.store, kept) == set(kept)
    assert srv.store.get_predictions([ids[1]]).iloc[0]["ts"] == datetime(2023, 11, 14, 22, 13, 21, 500000)
    with Client(srv.url, srv.tokens["ingest"], batch_size=100) as tl:
        ids = tl.log_predictions(pa.table({"text": [f"{tag} s{i}" for i in range(3)], "label": ["neutral"] * 3,
                                           "ts": [1_700_000_000.0, float("nan"), 1_700_000_002.0]}))
    assert [(e.ids, e.status) for e in tl.errors] == [([ids[1]], None)]
    assert ids_in(srv.store, ids) == {ids[0], ids[2]}


def test_a_dataframe_request_over_the_body_limit_is_halved_until_it_fits(tmp_path, running_server):
    import pandas as pd

    srv = running_server(tmp_path, server={"max_body_bytes": 16384})
    n, huge = 400, 7
    df = pd.DataFrame({"text": [("y" * 20000 if i == huge else f"row {i} ") + "x" * 200 for i in range(n)],
                       "label": ["neutral"] * n})
    with Client(srv.url, srv.tokens["ingest"], batch_size=400) as tl:
        ids = tl.log_predictions(df)
    assert [(e.ids, e.status) for e in tl.errors] == [([ids[huge]], 413)]  # alone and still too large
    assert tl.sent["predictions"] == n - 1
    kept = [i for k, i in enumerate(ids) if k != huge]
    assert ids_in(srv.store, kept) == set(kept)


def test_a_dataframe_with_caller_mistakes_raises_in_the_caller_and_buffers_nothing(module_server):
    import pandas as pd
    import pyarrow as pa

    with Client(module_server.url, module_server.tokens["ingest"]) as tl:
        for frame, error in ((pd.DataFrame({"text": [1, 2], "label": ["neutral"] * 2}), TypeError),
                             (pd.DataFrame({"text": ["a", "b"], "label": ["neutral", None]}), TypeError),
                             (pa.table({"text": ["a"], "label": ["neutral"],  # NaN is not JSON
                                        "metadata": pa.array([{"bad": float("nan")}])}), ValueError),
                             (pd.DataFrame({"text": ["a"]}), ValueError)):
            with pytest.raises(error):
                tl.log_predictions(frame)
        assert tl.pending == 0
    assert tl.errors == [] and tl.sent["predictions"] == 0
