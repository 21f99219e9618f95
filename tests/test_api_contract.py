"""What the OpenAPI schema allows, the server accepts; what it refuses, the server refuses with a 4xx.

Cases a schema-driven fuzzer (schemathesis) found where the two disagreed, on a real server on
loopback: time parameters as Unix seconds, JSON numbers with a zero fraction, cross-field rules of
the feedback import, project settings of the wrong JSON type, blank texts, upload parameters.
"""

from datetime import UTC, datetime

import pytest


@pytest.fixture(scope="module")
def api(module_server):
    with module_server.client("admin") as client:
        yield client


@pytest.fixture(scope="module")
def schema(api):
    return api.get("/openapi.json").json()


def test_time_parameters_take_unix_seconds_in_range(api, schema):
    since = next(p for p in schema["paths"]["/v1/predictions"]["get"]["parameters"] if p["name"] == "since")
    number = next(b for b in since["schema"]["anyOf"] if b.get("type") == "number")
    assert (number["minimum"], number["maximum"]) == (0, 253402300799)
    api.post("/v1/predictions", json={"records": [{"id": "old", "text": "a", "label": "neutral",
                                                   "ts": "2026-01-01T00:00:00Z"}]}).raise_for_status()
    seconds = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert seconds == 1.7672256e9
    for value in (seconds, "1.7672256e9", "2026-01-01T01:00:00+01:00"):  # the same instant, three ways
        page = api.get("/v1/predictions", params={"since": value})
        assert page.status_code == 200 and [r["id"] for r in page.json()["items"]] == ["old"], (value, page.text)
        assert api.get("/v1/predictions", params={"until": value}).json()["items"] == []
    for path in ("/v1/predictions", "/v1/stats", "/v1/checks"):
        for bad in ("2.66e+143", "-1", "nan", "0001-01-01T00:00:00+01:00"):  # the last is before year 1 in UTC
            r = api.get(path, params={"since": bad})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "since"], (path, bad, r.text)


def test_a_json_number_with_zero_fraction_is_an_integer(api):
    assert api.post("/v1/admin/retention", json={"raw_days": 3650.0}).status_code == 200
    for bad in (3650.5, "3650", True, 0):
        r = api.post("/v1/admin/retention", json={"raw_days": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "raw_days"], (bad, r.text)


def test_project_settings_are_typed_in_schema_and_server(api, schema):
    settings = schema["components"]["schemas"]["ProjectCreate"]["properties"]["settings"]
    drift = settings["properties"]["drift"]
    assert settings["additionalProperties"] is False and drift["additionalProperties"] is False
    assert "webhooks" not in drift["properties"]  # server-wide, not per project
    for bad in ({"drift": {"accuracy_tolerance": False}}, {"drift": {"window_size": "200"}}, {"retrain": {}}):
        r = api.post("/v1/projects", json={"project": "typed", "labels": ["a", "b"], "settings": bad})
        assert r.status_code == 422, (bad, r.text)
    r = api.post("/v1/projects", json={"project": "typed", "labels": ["a", "b"],
                                       "settings": {"drift": {"windowsize": 1}}})
    assert r.status_code == 422 and "settings.drift.windowsize: unknown key" in r.text, r.text
    r = api.post("/v1/projects", json={"project": "typed", "labels": ["a", "b"],
                                       "settings": {"drift": {"window_size": 200.0}}})
    assert r.status_code == 201 and r.json()["settings"]["drift"]["window_size"] == 200


def test_feedback_import_states_which_key_each_record_needs(api, schema):
    body = schema["components"]["schemas"]["FeedbackImportBody"]
    assert body["if"]["properties"]["by"] == {"const": "key"} and "key_field" in body["then"]["required"]
    assert body["else"]["properties"]["records"]["items"]["required"] == ["prediction_id"]
    cases = [{"by": "id", "records": [{"label": "neutral", "key": "k1"}]},
             {"by": "id", "records": [{"label": "neutral", "prediction_id": " "}]},
             {"by": "key", "key_field": "request_id", "records": [{"label": "neutral", "prediction_id": "p"}]},
             {"by": "key", "records": [{"label": "neutral", "key": "k1"}]},
             {"by": "id", "records": [{"label": "\x1d", "prediction_id": "p"}]}]
    for case in cases:
        r = api.post("/v1/feedback/import", json=case)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body", (case, r.text)
    r = api.post("/v1/feedback/import", json={"by": "id", "records": [{"label": "neutral", "prediction_id": "nope"}]})
    assert r.status_code == 200, r.text


def test_blank_means_the_same_to_schema_and_server(api, schema):
    pattern = schema["components"]["schemas"]["PredictRequest"]["properties"]["texts"]["items"]["pattern"]
    for blank in ("\x1d\x1d", "\ufeff", "\u3000 \t"):  # Python and JavaScript disagree on some of these
        r = api.post("/v1/predict", json={"texts": [blank]})
        assert r.status_code == 422 and "blank" in r.text, (blank, r.text)
    assert pattern.startswith("[^") and "\\x1c-\\x1f" in pattern and "\\ufeff" in pattern


def test_register_parent_and_upload_parameters_are_checked_where_declared(api):
    r = api.post("/v1/models/v9/register", json={"parent": ""})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "parent"], r.text
    for params in ({"format": "csv", "encoding": "utf\x00"}, {"format": "CSV"}, {"format": ""}):
        r = api.post("/v1/datasets/preview", params=params, content=b"text,label\nhello,a\n")
        assert r.status_code == 422, (params, r.text)
    ok = api.post("/v1/datasets/preview", params={"format": "csv"}, content=b"text,label\nhello,a\nbye,b\n")
    assert ok.status_code == 200, ok.text
