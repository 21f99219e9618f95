"""PostgreSQL as the store, through the real server: a bad ``store.url`` stops start-up in one line,
and an outage of the database answers 503 + Retry-After, loses nothing acknowledged, and heals by itself."""

import subprocess
import sys

import httpx
import pytest
from conftest import free_port, start_server, toml_dumps
from postgres_server import PostgresServer


@pytest.mark.parametrize(("url", "says"), [
    ("mysql://db.example/tuneloop", "scheme 'mysql' is not supported"),
    ("postgresql://db.example:notaport/tuneloop", "not a URL"),
    ("postgresql:///tuneloop", "needs a host"),
    ("postgresql://postgres@127.0.0.1:{port}/tuneloop", "cannot connect to PostgreSQL at"),
])
def test_a_bad_store_url_stops_start_up_with_one_line(tmp_path, url, says):
    config = tmp_path / "c.toml"
    config.write_text(toml_dumps({"paths": {"data_dir": str(tmp_path / "d")},
                                  "store": {"url": url.format(port=free_port())}}))
    r = subprocess.run([sys.executable, "-m", "tuneloop.monitor.cli", "--config", str(config), "serve"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert says in r.stderr and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def records(prefix, n):
    return [{"id": f"{prefix}-{i}", "text": f"text {i}", "label": "positive", "confidence": 0.9} for i in range(n)]


def test_database_outage_is_503_then_heals_without_losing_acknowledged_rows(tmp_path):
    pg = PostgresServer()
    try:
        pg.start()
        srv = start_server(tmp_path, store={"url": pg.new_database()}, server={"retry_after_seconds": 2})
        try:
            with srv.client("admin") as c:
                acked = []
                r = c.post("/v1/predictions", json={"records": records("before", 20)})
                assert r.status_code == 200 and r.json()["accepted"] == 20, r.text
                acked += [f"before-{i}" for i in range(20)]

                pg.stop()
                for attempt in range(3):
                    r = c.post("/v1/predictions", json={"records": records(f"down{attempt}", 5)})
                    assert r.status_code == 503, r.text
                    assert r.headers["Retry-After"] == "2" and "Traceback" not in r.text
                assert httpx.get(srv.url + "/readyz", timeout=10).status_code == 503

                pg.start()
                r = c.post("/v1/predictions", json={"records": records("down0", 5)})  # the client's retry
                assert r.status_code == 200 and r.json()["accepted"] == 5, r.text
                acked += [f"down0-{i}" for i in range(5)]
                r = c.post("/v1/feedback", json={"records": [{"prediction_id": "before-0", "label": "negative"}]})
                assert r.status_code == 200, r.text
                assert httpx.get(srv.url + "/readyz", timeout=10).status_code == 200
            stored = set(srv.store.query("SELECT id FROM predictions")["id"])
            assert stored == set(acked)
        finally:
            srv.close()
    finally:
        pg.remove()
