"""Fuzzing the whole HTTP API from its own OpenAPI schema (schemathesis 4 + Hypothesis).

Every operation of a live loopback server (with a champion model, some stored rows, an admin
token) gets schema-valid *and* schema-violating requests. The rule: bad input gets a clear 4xx
with a JSON ``detail``, never a 5xx, every status code is one the operation declares, and every
answer, unmodified, matches the schema it declares (timestamps included: RFC 3339 with an offset).
Examples per operation are bounded (seeded, no example database) so the run stays short.
"""

from __future__ import annotations

import shutil
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 12}
EXPENSIVE = {("POST", "/v1/admin/backup"): 4, ("POST", "/v1/checks"): 4, ("POST", "/v1/predict"): 20}
"""Per-operation example counts where one request costs much more (or matters more) than usual."""


def error_has_detail(ctx: Any, response: Any, case: Any) -> bool | None:
    """API rule: every error is JSON ``{"detail": ...}`` (FastAPI's shape, with the field path for 422)."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and "detail" in body, f"error without a JSON detail: {response.text[:200]}"
    return True


UNDECLARED: Counter[str] = Counter()


def status_is_declared(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every answer's status code is declared by its operation (tallied, then asserted to be none)."""
    declared = {int(c) for c in case.operation.definition.raw.get("responses", {}) if c.isdigit()}
    if response.status_code not in declared:
        UNDECLARED[f"{case.operation.method.upper()} {case.operation.path} -> {response.status_code}"] += 1
    return True


CHECKS = [not_a_server_error, status_is_declared, response_schema_conformance, content_type_conformance,
          error_has_detail]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, sentiment_version):
    """A live server with a champion, stored predictions, one label, and the admin token."""
    from conftest import start_server

    server = start_server(tmp_path_factory.mktemp("fuzz"), server={"max_batch": 50, "max_text_chars": 2000,
                                                                   "max_body_bytes": 256 * 1024})
    shutil.copytree(sentiment_version, server.settings.models_dir / "v1")
    admin = server.client("admin")
    assert admin.post("/v1/models/v1/register").status_code == 200
    assert admin.post("/v1/models/v1/promote").status_code == 200
    texts = ["I love this great service", "terrible awful day", "the weather report update", "😀 ✈ שלום مرحبا"]
    out = admin.post("/v1/predict", json={"texts": texts, "metadata": {"source": "fuzz-seed"}})
    assert out.status_code == 200, out.text
    first = out.json()["predictions"][0]["id"]
    assert admin.post("/v1/feedback", json={"records": [{"prediction_id": first, "label": "positive",
                                                          "id": "seed-feedback"}]}).status_code == 200
    yield server
    server.close()


def test_every_operation_survives_fuzzing(fuzz_server, figure):
    server = fuzz_server
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {server.tokens['admin']}"}
    cases: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    failures: list[str] = []

    for op in operations:
        key = (op.method.upper(), op.path)
        plans = [(mode, EXPENSIVE.get(key, n), {}) for mode, n in EXAMPLES.items()]
        if any(p.get("name") == "project" and p.get("in") == "query" for p in op.definition.raw.get("parameters", [])):
            # random project names mostly meet "unknown project": also fuzz the project that holds the data
            plans.append((GenerationMode.POSITIVE, EXPENSIVE.get(key, 8), {"query": {"project": "default"}}))
        for mode, n, fixed in plans:

            @given(case=op.as_strategy(generation_mode=mode, **fixed))
            @settings(max_examples=n, deadline=None, database=None, derandomize=True, print_blob=False,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def fuzz(case: Any) -> None:
                response = case.call(base_url=server.url, headers=headers, timeout=60)
                cases[f"{case.operation.method.upper()} {case.operation.path}"] += 1
                statuses[response.status_code] += 1
                case.validate_response(response, checks=CHECKS, headers=headers)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body): positive cases only
                assert mode is GenerationMode.NEGATIVE, f"{key}: no positive case could be generated"
            except (Exception, BaseExceptionGroup) as e:  # report every failing operation, not only the first
                failures.append(f"{key[0]} {key[1]} ({mode.value}): {str(e)[:1500]}")

    total = sum(cases.values())
    figure("fuzz: cases sent", f"{total} over {len(operations)} operations; answers by status "
           f"{dict(sorted(statuses.items()))}")
    figure("fuzz: answers with a status code the schema does not declare", str(sum(UNDECLARED.values())))
    assert not failures, "\n\n".join(failures)
    assert not UNDECLARED, f"undeclared status codes: {dict(UNDECLARED)}"
    assert statuses[500] == 0 and all(s < 500 or s == 503 for s in statuses)
    assert httpx.get(server.url + "/readyz").status_code == 200  # and the server is still fine
