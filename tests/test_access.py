"""Access control and hostile input at the edges: roles on every route, secrets, sizes, binds, paths.

* The role each route needs is declared here, as data (``ROLES``); a test enumerates the app's
  routes so a new route without a declared role fails, and the matrix checks every route with no
  token, bad tokens, a revoked token and each role: exactly 401 / 403 / allowed.
* Tokens never appear in logs (a DEBUG-level server log is grepped) nor in any answer after the one
  that created them (``token list``, every GET endpoint), nor do their hashes.
* The dashboard's API wrapper gets a 403 for what its token's role may not do and shows a banner.
* Bodies over ``server.max_body_bytes`` get 413 (declared or chunked); the default bind is loopback.
* Path inputs (version names, run / check / alert ids, backup names, stored report paths) cannot
  reach outside the data directory: ``../``, absolute and (double) URL-encoded forms are refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import psutil
import pytest
from conftest import free_port, start_server, toml_dumps
from fastapi.routing import APIRoute
from starlette.routing import Route

from tuneloop.monitor.auth import ROLE_RANK, create_token, revoke_token
from tuneloop.monitor.auth import ROLES as ROLE_ORDER
from tuneloop.monitor.config import Settings, load_settings
from tuneloop.monitor.storage import Store

PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"),
          ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")}
"""Routes anyone on the network may call (/metrics only while server.metrics_public)."""

ROLES: dict[tuple[str, str], str] = {
    ("POST", "/v1/predictions"): "ingest",
    ("POST", "/v1/predict"): "ingest",
    ("GET", "/v1/whoami"): "ingest",
    ("GET", "/v1/predictions"): "label",
    ("POST", "/v1/feedback"): "label",
    ("DELETE", "/v1/feedback/{feedback_id}"): "label",
    ("POST", "/v1/feedback/import"): "label",
    ("GET", "/v1/stats"): "label",
    ("GET", "/v1/serving"): "label",
    ("GET", "/v1/checks"): "label",
    ("GET", "/v1/checks/{check_id}/report"): "label",
    ("GET", "/v1/alerts"): "label",
    ("POST", "/v1/alerts/{alert_id}/ack"): "label",
    ("GET", "/v1/retrain/runs"): "label",
    ("GET", "/v1/retrain/runs/{run_id}"): "label",
    ("GET", "/v1/label-queue"): "label",
    ("GET", "/v1/label-queue/savings"): "label",
    ("GET", "/v1/status"): "label",
    ("GET", "/v1/projects"): "label",
    ("GET", "/v1/projects/{project}"): "label",
    ("GET", "/v1/models"): "label",
    ("GET", "/v1/models/{version}"): "label",
    ("GET", "/v1/tokens"): "admin",
    ("POST", "/v1/tokens"): "admin",
    ("DELETE", "/v1/tokens/{name}"): "admin",
    ("POST", "/v1/checks"): "admin",
    ("POST", "/v1/retrain"): "admin",
    ("POST", "/v1/retrain/runs/{run_id}/cancel"): "admin",
    ("POST", "/v1/projects"): "admin",
    ("POST", "/v1/projects/{project}/adopt"): "admin",
    ("POST", "/v1/reference/import"): "admin",
    ("POST", "/v1/models/{version}/register"): "admin",
    ("POST", "/v1/models/{version}/promote"): "admin",
    ("POST", "/v1/models/rollback"): "admin",
    ("POST", "/v1/admin/backup"): "admin",
    ("GET", "/v1/admin/backups"): "admin",
    ("POST", "/v1/admin/retention"): "admin",
    ("GET", "/v1/feedback/quality"): "label",
    ("POST", "/v1/datasets/preview"): "admin",
    ("POST", "/v1/datasets"): "admin",
    ("GET", "/v1/datasets"): "admin",
    ("GET", "/v1/datasets/{dataset_id}"): "admin",
    ("GET", "/v1/datasets/{dataset_id}/rows"): "admin",
    ("GET", "/v1/datasets/{dataset_id}/quality"): "admin",
    ("POST", "/v1/datasets/{dataset_id}/fixes"): "admin",
    ("POST", "/v1/datasets/{dataset_id}/train"): "admin",
    ("GET", "/v1/training/{run_id}"): "admin",
    ("GET", "/v1/models/{version}/evaluation"): "admin",
}
"""The least role each route needs (a higher role may do what a lower one may)."""

PATH_VALUES = {"feedback_id": "no-such-feedback", "check_id": "999999", "alert_id": "999999", "run_id": "999999",
               "project": "no-such-project", "version": "no-such-version", "name": "no-such-token",
               "dataset_id": "ds-000000000000"}


def app_routes(settings: Settings) -> set[tuple[str, str]]:
    """Every (method, path) the app routes, whether or not it is in the OpenAPI schema."""
    from tuneloop.monitor.api.app import create_app

    def walk(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
        out = set()
        for route in routes:
            if hasattr(route, "original_router"):  # an included router (newer FastAPI wraps them)
                out |= walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif isinstance(route, APIRoute | Route):
                out |= {(m, prefix + route.path) for m in (route.methods or set()) if m != "HEAD"}
        return out

    app = create_app(settings)
    routes = walk(app.routes)
    documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert documented <= routes, documented - routes
    return routes


def test_every_route_declares_its_role(tmp_path):
    routes = app_routes(load_settings(paths={"data_dir": str(tmp_path)}))
    undeclared = routes - PUBLIC - set(ROLES)
    assert not undeclared, f"routes without a declared role (add them to ROLES in {__file__}): {sorted(undeclared)}"
    assert not set(ROLES) - routes, f"ROLES names routes the app no longer has: {sorted(set(ROLES) - routes)}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("access"), server={"max_body_bytes": 64 * 1024})
    srv.tokens["revoked"] = create_token(srv.store, "admin", "revoked-admin")
    revoke_token(srv.store, "revoked-admin")
    yield srv
    srv.close()


def _call(http: httpx.Client, method: str, path: str, auth: str | None) -> httpx.Response:
    url = path.format(**PATH_VALUES)
    headers = {"Authorization": auth} if auth is not None else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return http.request(method, url, headers=headers, json=body)


def test_auth_matrix_over_every_route(server, figure):
    bad = {"none": None, "unknown": "Bearer tl_admin_not-a-real-token", "malformed": "Basic YWRtaW46YWRtaW4=",
           "empty": "Bearer", "revoked": f"Bearer {server.tokens['revoked']}",
           "hash-as-token": f"Bearer {hashlib.sha256(server.tokens['admin'].encode()).hexdigest()}"}
    checked = 0
    problems = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for (method, path), needed in sorted(ROLES.items()):
            for what, auth in bad.items():
                r = _call(http, method, path, auth)
                checked += 1
                if r.status_code != 401 or "detail" not in r.json():
                    problems.append(f"{method} {path} with {what} token: {r.status_code} {r.text[:120]}")
                elif r.headers.get("www-authenticate") != "Bearer":
                    problems.append(f"{method} {path} with {what} token: 401 without WWW-Authenticate: Bearer")
            for role in ROLE_ORDER:
                r = _call(http, method, path, f"Bearer {server.tokens[role]}")
                checked += 1
                allowed = ROLE_RANK[role] >= ROLE_RANK[needed]
                if allowed and r.status_code in (401, 403):
                    problems.append(f"{method} {path} as {role}: refused {r.status_code} (needs {needed})")
                if not allowed and r.status_code != 403:
                    problems.append(f"{method} {path} as {role}: {r.status_code}, expected 403 (needs {needed})")
                if r.status_code >= 500:
                    problems.append(f"{method} {path} as {role}: {r.status_code} {r.text[:120]}")
    figure("access: auth matrix", f"{checked} requests over {len(ROLES)} routes x (6 bad tokens + 3 roles)")
    assert not problems, "\n".join(problems)


def test_schema_declares_bearer_auth_and_405_names_the_allowed_methods(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        schema = http.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearerAuth"]
            ["description"]}
        for (method, path), _role in ROLES.items():
            op = schema["paths"][path][method.lower()]
            assert op["security"] == [{"bearerAuth": []}], (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)
        assert "security" not in schema["paths"]["/healthz"]["get"]
        for method, path, allow in [("PUT", "/v1/checks", "GET, POST"), ("DELETE", "/v1/models/rollback", "POST"),
                                    ("OPTIONS", "/v1/feedback/import", "POST"), ("PATCH", "/healthz", "GET")]:
            r = http.request(method, path, headers=server.headers("admin"))
            assert (r.status_code, r.headers.get("allow")) == (405, allow), (method, path)


def test_a_revoked_token_stops_working_at_once(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        admin = server.headers("admin")
        token = http.post("/v1/tokens", json={"role": "admin", "name": "short-lived"}, headers=admin).json()["token"]
        assert http.get("/v1/tokens", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert http.delete("/v1/tokens/short-lived", headers=admin).json() == {"revoked": 1}
        assert http.get("/v1/tokens", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_metrics_need_admin_when_not_public(tmp_path):
    srv = start_server(tmp_path, server={"metrics_public": False})
    try:
        with httpx.Client(base_url=srv.url) as http:
            assert http.get("/metrics").status_code == 401
            assert http.get("/metrics", headers=srv.headers("label")).status_code == 403
            assert http.get("/metrics", headers=srv.headers("admin")).status_code == 200
    finally:
        srv.close()


@pytest.mark.parametrize("path", ["/v1/predictions", "/v1/feedback", "/v1/predict", "/v1/tokens",
                                  "/v1/admin/backup", "/v1/projects", "/v1/feedback/import"])
def test_bodies_over_the_limit_get_413(server, path):
    limit = server.settings.server.max_body_bytes
    big = b'{"records": [' + b"1," * limit + b"1]}"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post(path, content=big, headers={**server.headers("admin"), "Content-Type": "application/json"})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit counts streamed bytes
            for i in range(0, len(big), 8192):
                yield big[i:i + 8192]

        r = http.post(path, content=chunks(), headers={**server.headers("admin"), "Content-Type": "application/json"})
        assert r.status_code == 413
        r = http.post(path, content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code in (401, 413)  # without a token: refused either way, never read whole
        assert http.get("/healthz").status_code == 200


# -- secrets: never logged, never shown twice ------------------------------------------------------


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """``tuneloop serve`` with a config that names no host (default bind) and DEBUG logging."""
    root = tmp_path_factory.mktemp("bare")
    port = free_port()
    config = root / "c.toml"
    config.write_text(toml_dumps({"paths": {"data_dir": str(root / "data")}, "server": {"port": port},
                                  "logging": {"level": "DEBUG"}, "embedder": {"enabled": False}}))
    settings = load_settings(config)
    with Store(settings.db_path) as store:
        tokens = {role: create_token(store, role, f"bare-{role}") for role in ROLE_ORDER}
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tuneloop.monitor.cli", "--config", str(config), "serve"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield {"url": url, "proc": proc, "tokens": tokens, "log": log_path, "config": config, "port": port}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_default_bind_is_loopback(bare_server):
    assert Settings().server.host == "127.0.0.1" and Settings().dashboard.host == "127.0.0.1"
    first = bare_server["log"].read_text().splitlines()[0]
    assert first.startswith(f"tuneloop serving on http://127.0.0.1:{bare_server['port']}"), first
    listening = [c.laddr for c in psutil.Process(bare_server["proc"].pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(a.ip == "127.0.0.1" for a in listening), listening


def test_tokens_are_never_logged_nor_shown_again(bare_server):
    url, tokens = bare_server["url"], dict(bare_server["tokens"])
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        created = http.post("/v1/tokens", json={"role": "label", "name": "made-over-http"}, headers=admin)
        assert created.status_code == 201
        tokens["created"] = created.json()["token"]
        for token in tokens.values():  # every token used, right and wrong
            for path in ("/v1/whoami", "/v1/status", "/v1/tokens", "/v1/models/../../etc"):
                http.get(path, headers={"Authorization": f"Bearer {token}"})
            http.get("/v1/status", headers={"Authorization": f"Bearer {token}x"})
            http.get("/v1/status", headers={"Authorization": token})
        http.post("/v1/predictions", headers=admin, content=b"{not json")
        listed = http.get("/v1/tokens", headers=admin).json()
        assert listed and all(set(t) == {"name", "role", "created_at", "revoked_at"} for t in listed)
        answers = [http.get(path.format(**PATH_VALUES), headers=admin).text
                   for (method, path) in ROLES if method == "GET"]
        answers.append(http.get("/metrics").text)
        assert http.delete("/v1/tokens/made-over-http", headers=admin).json() == {"revoked": 1}
    cli = subprocess.run([sys.executable, "-m", "tuneloop.monitor.cli", "--config", str(bare_server["config"]),
                          "token", "list"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TUNELOOP_TOKEN": tokens["admin"]})
    assert cli.returncode == 0 and "made-over-http" in cli.stdout, cli.stderr
    time.sleep(0.5)
    secrets = {**tokens, **{f"sha256({k})": hashlib.sha256(v.encode()).hexdigest() for k, v in tokens.items()}}
    log = bare_server["log"].read_text(errors="replace")
    assert "DEBUG" in log or "INFO" in log, "the server log is empty: nothing was checked"
    for where, text in [("server log", log), ("token list", cli.stdout + cli.stderr), *(("GET answer", a)
                                                                                       for a in answers)]:
        leaked = [name for name, secret in secrets.items() if secret in text]
        assert not leaked, f"{leaked} found in the {where}"
    assert not re.search(r"\btl_(ingest|label|admin)_[A-Za-z0-9_-]{20,}", log), "something token-shaped was logged"


def test_label_role_never_sees_a_webhook_url_and_admin_sees_it_redacted(tmp_path):
    secret_path = "/services/T0001/B0001/WEBHOOKSECRET"
    hooks = [f"http://127.0.0.1:9{secret_path}", {"url": f"http://127.0.0.1:9{secret_path}2", "format": "slack"}]
    srv = start_server(tmp_path, drift={"webhooks": hooks})
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            answers = {role: {path: http.get(path.format(**{**PATH_VALUES, "project": "default"}),
                                             headers=srv.headers(role))
                              for (method, path) in ROLES if method == "GET"}
                       for role in ("label", "admin")}
        for role, by_path in answers.items():
            for path, r in by_path.items():
                assert "WEBHOOKSECRET" not in r.text and "T0001" not in r.text, f"{role} {path} shows a webhook URL"
        label_view = answers["label"]["/v1/projects/{project}"].json()["drift"]
        assert "webhooks" not in label_view
        admin_view = answers["admin"]["/v1/projects/{project}"].json()["drift"]["webhooks"]
        assert [w["format"] for w in admin_view] == ["json", "slack"]
        assert all(w["url"].startswith("http://127.0.0.1:9/") for w in admin_view)
    finally:
        srv.close()


# -- the dashboard acts only within its token's role ------------------------------------------------


def _banner_app(url: str, token: str) -> None:
    import streamlit as st

    from tuneloop.dashboard import ui
    from tuneloop.dashboard.api import Api

    api = Api(url, token)
    st.session_state["result"] = ui.call(lambda: api.promote("v1", reason="not allowed"), "promote v1")
    st.session_state["retrain"] = ui.call(lambda: api.retrain("not allowed"), "retrain")


def test_dashboard_cannot_act_beyond_its_role(server):
    from streamlit.testing.v1 import AppTest

    from tuneloop.dashboard.api import Api, ApiError

    api = Api(server.url, server.tokens["label"])
    for action in (lambda: api.promote("v1"), lambda: api.rollback(), lambda: api.retrain(), api.run_checks,
                   lambda: api.cancel_run(1)):
        with pytest.raises(ApiError) as e:
            action()
        assert e.value.kind == "forbidden" and e.value.status == 403, e.value
    api.close()
    at = AppTest.from_function(_banner_app, args=(server.url, server.tokens["label"]), default_timeout=60).run()
    assert not at.exception, [x.value for x in at.exception]
    assert at.session_state["result"] is None and at.session_state["retrain"] is None
    banners = [e.value for e in at.error]
    assert len(banners) == 2 and all("Role too low" in b and "admin" in b for b in banners), banners


# -- path inputs stay inside the data directory ----------------------------------------------------

ESCAPES = ["..", "../..", "../../../../etc/passwd", "..%2F..%2Fsecret.txt", "%2e%2e%2f%2e%2e%2fsecret.txt",
           "%252e%252e%252fsecret.txt", "..%5c..%5csecret.txt", "..\\..\\secret.txt", "%2Fetc%2Fpasswd",
           "/etc/passwd", ".%00.", "v1%00..%2f", "....//....//secret.txt", "%c0%ae%c0%ae%2fsecret.txt"]


KEY_TEMPLATES = {"/v1/feedback/{x}", "/v1/tokens/{x}"}
"""Database keys, not paths: an odd name may simply match nothing."""


def raw_request(port: int, method: str, target: str, headers: dict[str, str],
                body: bytes = b"") -> tuple[int, dict[str, str], str]:
    """One HTTP/1.1 request with the target sent byte for byte (clients normalise ``..``; attackers do not)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", f"Content-Length: {len(body)}",
             "Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    location = answer_headers.get("location", "")
    if location.startswith("http"):  # keep only the target
        answer_headers["location"] = "/" + location.split("/", 3)[3]
    return int(status_line.split()[1]), answer_headers, payload.decode("utf-8", "replace")


def test_path_inputs_cannot_escape_the_data_directory(server, figure):
    data_dir = server.settings.data_dir
    secret = "SECRET-" + os.urandom(8).hex()
    (data_dir.parent / "secret.txt").write_text(secret)
    (data_dir.parent / "secret.html").write_text(secret)
    port = server.settings.server.port
    auth = {"Authorization": f"Bearer {server.tokens['admin']}"}
    targets = []
    for escape in ESCAPES:
        for template in ("/v1/models/{x}", "/v1/models/{x}/register", "/v1/models/{x}/promote",
                         "/v1/checks/{x}/report", "/v1/retrain/runs/{x}", "/v1/retrain/runs/{x}/cancel",
                         "/v1/alerts/{x}/ack", "/v1/feedback/{x}", "/v1/projects/{x}", "/v1/projects/{x}/adopt",
                         "/v1/tokens/{x}", "/v1/predictions?project={x}", "/v1/stats?project={x}"):
            method = "POST" if template.endswith(("register", "promote", "cancel", "ack", "adopt")) else "GET"
            if template in ("/v1/feedback/{x}", "/v1/tokens/{x}"):
                method = "DELETE"
            targets.append((method, template.replace("{x}", escape), template in KEY_TEMPLATES))
    problems = []
    for method, target, is_key in targets:
        status, headers, body = raw_request(port, method, target, auth, b"{}" if method == "POST" else b"")
        if status in (307, 308):  # a trailing (encoded) slash: follow once, the answer must then refuse
            status, headers, body = raw_request(port, method, headers["location"], auth,
                                                b"{}" if method == "POST" else b"")
        refused = 400 <= status < 500 or (is_key and status == 200)  # a name that matches nothing is no escape
        if not refused or secret in body or "root:" in body:
            problems.append(f"{method} {target}: {status} {body[:120]}")
    # names that become file names, in JSON bodies
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        for escape in ESCAPES:
            for path, body in (("/v1/admin/backup", {"name": escape}), ("/v1/projects", {"project": escape,
                                                                                         "labels": ["a", "b"]}),
                               ("/v1/models/v1/register", {"parent": escape})):
                r = http.post(path, json=body)
                targets.append(("POST", f"{path} {body}", False))
                if r.status_code != 422:
                    problems.append(f"POST {path} {body}: {r.status_code} {r.text[:120]}")
        # a report path in the database pointing outside the reports directory is not served
        server.store.execute("INSERT INTO drift_checks (id, project, ts, metric, drifted, report_path) VALUES "
                             "(424242, 'default', now(), 'x', false, '../../secret.html')")
        r = http.get("/v1/checks/424242/report")
        if r.status_code != 404 or secret in r.text:
            problems.append(f"stored report path outside reports_dir: {r.status_code} {r.text[:120]}")
    # every backup the escapes asked for was refused: the only ones are default-named (the auth matrix's)
    made = sorted(p.name for p in (data_dir / "backups").iterdir()) if (data_dir / "backups").exists() else []
    assert all(re.fullmatch(r"backup-\d{8}-\d{6}", name) for name in made), made
    assert not any(p.name.startswith("escape") for p in data_dir.parent.iterdir())
    figure("access: path traversal attempts refused", f"{len(targets)} requests")
    assert not problems, "\n".join(problems)
    shutil.rmtree(data_dir / "backups", ignore_errors=True)
