"""The command line, run as a real subprocess."""

import os
import subprocess
import sys

import httpx
from conftest import free_port


def tuneloop(*args, cwd, env=None, check=True):
    # The CLI looks for a server at an unused port, so "no server answers" holds even when something
    # listens on the default one.
    nobody = {"TUNELOOP_DASHBOARD__SERVER_URL": f"http://127.0.0.1:{free_port()}"}
    full_env = {**nobody, **os.environ, **(env or {})}
    r = subprocess.run(
        [sys.executable, "-m", "tuneloop.monitor.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120,
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_help_lists_commands(tmp_path):
    out = tuneloop("--help", cwd=tmp_path).stdout
    for command in ("init", "serve", "status", "token"):
        assert command in out


def test_init_then_status_offline(tmp_path):
    out = tuneloop("--data-dir", "d", "init", cwd=tmp_path).stdout
    assert "schema version" in out
    assert (tmp_path / "d" / "tuneloop.duckdb").exists()
    status = tuneloop("--data-dir", "d", "status", cwd=tmp_path).stdout
    assert '"predictions": 0' in status


def test_bad_config_exits_2_with_one_line(tmp_path):
    (tmp_path / "bad.toml").write_text("[server]\nport = 'x'\n")
    r = tuneloop("--config", "bad.toml", "init", cwd=tmp_path, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("config error: server.port")
    assert "Traceback" not in r.stderr


def test_token_create_rejects_unknown_role(tmp_path):
    r = tuneloop("--data-dir", "d", "token", "create", "--role", "root", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "unknown role" in r.stderr


def test_serve_prints_url_and_answers(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.monitor.cli", "--data-dir", "d", "serve", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        while not any(f"http://127.0.0.1:{port}" in line for line in lines) and len(lines) < 50:
            lines.append(proc.stdout.readline())
        assert any(f"http://127.0.0.1:{port}" in line for line in lines), lines
        for _ in range(100):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            import time

            time.sleep(0.1)
        assert r.json()["status"] == "ready"
        # the file is owned by the server: a direct open fails with a clear message
        locked = tuneloop("--data-dir", "d", "token", "create", "--role", "admin", cwd=tmp_path, check=False)
        assert locked.returncode != 0 and "tl_admin_" not in locked.stdout, locked.stdout
        assert "in use by another process" in locked.stderr and "Traceback" not in locked.stderr, locked.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_check_and_alerts_commands_offline(tmp_path):
    import numpy as np

    from tuneloop.monitor.storage import Store

    rng = np.random.default_rng(0)
    store = Store(tmp_path / "d" / "tuneloop.duckdb")
    rows = [{"id": f"r{i}", "text": f"text number {i}", "label": ["negative", "positive"][i % 2],
             "confidence": 0.9, "embedding": (rng.standard_normal(8) + (3 if i >= 300 else 0)).tolist()}
            for i in range(600)]
    store.append_predictions(rows[:300])  # first traffic: the reference
    store.append_predictions(rows[300:])  # shifted traffic
    store.close()
    env = {"TUNELOOP_DRIFT__WINDOW_SIZE": "300", "TUNELOOP_DRIFT__OPEN_AFTER": "1"}
    only_labels = {**env, "TUNELOOP_DRIFT__CHECKS": '["prediction_drift"]'}
    clean = tuneloop("--data-dir", "d", "check", cwd=tmp_path, env=only_labels, check=False)
    assert clean.returncode == 0, clean.stderr  # the label mix is the same in both windows: nothing drifted
    drifted = tuneloop("--data-dir", "d", "check", cwd=tmp_path, env=env, check=False)
    assert drifted.returncode == 1, drifted.stderr  # a drifted check fails the step that runs it
    import json

    run = json.loads(drifted.stdout)
    embedding = next(r for r in run["results"] if r["metric"] == "embedding_drift")
    assert embedding["drifted"] is True
    alerts = json.loads(tuneloop("--data-dir", "d", "alerts", "list", "--status", "open", "--json",
                                 cwd=tmp_path).stdout)
    table = tuneloop("--data-dir", "d", "alerts", "list", cwd=tmp_path).stdout
    assert "embedding_drift" in table and not table.lstrip().startswith("{")
    assert any(a["kind"] == "embedding_drift" for a in alerts["items"])
    alert_id = alerts["items"][0]["id"]
    acked = json.loads(tuneloop("--data-dir", "d", "alerts", "ack", str(alert_id), cwd=tmp_path).stdout)
    assert acked["acked_by"] == "cli"


def test_check_exits_2_when_it_cannot_run(tmp_path):
    tuneloop("--data-dir", "d", "init", cwd=tmp_path)
    r = tuneloop("--data-dir", "d", "check", cwd=tmp_path, check=False)  # no predictions at all
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip(), r.stderr
    help_text = tuneloop("check", "--help", cwd=tmp_path).stdout
    assert "1 at least one check drifted" in " ".join(help_text.split())


def test_version_and_config_show_with_sources_and_masked_secrets(tmp_path):
    import json
    from importlib.metadata import version

    assert tuneloop("--version", cwd=tmp_path).stdout.strip() == f"tuneloop {version('tuneloop')}"
    (tmp_path / "c.toml").write_text('[drift]\nwindow_size = 300\nwebhooks = ["https://hooks.example.com/T1/SECRETPATH"]\n'
                                     '[dashboard]\ntoken = "tl_admin_supersecret"\n')
    env = {"TUNELOOP_SERVER__PORT": "9123"}
    out = tuneloop("--config", "c.toml", "--data-dir", "d", "config", "show", "--json", cwd=tmp_path, env=env).stdout
    rows = {r["key"]: r for r in json.loads(out)}
    assert rows["server.port"] == {"key": "server.port", "value": 9123, "source": "env TUNELOOP_SERVER__PORT"}
    assert rows["drift.window_size"]["source"] == "file c.toml" and rows["drift.window_size"]["value"] == 300
    assert rows["paths.data_dir"]["source"] == "command line"
    assert rows["drift.open_after"]["source"] == "default"
    assert rows["dashboard.token"]["value"] == "***"
    table = tuneloop("--config", "c.toml", "config", "show", cwd=tmp_path, env=env).stdout
    assert "SECRETPATH" not in out + table and "supersecret" not in out + table
    assert "drift.window_size" in table
    with_db = {**env, "TUNELOOP_STORE__URL": "postgresql://tl:dbsecret@db.example:5432/tl"}
    rows = {r["key"]: r for r in json.loads(tuneloop("config", "show", "--json", cwd=tmp_path, env=with_db).stdout)}
    assert rows["store.url"]["value"] == "postgresql://tl:***@db.example:5432/tl"
    bad = tuneloop("config", "show", cwd=tmp_path, check=False,
                   env={"TUNELOOP_STORE__URL": "postgresql://tl:dbsecret@db.example:notaport/tl"})
    assert bad.returncode != 0 and "store.url" in bad.stderr and "tl:***@" in bad.stderr, bad.stderr
    assert "dbsecret" not in bad.stdout + bad.stderr and "Traceback" not in bad.stderr


def test_every_listing_command_takes_json(tmp_path):
    import json

    tuneloop("--data-dir", "d", "init", cwd=tmp_path)
    for command in (["models", "list"], ["projects", "list"], ["token", "list"], ["alerts", "list"],
                    ["retrain", "runs"], ["config", "show"]):
        r = tuneloop("--data-dir", "d", *command, "--json", cwd=tmp_path, check=False)
        assert r.returncode == 0, (command, r.stderr)
        json.loads(r.stdout)
