"""Auth on a real server: every route x (no token, wrong token, each role), tokens API, CLI.

The matrix enumerates the routes of the running app's OpenAPI schema, so routes added later are
covered without editing this file; their required role comes from ``ROLE_RULES`` (first match),
else the API's convention: GET needs ``label``, anything else ``admin``. A route whose role
differs from both must be added to ``ROLE_RULES`` — the test fails until it is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import httpx

from tuneloop.monitor.auth import ROLE_RANK, ROLES

PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
ROLE_RULES: list[tuple[str, str, str]] = [
    ("POST", r"/v1/predict", "ingest"),
    ("POST", r"/v1/predictions", "ingest"),
    ("GET", r"/v1/whoami", "ingest"),
    ("POST", r"/v1/feedback", "label"),
    ("POST", r"/v1/feedback/import", "label"),
    ("DELETE", r"/v1/feedback/\{[^/]+\}", "label"),
    ("POST", r"/v1/alerts/\{[^/]+\}/ack", "label"),
    ("GET", r"/v1/tokens", "admin"),
    ("GET", r"/v1/admin/.*", "admin"),
    ("GET", r"/v1/datasets.*", "admin"),
    ("GET", r"/v1/training/.*", "admin"),
    ("GET", r"/v1/models/\{[^/]+\}/evaluation", "admin"),
]
PATH_VALUES = {"project": "default", "version": "v0", "name": "nobody"}  # any other {param}: "1"


def required_role(method: str, path: str) -> str | None:
    if (method, path) in PUBLIC:
        return None
    for m, pattern, role in ROLE_RULES:
        if m == method and re.fullmatch(pattern, path):
            return role
    return "label" if method == "GET" else "admin"


def concrete(path: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: PATH_VALUES.get(m.group(1), "1"), path)


def routes(server) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    spec = httpx.get(server.url + "/openapi.json").json()
    return sorted((m.upper(), p) for p, ops in spec["paths"].items() for m in ops)


def known_good(pid: str) -> dict[tuple[str, str], dict]:
    """Requests that must succeed (2xx) for every role allowed on them."""
    return {
        ("POST", "/v1/predictions"): {"json": {"records": [{"text": "fine", "label": "neutral"}]}},
        ("POST", "/v1/feedback"): {"json": {"records": [{"prediction_id": pid, "label": "neutral"}]}},
        ("POST", "/v1/tokens"): {"json": {"role": "ingest", "name": "matrix"}},
        ("DELETE", "/v1/tokens/{name}"): {},
        ("GET", "/v1/predictions"): {}, ("GET", "/v1/stats"): {}, ("GET", "/v1/tokens"): {},
        ("GET", "/v1/whoami"): {}, ("GET", "/v1/status"): {}, ("GET", "/metrics"): {},
        ("GET", "/healthz"): {}, ("GET", "/readyz"): {},
    }


def send(c: httpx.Client, method: str, url: str, headers: dict, kwargs: dict) -> httpx.Response:
    """One request; a dropped connection (uvicorn closes it after an unhandled error) counts as a 599."""
    try:
        return c.request(method, url, headers=headers, **kwargs)
    except httpx.TransportError as e:
        return httpx.Response(599, text=f"connection error: {e}")


def test_every_route_answers_401_403_or_success_exactly(module_server):
    srv = module_server
    pid = uuid.uuid4().hex
    assert httpx.post(srv.url + "/v1/predictions", headers=srv.headers("ingest"),
                      json={"records": [{"id": pid, "text": "x", "label": "neutral"}]}).status_code == 200
    good = known_good(pid)
    found = routes(srv)
    assert ("POST", "/v1/predictions") in found and ("GET", "/metrics") in found
    problems = []
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for method, path in found:
            need = required_role(method, path)
            url = concrete(path)
            kwargs = good.get((method, path), {})
            if need is not None:
                for label, headers in (("no token", {}), ("wrong token", {"Authorization": "Bearer tl_admin_nope"}),
                                       ("not bearer", {"Authorization": "Basic YWRtaW46YWRtaW4="})):
                    r = send(c, method, url, headers, kwargs)
                    if r.status_code != 401 or r.headers.get("www-authenticate") != "Bearer":
                        problems.append(f"{method} {path} with {label}: {r.status_code}")
            for role in ROLES:
                allowed = need is None or ROLE_RANK[role] >= ROLE_RANK[need]
                if allowed and (method, path) not in good and method != "GET":
                    continue  # may have side effects (start a retrain...): its denials are checked above
                r = send(c, method, url, srv.headers(role), kwargs)
                if not allowed and r.status_code != 403:
                    problems.append(f"{method} {path} as {role}: {r.status_code}, expected 403")
                elif allowed:
                    ok = 200 <= r.status_code < 300 if (method, path) in good else r.status_code not in (401, 403)
                    if not ok or r.status_code >= 500:
                        problems.append(f"{method} {path} as {role}: {r.status_code} {r.text[:200]}")
    assert not problems, "\n".join(problems)


def test_tokens_api_creates_lists_and_revokes(module_server):
    srv = module_server
    with srv.client("admin") as admin:
        name = f"bot-{uuid.uuid4().hex[:6]}"
        r = admin.post("/v1/tokens", json={"role": "label", "name": name})
        assert r.status_code == 201 and r.json()["role"] == "label"
        token = r.json()["token"]
        who = httpx.get(srv.url + "/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json()
        assert who == {"name": name, "role": "label"}  # usable at once
        listed = admin.get("/v1/tokens").json()
        assert any(t["name"] == name and t["revoked_at"] is None for t in listed)
        assert token not in str(listed)  # never the token itself
        assert admin.delete(f"/v1/tokens/{name}").json() == {"revoked": 1}
        assert httpx.get(srv.url + "/v1/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert admin.post("/v1/tokens", json={"role": "root"}).status_code == 422


def test_auth_disabled_acts_as_admin(tmp_path, running_server):
    srv = running_server(tmp_path, auth={"enabled": False})
    assert httpx.get(srv.url + "/v1/tokens").status_code == 200
    r = httpx.post(srv.url + "/v1/predictions", json={"records": [{"text": "x", "label": "neutral"}]})
    assert r.json() == {"accepted": 1, "duplicates": 0}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneloop.monitor.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_token_commands_go_through_the_running_server(tmp_path, running_server):
    srv = running_server(tmp_path)  # holds the database: the CLI cannot open it, only the API works
    config = str(srv.config_path)
    r = cli("--config", config, "token", "create", "--role", "ingest", "--name", "cli-bot",
            env={"TUNELOOP_TOKEN": srv.tokens["admin"]})
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    who = httpx.get(srv.url + "/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json()
    assert who == {"name": "cli-bot", "role": "ingest"}
    denied = cli("--config", config, "token", "create", "--role", "admin", env={"TUNELOOP_TOKEN": token})
    assert denied.returncode == 1 and "refused" in denied.stderr and "Traceback" not in denied.stderr
    revoked = cli("--config", config, "token", "revoke", "cli-bot", env={"TUNELOOP_TOKEN": srv.tokens["admin"]})
    assert revoked.stdout.strip() == "revoked 1 token(s)"


def test_first_serve_writes_its_admin_token_to_a_private_file_when_stdout_is_not_a_terminal(tmp_path):
    from conftest import free_port

    from tuneloop.monitor.cli import FIRST_TOKEN_FILE, _first_admin_token
    from tuneloop.monitor.storage import Store

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.monitor.cli", "--data-dir", str(tmp_path / "d"), "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TUNELOOP_EMBEDDER__ENABLED": "false"},
    )
    token_file = tmp_path / "d" / FIRST_TOKEN_FILE
    try:
        said, token = "", None
        deadline = time.monotonic() + 60
        while token is None and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line and proc.poll() is not None:
                break
            said += line
            if "tl_admin_" in line:
                break
            if str(token_file) in line:
                token = token_file.read_text().strip()
        assert "tl_admin_" not in said, "the admin token went to a log, not a terminal"
        assert token and token.startswith("tl_admin_"), said
        assert token_file.stat().st_mode & 0o777 == 0o600
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/whoami", headers={"Authorization": f"Bearer {token}"})
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r.json()["role"] == "admin"
    finally:
        proc.terminate()
        proc.wait(30)
    with Store(tmp_path / "d" / "tuneloop.duckdb") as store:
        assert _first_admin_token(store) is None  # a token exists now: the next start prints none


def test_on_a_terminal_the_first_admin_token_is_shown_and_no_file_is_written(tmp_path):
    import pty

    from tuneloop.monitor.cli import FIRST_TOKEN_FILE, announce_first_token

    leader, follower = pty.openpty()
    try:
        with open(follower, "w", closefd=False) as terminal:
            message = announce_first_token("tl_admin_secret", tmp_path, terminal)
    finally:
        os.close(leader)
        os.close(follower)
    assert "tl_admin_secret" in message
    assert not (tmp_path / FIRST_TOKEN_FILE).exists()
