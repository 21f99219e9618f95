"""The ``tuneloop`` command line: thin commands over the library (sqlite-utils style).

Global options (``--config``, ``--data-dir``) come before the command:
``tuneloop --config my.toml serve``. Every command also reads ``TUNELOOP_*`` variables.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.monitor.config import ConfigError, Settings, load_settings

app = typer.Typer(
    name="tuneloop",
    help="Continuous monitoring and feedback loop for fine-tuned text models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")

_options: dict[str, Any] = {}

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (see configs/default.toml).")
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Overrides paths.data_dir.")]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Monitored project (model).")]


@app.callback()
def main(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """tuneloop: collect → detect → label → retrain → gate → hot-swap."""
    _options["config"] = config
    _options["data_dir"] = data_dir


def fail(message: str, code: int = 1) -> None:
    """Print one clear line to stderr and exit (no traceback)."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def settings() -> Settings:
    """Settings from --config, --data-dir and the environment; a bad value exits with one line."""
    overrides: dict[str, dict[str, Any]] = {}
    if _options.get("data_dir") is not None:
        overrides["paths"] = {"data_dir": _options["data_dir"]}
    try:
        s = load_settings(_options.get("config"), **overrides)
    except ConfigError as e:
        fail(str(e), 2)
    from tuneloop.monitor.log import setup_logging

    setup_logging(s.logging.level, s.logging.json_format)
    return s


def open_store(s: Settings, read_only: bool = False):  # type: ignore[no-untyped-def]
    """Open the DB directly (only when no server owns it); clear message otherwise."""
    from tuneloop.monitor.store import Store, StoreError

    try:
        return Store(s.db_path, read_only=read_only)
    except StoreError as e:
        fail(str(e))


def api_client(s: Settings, token: str | None = None):  # type: ignore[no-untyped-def]
    """An httpx client for a running server, or None when none answers."""
    import httpx

    token = token or os.environ.get("TUNELOOP_TOKEN") or s.dashboard.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(base_url=s.server_url, headers=headers, timeout=30)
    try:
        client.get("/healthz", timeout=1.0).raise_for_status()
    except httpx.HTTPError:
        client.close()
        return None
    return client


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@app.command()
def init() -> None:
    """Create the data directory and the database (migrations applied)."""
    s = settings()
    store = open_store(s)
    version = store.schema_version()
    store.close()
    for d in (s.models_dir, s.reports_dir, s.runs_dir):
        d.mkdir(parents=True, exist_ok=True)
    typer.echo(f"initialised {s.db_path} (schema version {version})")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides server.port.")] = None,
) -> None:
    """Run the HTTP server (collector, serving, drift checks, retrain scheduler)."""
    import uvicorn

    s = settings()
    if host:
        s.server.host = host
    if port is not None:
        s.server.port = port
    from tuneloop.monitor.app import create_app
    from tuneloop.monitor.store import Store, StoreError

    try:
        store = Store(s.db_path)
    except StoreError as e:
        fail(str(e))
    typer.echo(f"tuneloop serving on http://{s.server.host}:{s.server.port}  (db {s.db_path})")
    typer.echo(f"  API docs: http://{s.server.host}:{s.server.port}/docs")
    try:
        uvicorn.run(create_app(s, store=store), host=s.server.host, port=s.server.port,
                    log_level=s.logging.level.lower(), access_log=False)
    finally:
        store.close()


@app.command()
def status(project: ProjectOpt = "default") -> None:
    """Rows, versions and latest checks (through the server when one runs)."""
    s = settings()
    client = api_client(s)
    if client is not None:
        r = client.get("/v1/status", params={"project": project})
        if r.status_code != 200:
            fail(f"server at {s.server_url} answered {r.status_code}: {r.json().get('detail')}")
        print_json(r.json())
        return
    if not s.db_path.exists():
        fail(f"no database at {s.db_path}; run `tuneloop init` first")
    from tuneloop.monitor.status import status_summary

    store = open_store(s, read_only=True)
    print_json(status_summary(store, project))
    store.close()


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="ingest | label | admin")],
    name: Annotated[str, typer.Option(help="A name to recognise the token by.")] = "",
) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    from tuneloop.monitor.auth import ROLES, create_token

    if role not in ROLES:
        fail(f"unknown role {role!r}; choose one of {', '.join(ROLES)}", 2)
    s = settings()
    store = open_store(s)
    token = create_token(store, role, name)
    store.close()
    typer.echo(token)


@token_app.command("list")
def token_list() -> None:
    """Token names and roles (never the tokens)."""
    from tuneloop.monitor.auth import list_tokens

    store = open_store(settings(), read_only=True)
    print_json(list_tokens(store))
    store.close()


@token_app.command("revoke")
def token_revoke(name: str) -> None:
    """Revoke every active token with this name."""
    from tuneloop.monitor.auth import revoke_token

    store = open_store(settings())
    n = revoke_token(store, name)
    store.close()
    typer.echo(f"revoked {n} token(s)")


@app.command()
def demo(
    headless: Annotated[bool, typer.Option(help="Run without the dashboard.")] = False,
    fast: Annotated[bool, typer.Option(help="A shrunken scenario (for tests).")] = False,
) -> None:
    """Run the whole loop on a real drifting tweet stream and watch it on the dashboard."""
    if _options.get("data_dir") is None:
        _options["data_dir"] = Path("tuneloop-demo")
    s = settings()
    from tuneloop.monitor.auth import create_token

    store = open_store(s)
    tokens = {role: create_token(store, role, f"demo-{role}") for role in ("ingest", "label", "admin")}
    store.close()
    typer.echo(f"dashboard/API: http://{s.server.host}:{s.server.port}/docs")
    for role, token in tokens.items():
        typer.echo(f"  {role:6s} token: {token}")
    serve()


def run() -> None:  # pragma: no cover - console entry for `python -m`
    app(prog_name="tuneloop")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
