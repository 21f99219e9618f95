"""Running tuneloop: ``init``, ``serve``, ``status``, ``dashboard``, ``up``, ``demo``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.monitor.cli.backend import NO_DB_HINT, connect, local
from tuneloop.monitor.cli.common import ProjectOpt, fail, options, print_json, settings
from tuneloop.monitor.config import Settings

FIRST_TOKEN_FILE = "admin-token"


def init() -> None:
    """Create the data directory and the database (migrations applied)."""
    s = settings()
    with local(s) as db:
        version = db.store.schema_version()
    for d in (s.models_dir, s.reports_dir, s.runs_dir):
        d.mkdir(parents=True, exist_ok=True)
    typer.echo(f"initialised {s.db_path} (schema version {version})")


def serve(
    host: Annotated[str | None, typer.Option(help="Overrides server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides server.port.")] = None,
) -> None:
    """Run the HTTP server (collector, serving, drift checks, retrain scheduler)."""
    import uvicorn

    from tuneloop.monitor.api.app import create_app
    from tuneloop.monitor.config import redact_password
    from tuneloop.monitor.runtime import open_store
    from tuneloop.monitor.storage import StoreError

    s = settings()
    s.server.host = host or s.server.host
    s.server.port = s.server.port if port is None else port
    try:
        store = open_store(s)
    except StoreError as e:
        fail(str(e))
    with store:
        where = redact_password(s.store.url) if s.store.url else s.db_path
        typer.echo(f"tuneloop serving on http://{s.server.host}:{s.server.port}  (db {where})")
        typer.echo(f"  API docs: http://{s.server.host}:{s.server.port}/docs")
        first_token = _first_admin_token(store) if s.auth.enabled else None
        if first_token:
            typer.echo(announce_first_token(first_token, s.data_dir, sys.stdout))
        uvicorn.run(create_app(s, store=store), host=s.server.host, port=s.server.port,
                    log_level=s.logging.level.lower(), access_log=False)


def status(project: ProjectOpt = "default") -> None:
    """Rows, versions and latest checks (through the server when one runs)."""
    with connect(settings(), missing_db=NO_DB_HINT) as backend:
        print_json(backend.status(project))


def announce_first_token(token: str, data_dir: Path, stream: Any) -> str:
    """The message announcing a new first admin token. On a terminal it shows the token; otherwise
    (stdout is a log file or a pipe) the token goes to a file only its owner can read, and the
    message says where, so it never ends up in logs."""
    if stream.isatty():
        return f"  no API token existed, so one was created (role admin), shown only now:\n  {token}"
    path = data_dir / FIRST_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return (f"  no API token existed, so one was created (role admin); it is in {path} (mode 0600, "
            "readable by this user only): read it, then delete the file")


def _first_admin_token(store) -> str | None:  # type: ignore[no-untyped-def]
    """An admin token when the database has no active token yet (first start), else None."""
    from tuneloop.monitor.auth import create_token

    if store.tokens.count_live():
        return None
    return create_token(store, "admin", "admin")


def demo(
    headless: Annotated[bool, typer.Option(help="Run without the dashboard.")] = False,
    fast: Annotated[bool, typer.Option(help="A shrunken scenario (for tests).")] = False,
    start_topic: Annotated[str, typer.Option(help="Topic v1 is trained on and traffic starts with.")] = "airline",
    shift_to: Annotated[str, typer.Option(help="Comma-separated topics traffic shifts to ('' = all others).")] = "",
    rate: Annotated[float | None, typer.Option(help="Texts per second sent to /v1/predict.")] = None,
    label_rate: Annotated[float | None, typer.Option(help="Labels per second by the simulated annotator.")] = None,
    label_budget: Annotated[int | None, typer.Option(help="Labels the annotator may spend.")] = None,
    oracle: Annotated[bool, typer.Option(help="Train the all-labels oracle for the report.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for splits and sampling.")] = 0,
) -> None:
    """Run the whole loop on a real drifting tweet stream and watch it on the dashboard."""
    from tuneloop.monitor.demo import DemoPlan, run_demo

    if options.get("data_dir") is None:
        options["data_dir"] = Path("tuneloop-demo")
    s = settings()
    plan = DemoPlan.fast() if fast else DemoPlan()
    plan.start_topic, plan.seed, plan.oracle, plan.dashboard = start_topic, seed, oracle, not headless
    plan.shift_topics = [t.strip() for t in shift_to.split(",") if t.strip()] or None
    for name, value in (("rate", rate), ("label_rate", label_rate), ("label_budget", label_budget)):
        if value is not None:
            setattr(plan, name, value)
    try:
        run_demo(s, plan, say=typer.echo)
    except Exception as e:  # the demo is for people: one readable line, details in the log
        import logging

        logging.getLogger("tuneloop").exception("demo failed")
        fail(f"demo failed: {e}")


def _dashboard_env(s: Settings, server_url: str, token: str | None = None) -> dict[str, str]:
    from tuneloop.dashboard.launch import dashboard_env

    env = dashboard_env(server_url, token or s.dashboard.token or os.environ.get("TUNELOOP_TOKEN"),
                        options.get("config"))
    if options.get("data_dir") is not None:
        env["TUNELOOP_PATHS__DATA_DIR"] = str(Path(options["data_dir"]).resolve())
    return env


def dashboard(
    host: Annotated[str | None, typer.Option(help="Overrides dashboard.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides dashboard.port.")] = None,
    server_url: Annotated[str | None, typer.Option(help="Overrides dashboard.server_url.")] = None,
) -> None:
    """Run the Streamlit dashboard against a running server (it only talks to the server's HTTP API)."""
    from tuneloop.dashboard.launch import run_dashboard

    s = settings()
    host = host or s.dashboard.host
    port = s.dashboard.port if port is None else port
    url = server_url or s.server_url
    typer.echo(f"tuneloop dashboard on http://{host}:{port}  (server {url})")
    raise typer.Exit(run_dashboard(host, port, _dashboard_env(s, url)))


def up(
    port: Annotated[int | None, typer.Option(help="Server port (overrides server.port).")] = None,
    dashboard_port: Annotated[int | None, typer.Option(help="Dashboard port (overrides dashboard.port).")] = None,
) -> None:
    """Start the server and the dashboard together and print both URLs; Ctrl-C stops both.

    Without a configured dashboard token (and with auth on), a token with role admin named after
    you is created for the dashboard and revoked when ``up`` stops.
    """
    import getpass

    from tuneloop.dashboard.launch import run_together, server_command

    s = settings()
    if port is not None:
        s.server.port = port
    server_url = f"http://{s.server.host}:{s.server.port}"
    token = s.dashboard.token or os.environ.get("TUNELOOP_TOKEN")
    session_token = None
    if s.auth.enabled and not token:
        session_token = f"{getpass.getuser()} (tuneloop up)"
        with local(s) as db:
            token = db.create_token("admin", session_token)
    cmd = server_command(options.get("config"), options.get("data_dir"), s.server.host, s.server.port)
    code = run_together(cmd, server_url, s.dashboard.host,
                        s.dashboard.port if dashboard_port is None else dashboard_port,
                        _dashboard_env(s, server_url, token), echo=typer.echo)
    if session_token is not None:
        with local(s) as db:
            db.revoke_token(session_token)
    raise typer.Exit(code)
