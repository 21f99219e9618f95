"""Property tests (Hypothesis): what the collector accepts comes back exactly; what it refuses, it refuses cleanly.

Against a real server (thread mode, real DuckDB file) and the validators themselves: arbitrary
Unicode (NUL, RTL marks, emoji, combining marks) round-trips through JSON and Arrow bodies into the
store; lone surrogates and invalid UTF-8 get a 422 naming the field; extreme floats are accepted
exactly when finite and in range; JSON and Arrow bodies are judged the same way; huge metadata is
stored whole or refused with 413/422, never a 500. Seeded (derandomized) so CI is repeatable.
"""

from __future__ import annotations

import json
import math
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tuneloop.monitor.api.routes.collect import parse_predictions
from tuneloop.monitor.client import arrow_stream, predictions_table

LABELS = ["negative", "neutral", "positive"]
ARROW = {"Content-Type": "application/vnd.apache.arrow.stream"}
JSON = {"Content-Type": "application/json"}
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Any Unicode scalar value (NUL and controls included), but no surrogates: those are not text.
unicode_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200).filter(lambda t: t.strip())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)
SAMPLES = ["\x00", "a\x00b", "\u202eevil\u202c.txt", "שלום עולם", "مرحبا", "👩‍👩‍👧‍👦🏳️‍🌈", "e\u0301\u0301\u0301",
           "\ufeffBOM", "\U0010ffff", "line\r\nbreak\ttab", "' OR 1=1; --", "\\u0000"]


@pytest.fixture(scope="module")
def server(module_server):
    return SimpleNamespace(srv=module_server, http=module_server.client("label"))


def stored(server: SimpleNamespace, row_id: str) -> dict[str, Any]:
    df = server.srv.store.get_predictions([row_id])
    assert len(df) == 1, f"{row_id} stored {len(df)} times"
    return df.to_dict("records")[0]


@PROPERTY
@given(text=unicode_text, metadata=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
@example(text=SAMPLES[0], metadata={})
@example(text=SAMPLES[1], metadata={"k\x00": "v\x00"})
@example(text=SAMPLES[2], metadata={"rtl": SAMPLES[3]})
@example(text=SAMPLES[5], metadata={"big": 2**63 - 1, "small": -(2**63), "f": 5e-324, "neg0": -0.0})
@example(text=SAMPLES[6], metadata={"nested": [[[{"a": [1, {"b": None}]}]]]})
@example(text=SAMPLES[10], metadata={"sql": SAMPLES[10], "esc": SAMPLES[11]})
def test_any_text_and_metadata_round_trip_through_json(server, text, metadata):
    row_id = uuid.uuid4().hex
    r = server.http.post("/v1/predictions", json={"records": [
        {"id": row_id, "text": text, "label": "neutral", "metadata": metadata, "model_version": text[:128]}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}
    row = stored(server, row_id)
    assert row["text"] == text and row["model_version"] == text[:128]
    assert json.loads(row["metadata"]) == metadata


@PROPERTY
@given(rows=st.lists(st.tuples(unicode_text, st.floats(0, 1)), min_size=1, max_size=20))
@example(rows=[(t, 0.5) for t in SAMPLES])
def test_any_text_round_trips_through_arrow(server, rows):
    ids = [uuid.uuid4().hex for _ in rows]
    records = [(i, t, LABELS[k % 3], c, None, None, None, 1.7e9, None)
               for k, (i, (t, c)) in enumerate(zip(ids, rows, strict=True))]
    r = server.http.post("/v1/predictions", content=arrow_stream(predictions_table(records)), headers=ARROW)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(rows)
    for i, (t, c) in zip(ids, rows, strict=True):
        row = stored(server, i)
        assert row["text"] == t and row["confidence"] == c


@PROPERTY
@given(before=st.text(max_size=5), surrogate=st.characters(categories=["Cs"]), after=st.text(max_size=5))
def test_lone_surrogates_are_refused_with_a_422(server, before, surrogate, after):
    text = before + surrogate + after
    assume_text = json.dumps({"records": [{"text": text, "label": "neutral"}]})  # escaped as \udXXX
    r = server.http.post("/v1/predictions", content=assume_text, headers=JSON)
    assert r.status_code == 422, r.text
    r = server.http.post("/v1/predict", content=json.dumps({"texts": [text]}), headers=JSON)
    assert r.status_code == 422, r.text
    r = server.http.post("/v1/feedback", content=json.dumps({"records": [{"prediction_id": text, "label": "neutral"}]}),
                         headers=JSON)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("column", ["text", "label", "id", "metadata"])
def test_invalid_utf8_in_arrow_or_json_is_refused_with_a_422(server, column):
    bad = b"ok \xff\xfe \xed\xa0\x80"  # invalid bytes and an encoded surrogate
    offsets = pa.py_buffer(np.array([0, len(bad)], dtype=np.int32).tobytes())
    values = {"text": pa.array(["fine"]), "label": pa.array(["neutral"]), "id": pa.array([uuid.uuid4().hex]),
              "metadata": pa.array(["{}"])}
    values[column] = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(bad)])
    r = server.http.post("/v1/predictions", content=arrow_stream(pa.table(values)), headers=ARROW)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", column]
    raw = b'{"records": [{"text": "' + bad + b'", "label": "neutral"}]}'
    assert server.http.post("/v1/predictions", content=raw, headers=JSON).status_code == 422


@PROPERTY
@given(x=st.floats(width=64))
@example(x=math.nan)
@example(x=math.inf)
@example(x=-0.0)
@example(x=5e-324)
@example(x=1.0000000000000002)
@example(x=-1e-300)
def test_confidence_and_latency_accepted_exactly_when_finite_and_in_range(server, x):
    row_id = uuid.uuid4().hex
    body = json.dumps({"records": [{"id": row_id, "text": "float edge", "label": "neutral", "confidence": x,
                                    "latency_ms": x}]}, allow_nan=True)  # NaN/Infinity tokens: not JSON
    r = server.http.post("/v1/predictions", content=body, headers=JSON)
    valid = math.isfinite(x) and 0 <= x <= 1
    assert r.status_code == (200 if valid else 422), (x, r.text)
    if valid:
        row = stored(server, row_id)
        assert row["confidence"] == x and row["latency_ms"] == x
    else:
        fields = {e["loc"][-1] for e in r.json()["detail"]}
        assert "confidence" in fields


@PROPERTY
@given(values=st.lists(st.floats(width=64), min_size=384, max_size=384)
       | st.lists(st.sampled_from([3.4028235e38, 3.4028236e38, -3.5e38, 1e-46, -0.0, 1e308]), min_size=384,
                  max_size=384))
def test_embeddings_accepted_exactly_when_finite_as_float32(server, values):
    row_id = uuid.uuid4().hex
    body = json.dumps({"records": [{"id": row_id, "text": "embedding edge", "label": "neutral",
                                    "embedding": values}]}, allow_nan=True)
    r = server.http.post("/v1/predictions", content=body, headers=JSON)
    as32 = np.asarray(values, dtype=np.float64).astype(np.float32)
    valid = bool(np.isfinite(np.asarray(values)).all() and np.isfinite(as32).all())
    assert r.status_code == (200 if valid else 422), r.text
    if valid:
        np.testing.assert_array_equal(np.asarray(stored(server, row_id)["embedding"], np.float32), as32)


def test_huge_metadata_is_stored_whole_or_refused_cleanly(server):
    srv = server.srv
    big = {"blob": "x" * 2_000_000, "many": {f"k{i}": i for i in range(20_000)}, "deep": [[[[[[[[[[1]]]]]]]]]]}
    row_id = uuid.uuid4().hex
    r = server.http.post("/v1/predictions", json={"records": [{"id": row_id, "text": "big", "label": "neutral",
                                                               "metadata": big}]})
    assert r.status_code == 200, r.text[:300]
    assert json.loads(stored(server, row_id)["metadata"]) == big
    too_big = {"blob": "x" * (srv.settings.server.max_body_bytes + 10)}
    r = server.http.post("/v1/predictions", json={"records": [{"text": "too big", "label": "neutral",
                                                               "metadata": too_big}]})
    assert r.status_code == 413, r.text[:300]
    deep = '{"records": [{"text": "deep", "label": "neutral", "metadata": {"d": ' + "[" * 5000 + "]" * 5000 + "}}]}"
    r = server.http.post("/v1/predictions", content=deep, headers=JSON)
    assert r.status_code == 422, r.text[:300]
    assert server.http.get("/healthz").status_code == 200


# -- the validators: one judgement for JSON and Arrow bodies ---------------------------------------

record_values = st.fixed_dictionaries(
    {"text": st.sampled_from(["ok text", " ", "t" * 10_001, "ünï 🚀"]),
     "label": st.sampled_from([*LABELS, "other", ""])},
    optional={
        "id": st.sampled_from(["a1", "", "x" * 129, "ok-id"]),
        "confidence": st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.1]),
        "probs": st.sampled_from([{"negative": 0.2, "neutral": 0.3, "positive": 0.5}, {"positive": 1.0},
                                  {"negative": 0.9, "neutral": 0.9}, {"bogus": 1.0}, {"positive": 1.2}]),
        "embedding": st.sampled_from([[0.1] * 384, [0.1] * 3]),
        "model_version": st.sampled_from(["v1", "", "v" * 129]),
        "latency_ms": st.sampled_from([0.0, 12.5, -1.0]),
        "metadata": st.sampled_from([{"a": 1}, {}, {"nested": {"b": [1, 2]}}]),
    },
)


def _locs(exc: RequestValidationError) -> set[tuple[Any, ...]]:
    return {tuple(e["loc"][:4]) for e in exc.errors()}


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(record_values, min_size=1, max_size=6))
def test_json_and_arrow_bodies_are_judged_the_same(module_server, records):
    """One validation for both wire formats: the same requests refused, the same rows stored.

    A JSON body failing its schema (pydantic) is refused before the configuration-dependent checks
    run, so it may name fewer problems than the same Arrow body: its field paths are a subset.
    """
    ctx = SimpleNamespace(store=module_server.store, settings=module_server.settings)
    json_body = json.dumps({"records": records}).encode()
    columns: dict[str, list[Any]] = {k: [r.get(k) for r in records] for k in {k for r in records for k in r}}
    if "metadata" in columns:
        columns["metadata"] = [None if m is None else json.dumps(m) for m in columns["metadata"]]
    if "probs" in columns:
        columns["probs"] = [None if p is None else list(p.items()) for p in columns["probs"]]
    types = {"probs": pa.map_(pa.string(), pa.float64()), "embedding": pa.list_(pa.float32())}
    arrow_body = arrow_stream(pa.table({k: pa.array(v, types.get(k)) for k, v in columns.items()}))
    outcomes = []
    for body, kind in ((json_body, "json"), (arrow_body, "arrow")):
        try:
            table, _ = parse_predictions(body, kind, None, ctx)
            outcomes.append(("ok", table.drop_columns(["ts"])))
        except RequestValidationError as e:
            outcomes.append(("refused", _locs(e)))
    (json_verdict, json_detail), (arrow_verdict, arrow_detail) = outcomes
    assert json_verdict == arrow_verdict, (records, outcomes)
    if json_verdict == "ok":
        assert json_detail.equals(arrow_detail), (json_detail.to_pylist(), arrow_detail.to_pylist())
    else:
        assert json_detail <= arrow_detail, (records, outcomes)
