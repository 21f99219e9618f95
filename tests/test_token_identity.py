"""Tokens are told apart by id, not by name; unknown tokens cost no table read per request."""

from __future__ import annotations

import httpx
import pytest
from conftest import start_server

from tuneloop.monitor.auth import TokenRegistry, create_token
from tuneloop.monitor.storage import Store


def test_a_repeated_unknown_token_reloads_the_table_once_not_on_every_request(tmp_path):
    with Store(tmp_path / "t.duckdb") as store:
        registry = TokenRegistry(store)
        before = registry.reloads
        for _ in range(20):
            assert registry.lookup("tl_admin_made-up") is None
        assert registry.reloads - before == 1
        token = create_token(store, "label", "created-later")  # a token created since works at once
        assert registry.lookup(token).role == "label"
        assert registry.reloads - before == 2


def test_the_unknown_token_memory_is_bounded(tmp_path):
    with Store(tmp_path / "t.duckdb") as store:
        registry = TokenRegistry(store, max_unknown=5)
        for i in range(50):
            registry.lookup(f"tl_admin_guess-{i}")
        assert len(registry._unknown) <= 5


@pytest.fixture
def server(tmp_path):
    srv = start_server(tmp_path)
    yield srv
    srv.close()


def test_only_the_token_that_sent_feedback_may_retract_it_not_one_with_the_same_name(server):
    with server.client("admin") as admin:
        assert admin.post("/v1/predictions", json={"records": [{"id": "p1", "text": "t", "label": "neutral"}]}
                          ).status_code == 200
        alice, impostor = (admin.post("/v1/tokens", json={"role": "label", "name": "alice"}).json()["token"]
                           for _ in range(2))
    with (httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {alice}"}) as as_alice,
          httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {impostor}"}) as as_impostor):
        for fid in ("fb-1", "fb-2"):
            r = as_alice.post("/v1/feedback", json={"records": [
                {"id": fid, "prediction_id": "p1", "label": "positive"}]})
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        # same token name, and an annotator chosen by the client: neither grants the right to retract
        r = as_impostor.post("/v1/feedback", json={"records": [
            {"id": "fb-3", "prediction_id": "p1", "label": "negative", "annotator": "alice"}]})
        assert r.status_code == 200, r.text
        assert as_impostor.delete("/v1/feedback/fb-1").status_code == 403
        assert as_alice.delete("/v1/feedback/fb-3").status_code == 403
        assert as_alice.delete("/v1/feedback/fb-1").status_code == 200
        assert as_impostor.delete("/v1/feedback/fb-3").status_code == 200
    with server.client("admin") as admin:
        assert admin.delete("/v1/feedback/fb-2").status_code == 200  # an admin may retract any row
    assert server.store.query("SELECT count(*) AS n FROM feedback")["n"][0] == 0
