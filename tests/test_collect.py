"""The collector: group-commit store appends, the single writer, and the HTTP API on a real server."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pyarrow as pa
import pytest
from conftest import start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.monitor.client import arrow_stream
from tuneloop.monitor.writer import UnknownPredictions, WriteQueueFull, Writer

ARROW = {"Content-Type": "application/vnd.apache.arrow.stream"}


def uid(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex


def record(**over):  # type: ignore[no-untyped-def]
    base = {"id": uid(), "text": "the crew was friendly", "label": "positive", "confidence": 0.8,
            "probs": {"positive": 0.8, "neutral": 0.15, "negative": 0.05}, "model_version": "v1"}
    base.update(over)
    return base


def assert_422(r: httpx.Response, *loc) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 422, r.text
    locs = [tuple(d["loc"]) for d in r.json()["detail"]]
    assert any(lo[: len(loc)] == loc for lo in locs), f"{loc} not in {locs}"


# -- Store.append_prediction_batches (group commit in one transaction) -----------------------------
@pytest.fixture
def store(store_backend):
    with store_backend() as s:
        yield s


def rows(ids, label="neutral"):  # type: ignore[no-untyped-def]
    return [{"id": i, "text": f"text {i}", "label": label, "confidence": 0.5} for i in ids]


def test_batches_in_one_transaction_get_their_own_counts(store):
    store.append_predictions(rows(["a", "b"]))
    results = store.append_prediction_batches([
        (rows(["a", "c", "d"]), "default"),        # a exists
        ([], "default"),                           # empty request
        (rows(["d", "e", "e"]), "default"),        # d repeats the first batch, e repeats itself
        (rows(["a"]), "other"),                    # same id, other project: new
    ])
    assert [(r.accepted, r.duplicates) for r in results] == [(2, 1), (0, 0), (1, 2), (1, 0)]
    assert store.count_predictions() == 5 and store.count_predictions("other") == 1
    assert int(store.traffic()["n"].sum()) == 5  # the rollup counts exactly what went in
    seqs = store.query("SELECT DISTINCT ingest_seq FROM predictions WHERE id IN ('c', 'e')")["ingest_seq"]
    assert len(seqs) == 2  # each request keeps its own ingest_seq


def test_group_resolves_pending_feedback(store):
    r = store.append_feedback([{"prediction_id": "late", "label": "positive"}])
    assert r.pending == 1 and r.unknown_ids == ["late"]
    store.append_prediction_batches([(rows(["x"]), "default"), (rows(["late"]), "default")])
    labelled = store.labelled_predictions()
    assert labelled["id"].tolist() == ["late"] and labelled["true_label"].tolist() == ["positive"]
    assert store.table_counts()["pending_feedback"] == 0


# -- the writer thread ---------------------------------------------------------------------------
def test_writer_coalesces_concurrent_batches_into_one_transaction(store):
    # The group closes when it holds 200 rows (the four batches), not on a clock: no race with the submits.
    writer = Writer(store, group_commit_rows=200, group_commit_ms=600_000).start()
    futures = [writer.submit_predictions(pa.Table.from_pylist(rows([f"w{k}-{i}" for i in range(50)])))
               for k in range(4)]
    results = [f.result(10) for f in futures]
    writer.stop()
    assert [(r.accepted, r.duplicates) for r in results] == [(50, 0)] * 4
    assert writer.prediction_groups == 1
    assert store.count_predictions() == 200


def test_one_bad_batch_does_not_fail_the_others(store):
    writer = Writer(store, group_commit_ms=300).start()
    good1 = writer.submit_predictions(pa.Table.from_pylist(rows(["g1"])))
    bad = writer.submit_predictions(pa.table({"text": ["x"], "label": pa.array([None], pa.string())}))
    good2 = writer.submit_predictions(pa.Table.from_pylist(rows(["g2"])))
    assert good1.result(10).accepted == 1 and good2.result(10).accepted == 1
    with pytest.raises(Exception, match="(?i)not[ -]null"):
        bad.result(10)
    writer.stop()
    assert sorted(store.query("SELECT id FROM predictions")["id"]) == ["g1", "g2"]


def test_stop_drains_the_queue_and_then_refuses(store):
    writer = Writer(store, group_commit_rows=1_000_000, group_commit_ms=2000).start()
    futures = [writer.submit_predictions(pa.Table.from_pylist(rows([f"d{i}"]))) for i in range(20)]
    writer.stop()  # before the 2 s window closes
    assert all(f.done() and f.result().accepted == 1 for f in futures)
    assert store.count_predictions() == 20
    with pytest.raises(Exception, match="shutting down"):
        writer.submit_predictions(pa.Table.from_pylist(rows(["late"])))


def test_queue_limit_refuses_instead_of_dropping(store):
    writer = Writer(store, group_commit_ms=1000, max_queued_rows=10, retry_after_seconds=3).start()
    first = writer.submit_predictions(pa.Table.from_pylist(rows([f"q{i}" for i in range(8)])))
    with pytest.raises(WriteQueueFull) as exc:
        writer.submit_predictions(pa.Table.from_pylist(rows([f"r{i}" for i in range(5)])))
    assert exc.value.retry_after == 3
    assert first.result(10).accepted == 8  # what was accepted into the queue is written
    writer.stop()


def test_reject_policy_writes_nothing_of_a_request_with_unknown_ids(store):
    store.append_predictions(rows(["known"]))
    writer = Writer(store).start()
    fb = pa.table({"prediction_id": ["known", "ghost"], "label": ["positive", "negative"]})
    with pytest.raises(UnknownPredictions) as exc:
        writer.submit_feedback(fb, unknown="reject").result(10)
    assert exc.value.ids == ["ghost"]
    assert store.table_counts()["feedback"] == 0 and store.table_counts()["pending_feedback"] == 0
    writer.stop()


# -- HTTP: ingest, idempotency, feedback join, paging, stats --------------------------------------
@pytest.fixture(scope="module", params=["duckdb", "postgresql"])
def srv(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One server per backend for the module's HTTP tests: the DuckDB file, or a PostgreSQL database."""
    sections = {}
    if request.param == "postgresql":
        sections["store"] = {"url": request.getfixturevalue("postgres_server").new_database()}
    server = start_server(tmp_path_factory.mktemp("server"), **sections)
    yield server
    server.close()


@pytest.fixture(scope="module")
def api(srv):  # type: ignore[no-untyped-def]
    with srv.client("admin") as c:
        yield c


def test_batch_ingest_json_and_arrow_store_every_column(srv, api):
    recs = [record(embedding=[0.01 * k] * 384, metadata={"k": k}, ts="2025-01-02T03:04:05+02:00", latency_ms=3.5)
            for k in range(300)]
    r = api.post("/v1/predictions", json={"records": recs})
    assert r.json() == {"accepted": 300, "duplicates": 0}
    row = srv.store.get_predictions([recs[7]["id"]]).iloc[0]
    assert row["ts"] == datetime(2025, 1, 2, 1, 4, 5)  # stored as UTC
    assert json.loads(row["metadata"]) == {"k": 7} and len(row["embedding"]) == 384
    assert json.loads(row["probs"])["positive"] == 0.8 and row["margin"] == pytest.approx(0.65)

    n = 200
    table = pa.table({
        "id": [uid() for _ in range(n)], "text": [f"t{i}" for i in range(n)], "label": ["neutral"] * n,
        "probs": pa.array([[("neutral", 0.6), ("negative", 0.4)]] * n, pa.map_(pa.string(), pa.float32())),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(n * 384, np.float64)), 384),
        "ts": pa.array([1_735_689_600_000_000_123] * n, pa.timestamp("ns", tz="Europe/Paris")),  # 2025-01-01Z
    })
    r = api.post("/v1/predictions", content=arrow_stream(table), headers=ARROW)
    assert r.json() == {"accepted": n, "duplicates": 0}
    row = srv.store.get_predictions([table["id"][0].as_py()]).iloc[0]
    assert row["confidence"] == pytest.approx(0.6)  # max(probs) when no confidence was sent
    assert row["ts"] == datetime(2025, 1, 1) and len(row["embedding"]) == 384


def test_retrying_a_batch_is_a_noop(srv, api):
    recs = [record() for _ in range(50)]
    before = srv.store.count_predictions()
    assert api.post("/v1/predictions", json={"records": recs}).json() == {"accepted": 50, "duplicates": 0}
    assert api.post("/v1/predictions", json={"records": recs}).json() == {"accepted": 0, "duplicates": 50}
    more = recs[:10] + [record() for _ in range(5)]
    assert api.post("/v1/predictions", json={"records": more}).json() == {"accepted": 5, "duplicates": 10}
    assert srv.store.count_predictions() == before + 55


def test_feedback_joins_predictions(srv, api):
    mv = uid("fb-")
    recs = [record(model_version=mv, label="positive") for _ in range(4)]
    api.post("/v1/predictions", json={"records": recs})
    fb = [{"prediction_id": recs[0]["id"], "label": "negative", "source": "rule"},
          {"prediction_id": recs[0]["id"], "label": "positive", "source": "human", "id": uid()},
          {"prediction_id": recs[1]["id"], "label": "neutral"}]
    r = api.post("/v1/feedback", json={"records": fb})
    assert r.json() == {"accepted": 3, "duplicates": 0, "pending": 0, "unknown": []}
    again = api.post("/v1/feedback", json={"records": [fb[1]]}).json()  # same id: a no-op
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    page = api.get("/v1/predictions", params={"model_version": mv, "labelled": "true"}).json()
    got = {i["id"]: (i["true_label"], i["feedback_source"]) for i in page["items"]}
    assert got == {recs[0]["id"]: ("positive", "human"), recs[1]["id"]: ("neutral", "human")}
    unlabelled = api.get("/v1/predictions", params={"model_version": mv, "labelled": "false"}).json()
    assert {i["id"] for i in unlabelled["items"]} == {recs[2]["id"], recs[3]["id"]}
    annotator = srv.store.query("SELECT annotator FROM feedback WHERE prediction_id = ?", [recs[1]["id"]])
    assert annotator["annotator"][0] == "test-admin"  # the calling token's name by default


def test_feedback_before_its_prediction_waits_as_pending(srv, api):
    pid = uid()
    r = api.post("/v1/feedback", json={"records": [{"prediction_id": pid, "label": "neutral"}]}).json()
    assert (r["accepted"], r["pending"], r["unknown"]) == (0, 1, [pid])
    api.post("/v1/predictions", json={"records": [record(id=pid)]})
    page = api.get("/v1/predictions", params={"labelled": "true", "limit": 1000}).json()
    assert {i["id"]: i["true_label"] for i in page["items"]}[pid] == "neutral"


def test_keyset_paging_walks_every_row_once(api):
    mv = uid("page-")
    ids = {r["id"] for r in [record(model_version=mv) for _ in range(25)]}
    api.post("/v1/predictions", json={"records": [record(model_version=mv, id=i) for i in ids]})
    for order in ("desc", "asc"):
        seen, cursor, pages = [], None, 0
        while True:
            params = {"model_version": mv, "limit": 10, "order": order, **({"cursor": cursor} if cursor else {})}
            page = api.get("/v1/predictions", params=params).json()
            seen += [i["id"] for i in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3 and len(seen) == 25 and set(seen) == ids
    assert_422(api.get("/v1/predictions", params={"cursor": "not-a-cursor"}), "query", "cursor")


def test_stats_per_bucket(tmp_path, running_server):
    srv = running_server(tmp_path)
    with srv.client("label") as c, srv.client("ingest") as ing:
        t0 = datetime(2025, 5, 1, 10, 15)
        recs = [record(ts=(t0 + timedelta(hours=h)).isoformat(), confidence=0.5 + 0.1 * h, label="positive")
                for h in range(3) for _ in range(2)]
        ing.post("/v1/predictions", json={"records": recs})
        c.post("/v1/feedback", json={"records": [{"prediction_id": recs[0]["id"], "label": "positive"},
                                                 {"prediction_id": recs[1]["id"], "label": "negative"}]})
        hours = c.get("/v1/stats", params={"bucket": "hour"}).json()["items"]
        assert [(b["n"], b["n_labelled"]) for b in hours] == [(2, 2), (2, 0), (2, 0)]
        assert hours[0]["accuracy"] == 0.5 and hours[1]["accuracy"] is None
        assert [round(b["mean_confidence"], 6) for b in hours] == [0.5, 0.6, 0.7]
        assert all(b["estimated_accuracy"] is None for b in hours)
        days = c.get("/v1/stats", params={"bucket": "day", "since": "2025-05-01T00:00:00Z"}).json()["items"]
        assert len(days) == 1 and days[0]["n"] == 6 and days[0]["by_model_version"][0]["model_version"] == "v1"


# -- HTTP: validation (422 with the field path), for JSON and Arrow bodies -------------------------
FUTURE = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
INVALID = {
    "empty text": ({"text": ""}, "text"),
    "blank text": ({"text": "   "}, "text"),
    "oversized text": ({"text": "x" * 10_001}, "text"),
    "unknown label": ({"label": "furious"}, "label"),
    "missing label": ({"label": None}, "label"),
    "probs not summing to 1": ({"probs": {"positive": 0.5, "negative": 0.2}}, "probs"),
    "probs with unknown label": ({"probs": {"positive": 0.9, "meh": 0.1}}, "probs"),
    "probs value above 1": ({"probs": {"positive": 1.5, "negative": -0.5}}, "probs"),
    "empty probs": ({"probs": {}}, "probs"),
    "confidence above 1": ({"confidence": 1.5}, "confidence"),
    "negative confidence": ({"confidence": -0.1}, "confidence"),
    "wrong embedding dimension": ({"embedding": [0.1] * 383}, "embedding"),
    "timestamp in the future": ({"ts": FUTURE}, "ts"),
    "metadata not an object": ({"metadata": [1, 2]}, "metadata"),
    "negative latency": ({"latency_ms": -1}, "latency_ms"),
    "empty id": ({"id": ""}, "id"),
    "id too long": ({"id": "x" * 129}, "id"),
    "unknown field": ({"bogus": 1}, "bogus"),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_invalid_record_is_422_with_its_path(srv, api, case):
    over, field = INVALID[case]
    good = record()
    bad = {k: v for k, v in record(**over).items() if v is not None}
    r = api.post("/v1/predictions", json={"records": [good, bad]})
    assert_422(r, "body", "records", 1, field)
    assert srv.store.get_predictions([good["id"]]).empty  # one bad record refuses the whole request


@pytest.mark.parametrize(("field", "raw"), [
    ("confidence", "NaN"),
    ("confidence", "Infinity"),
    ("confidence", "1e400"),
    ("probs", '{"positive": NaN, "negative": 0.5}'),
    ("embedding", "[" + ", ".join(["0.1"] * 383) + ", NaN]"),
    ("metadata", '{"score": NaN}'),
    ("metadata", '{"deep": {"x": [1, -Infinity]}}'),
    ("latency_ms", "Infinity"),
])
def test_non_finite_numbers_anywhere_are_422(api, field, raw):
    rest = json.dumps({k: v for k, v in record().items() if k != field})
    body = '{"records": [' + rest[:-1] + f', "{field}": {raw}' + "}]}"
    r = api.post("/v1/predictions", content=body.encode(), headers={"Content-Type": "application/json"})
    assert_422(r, "body", "records", 0, field)


def test_batch_size_limits(api):
    assert_422(api.post("/v1/predictions", json={"records": []}), "body", "records")
    over = [{"text": "t", "label": "neutral"} for _ in range(1001)]
    assert_422(api.post("/v1/predictions", json={"records": over}), "body", "records")
    assert_422(api.post("/v1/feedback", json={"records": []}), "body", "records")
    fb = [{"prediction_id": "p", "label": "neutral"}] * 1001
    assert_422(api.post("/v1/feedback", json={"records": fb}), "body", "records")
    assert_422(api.post("/v1/feedback", json={"records": [{"prediction_id": "p", "label": "nope"}]}),
               "body", "records", 0, "label")
    assert_422(api.post("/v1/feedback", json={"records": [{"prediction_id": "p", "label": "neutral",
                                                            "source": "oracle"}]}), "body", "records", 0, "source")


def arrow_body(**columns):  # type: ignore[no-untyped-def]
    n = len(next(v for v in columns.values() if v is not None))
    base = {"id": [uid() for _ in range(n)], "text": ["fine text"] * n, "label": ["neutral"] * n}
    base.update(columns)
    return arrow_stream(pa.table({k: v for k, v in base.items() if v is not None}))


@pytest.mark.parametrize(("columns", "loc"), [
    ({"label": ["neutral", "furious"]}, ("body", "records", 1, "label")),
    ({"text": ["ok", "x" * 10_001]}, ("body", "records", 1, "text")),
    ({"text": ["ok", None]}, ("body", "records", 1, "text")),
    ({"probs": pa.array([[("neutral", 1.0)], [("neutral", 0.4)]], pa.map_(pa.string(), pa.float64()))},
     ("body", "records", 1, "probs")),
    ({"probs": pa.array([[("neutral", 1.0)], [("zzz", 1.0)]], pa.map_(pa.string(), pa.float64()))},
     ("body", "records", 1, "probs")),
    ({"confidence": [0.5, float("nan")]}, ("body", "records", 1, "confidence")),
    ({"embedding": pa.array([[0.0] * 384, [0.0] * 12], pa.list_(pa.float32()))}, ("body", "records", 1, "embedding")),
    ({"embedding": pa.array([[0.0] * 384, [float("inf")] * 384], pa.list_(pa.float32()))},
     ("body", "records", 1, "embedding")),
    ({"embedding": pa.array([[0.0] * 384, [1e300] * 384], pa.list_(pa.float64()))},
     ("body", "records", 1, "embedding")),
    ({"ts": pa.array([datetime(2025, 1, 1), datetime(2999, 1, 1)], pa.timestamp("us"))}, ("body", "records", 1, "ts")),
    ({"metadata": ['{"a": 1}', '{"a": NaN}']}, ("body", "records", 1, "metadata")),
    ({"metadata": ['{"a": 1}', "[1]"]}, ("body", "records", 1, "metadata")),
    ({"id": ["a" * 10, ""]}, ("body", "records", 1, "id")),
    ({"confidence": ["high", "low"]}, ("body", "confidence")),
    ({"surprise": [1, 2]}, ("body", "surprise")),
    ({"label": None, "text": ["a", "b"]}, ("body", "label")),
])
def test_arrow_bodies_get_the_same_validation(api, columns, loc):
    n = len(next(v for v in columns.values() if v is not None))
    if "id" not in columns:
        columns["id"] = [uid() for _ in range(n)]
    assert_422(api.post("/v1/predictions", content=arrow_body(**columns), headers=ARROW), *loc)


def test_oversized_text_limit_comes_from_config(tmp_path, running_server):
    srv = running_server(tmp_path, server={"max_text_chars": 20, "max_batch": 3}, project={"embedding_dim": 4})
    with srv.client("ingest") as c:
        ok = c.post("/v1/predictions", json={"records": [record(text="x" * 20, embedding=[0.0] * 4)]})
        assert ok.status_code == 200
        assert_422(c.post("/v1/predictions", json={"records": [record(text="x" * 21)]}), "body", "records", 0, "text")
        assert_422(c.post("/v1/predictions", json={"records": [record(embedding=[0.0] * 384)]}),
                   "body", "records", 0, "embedding")
        assert_422(c.post("/v1/predictions", json={"records": [record() for _ in range(4)]}), "body", "records")


# -- HTTP: never a 500 for bad input --------------------------------------------------------------
NASTY = [
    (b"", "application/json"), (b"null", "application/json"), (b"[]", "application/json"),
    (b"{bad json", "application/json"), (b'{"records": null}', "application/json"),
    (b'{"records": [null]}', "application/json"), (b'{"records": "x"}', "application/json"),
    (b'{"records": [{"text": 1, "label": 2}]}', "application/json"),
    (b'{"records": [{"text": "a", "label": "neutral", "confidence": 1' + b"0" * 500 + b"}]}", "application/json"),
    (b'{"records": [{"text": "a", "label": "neutral", "latency_ms": -1' + b"0" * 400 + b"}]}", "application/json"),
    (b'{"records": [{"text": "a", "label": "neutral", "ts": 99999999999999999999}]}', "application/json"),
    (b'{"records": [{"text": "a", "label": "neutral", "ts": "yesterday"}]}', "application/json"),
    (b'{"records": [{"text": "\\ud800", "label": "neutral"}]}', "application/json"),
    (b'{"records": [{"text": "\xff\xfe", "label": "neutral"}]}', "application/json"),
    (b'{"records": [{"text": "a", "label": "neutral", "embedding": ["x"]}]}', "application/json"),
    (b'{"records": [{"text": "a", "label": "neutral", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
     "application/json"),
    (b'{"records": [{"text": "a", "label": "neutral", "probs": {"neutral": "high"}}]}', "application/json"),
    (b'{"records": [{"text": "a", "label": "neutral"}], "project": "../etc"}', "application/json"),
    (b'{"records": [{"text": "a", "label": "neutral"}], "project": "nope"}', "application/json"),
    (b"\x00\x01garbage", "application/vnd.apache.arrow.stream"),
    (b"", "application/vnd.apache.arrow.stream"),
    (b"text=hello", "application/x-www-form-urlencoded"),
    (b"<xml/>", "text/xml"),
]


@pytest.mark.parametrize(("body", "content_type"), NASTY)
def test_bad_bodies_get_4xx_never_500(api, body, content_type):
    for path in ("/v1/predictions", "/v1/feedback"):
        r = api.post(path, content=body, headers={"Content-Type": content_type})
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])
        assert "Traceback" not in r.text


def test_nul_and_unicode_text_are_stored(api, srv):
    rec = record(text="a\x00b 🙂 \u202e über", metadata={"emoji": "🙂", "big": 10**30})
    if srv.settings.store.url:  # PostgreSQL text cannot hold NUL: a clear 422, nothing stored
        r = api.post("/v1/predictions", json={"records": [rec]})
        assert r.status_code == 422 and "NUL" in r.json()["detail"], r.text
        assert srv.store.get_predictions([rec["id"]]).empty
        rec = {**rec, "text": rec["text"].replace("\x00", ""), "id": rec["id"] + "-no-nul"}
    assert api.post("/v1/predictions", json={"records": [rec]}).json()["accepted"] == 1
    row = srv.store.get_predictions([rec["id"]]).iloc[0]
    assert row["text"] == rec["text"] and json.loads(row["metadata"])["big"] == 10**30


@pytest.mark.parametrize("params", [
    {"limit": 0}, {"limit": 100_000}, {"since": "soon"}, {"labelled": "maybe"}, {"order": "sideways"},
    {"project": "../x"}, {"limit": "1e9"},
])
def test_bad_query_parameters_are_4xx(api, params):
    r = api.get("/v1/predictions", params=params)
    assert 400 <= r.status_code < 500, r.text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
record_like = st.fixed_dictionaries(
    {}, optional={k: json_values for k in ("id", "text", "label", "confidence", "probs", "embedding",
                                           "model_version", "ts", "metadata", "latency_ms", "extra")},
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, st.fixed_dictionaries({"records": st.lists(record_like, max_size=3)})))
def test_random_json_never_500(api, body):
    r = api.post("/v1/predictions", json=body)
    assert r.status_code < 500, r.text
    r = api.post("/v1/feedback", json=body)
    assert r.status_code < 500, r.text


# -- HTTP: limits --------------------------------------------------------------------------------
def test_body_limit_413_by_header_and_by_counting(tmp_path, running_server):
    srv = running_server(tmp_path, server={"max_body_bytes": 4096})
    big = json.dumps({"records": [record(text="x" * 5000)]}).encode()
    with srv.client("admin") as c:
        for path in ("/v1/predictions", "/v1/feedback"):
            r = c.post(path, content=big, headers={"Content-Type": "application/json"})
            assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must count what streams in
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    for path in ("/v1/predictions", "/v1/feedback"):
        with srv.client("admin") as c:
            r = c.post(path, content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        assert "max_body_bytes" in r.json()["detail"]
    with srv.client("admin") as c:  # under the limit still works
        assert c.post("/v1/predictions", json={"records": [record()]}).status_code == 200


def test_full_write_queue_answers_503_with_retry_after(tmp_path, running_server):
    srv = running_server(tmp_path, server={"group_commit_ms": 1500, "group_commit_rows": 100_000,
                                           "write_queue_max_rows": 5, "retry_after_seconds": 2})
    first: dict = {}

    def slow_first():  # type: ignore[no-untyped-def]
        with srv.client("ingest") as c:
            first["r"] = c.post("/v1/predictions", json={"records": [record() for _ in range(5)]})

    t = threading.Thread(target=slow_first)
    t.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until the first batch waits in the writer's window
        if "tuneloop_write_queue_rows 5.0" in httpx.get(srv.url + "/metrics").text:
            break
        time.sleep(0.02)
    second = [record() for _ in range(5)]
    with srv.client("ingest") as c:
        r = c.post("/v1/predictions", json={"records": second})
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        t.join(10)
        assert first["r"].json() == {"accepted": 5, "duplicates": 0}
        assert c.post("/v1/predictions", json={"records": second}).json() == {"accepted": 5, "duplicates": 0}
    assert srv.store.count_predictions() == 10


def test_unknown_feedback_reject_is_404_and_writes_nothing(tmp_path, running_server):
    srv = running_server(tmp_path, server={"unknown_feedback": "reject"})
    known = record()
    with srv.client("admin") as c:
        c.post("/v1/predictions", json={"records": [known]})
        r = c.post("/v1/feedback", json={"records": [{"prediction_id": known["id"], "label": "neutral"},
                                                    {"prediction_id": "ghost-1", "label": "neutral"}]})
        assert r.status_code == 404 and r.json()["detail"]["unknown_prediction_ids"] == ["ghost-1"]
        assert srv.store.table_counts()["feedback"] == 0
        ok = c.post("/v1/feedback", json={"records": [{"prediction_id": known["id"], "label": "neutral"}]})
        assert ok.json()["accepted"] == 1


def test_unknown_project_is_404(api):
    r = api.post("/v1/predictions", params={"project": "never-made"}, json={"records": [record()]})
    assert r.status_code == 404
    r = api.post("/v1/predictions", params={"project": "a"}, json={"records": [record()], "project": "b"})
    assert_422(r, "body", "project")


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_exposes_collector_series(api):
    api.post("/v1/predictions", json={"records": [record()]})
    text = httpx.get(str(api.base_url) + "/metrics").text
    for series in ('tuneloop_rows_total{kind="predictions",outcome="accepted"}',
                   'tuneloop_request_duration_seconds_bucket{le="0.001",method="POST",route="/v1/predictions"',
                   "tuneloop_write_queue_rows", "tuneloop_group_commit_rows_bucket",
                   "tuneloop_requests_rejected_total"):
        assert series in text, series


def test_private_metrics_need_admin(tmp_path, running_server):
    srv = running_server(tmp_path, server={"metrics_public": False})
    assert httpx.get(srv.url + "/metrics").status_code == 401
    assert httpx.get(srv.url + "/metrics", headers=srv.headers("label")).status_code == 403
    assert httpx.get(srv.url + "/metrics", headers=srv.headers("admin")).status_code == 200


def test_unexpected_errors_are_500_json_without_traceback(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tuneloop.monitor.api.errors import install
    from tuneloop.monitor.config import load_settings

    app = FastAPI()
    install(app, load_settings(paths={"data_dir": str(tmp_path)}))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500 and "secret" not in r.text and r.json()["detail"].startswith("internal")
