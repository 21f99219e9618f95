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
from urllib.parse import quote

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
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the full rows as JSON instead of a table.")]
"""The one --json option of every listing command."""


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"tuneloop {version('tuneloop')}")
        except PackageNotFoundError:
            typer.echo("tuneloop (not installed as a package)")
        raise typer.Exit()


@app.callback()
def main(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """tuneloop: collect → detect → label → retrain → gate → hot-swap."""
    _options["config"] = config
    _options["data_dir"] = data_dir


def fail(message: str, code: int = 1) -> None:
    """Print one clear line to stderr and exit (no traceback)."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _cli_overrides() -> dict[str, dict[str, Any]]:
    return {"paths": {"data_dir": _options["data_dir"]}} if _options.get("data_dir") is not None else {}


def settings() -> Settings:
    """Settings from --config, --data-dir and the environment; a bad value exits with one line."""
    overrides = _cli_overrides()
    try:
        s = load_settings(_options.get("config"), **overrides)
    except ConfigError as e:
        fail(str(e), 2)
    from tuneloop.monitor.log import setup_logging

    setup_logging(s.logging.level, s.logging.json_format)
    return s


def open_store(s: Settings, read_only: bool = False):  # type: ignore[no-untyped-def]
    """Open the DB directly (only when no server owns it); clear message otherwise."""
    from tuneloop.monitor.storage import Store, StoreError

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
    from tuneloop.monitor.storage import Store, StoreError

    try:
        store = Store(s.db_path)
    except StoreError as e:
        fail(str(e))
    typer.echo(f"tuneloop serving on http://{s.server.host}:{s.server.port}  (db {s.db_path})")
    typer.echo(f"  API docs: http://{s.server.host}:{s.server.port}/docs")
    first_token = _first_admin_token(store) if s.auth.enabled else None
    if first_token:
        typer.echo(announce_first_token(first_token, s.data_dir, sys.stdout))
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


FIRST_TOKEN_FILE = "admin-token"


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

    if int(store.query("SELECT count(*) AS n FROM tokens WHERE revoked_at IS NULL")["n"][0]):
        return None
    return create_token(store, "admin", "admin")


def _api_or_fail(client, method: str, path: str, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
    """Call the running server (admin token from TUNELOOP_TOKEN or dashboard.token); one-line errors."""
    r = client.request(method, path, **kwargs)
    if r.status_code in (401, 403):
        fail(f"the running server at {client.base_url} refused: {r.json().get('detail')} "
             "(set TUNELOOP_TOKEN to an admin token)")
    if r.status_code >= 400:
        fail(f"the running server at {client.base_url} answered {r.status_code}: {r.json().get('detail')}")
    return r.json()


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="ingest | label | admin")],
    name: Annotated[str, typer.Option(help="A name to recognise the token by.")] = "",
) -> None:
    """Create a token; it is printed once and stored only as a hash (through the server when one runs)."""
    from tuneloop.monitor.auth import ROLES, create_token

    if role not in ROLES:
        fail(f"unknown role {role!r}; choose one of {', '.join(ROLES)}", 2)
    s = settings()
    client = api_client(s)
    if client is not None:
        typer.echo(_api_or_fail(client, "POST", "/v1/tokens", json={"role": role, "name": name})["token"])
        return
    store = open_store(s)
    token = create_token(store, role, name)
    store.close()
    typer.echo(token)


@token_app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """Token names and roles (never the tokens)."""
    from tuneloop.monitor.auth import list_tokens

    s = settings()
    client = api_client(s)
    if client is not None:
        items = _api_or_fail(client, "GET", "/v1/tokens")
    else:
        store = open_store(s, read_only=True)
        items = list_tokens(store)
        store.close()
    if as_json:
        print_json(items)
        return
    typer.echo(f"{'name':<32}{'role':<8}{'created_at':<21}revoked_at")
    for t in items:
        typer.echo(f"{t['name']:<32}{t['role']:<8}{str(t['created_at'])[:19]:<21}{str(t['revoked_at'] or '-')[:19]}")


@token_app.command("revoke")
def token_revoke(name: str) -> None:
    """Revoke every active token with this name."""
    from tuneloop.monitor.auth import revoke_token

    s = settings()
    client = api_client(s)
    if client is not None:
        n = _api_or_fail(client, "DELETE", f"/v1/tokens/{quote(name, safe='')}")["revoked"]
    else:
        store = open_store(s)
        n = revoke_token(store, name)
        store.close()
    typer.echo(f"revoked {n} token(s)")


@app.command()
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

    if _options.get("data_dir") is None:
        _options["data_dir"] = Path("tuneloop-demo")
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


# -- model versions ---------------------------------------------------------------------------------

models_app = typer.Typer(help="List, inspect, promote and roll back model versions.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def api_call(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the running server; a 4xx/5xx answer exits with the server's message."""
    r = client.request(method, path, **kwargs)
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text
        hint = " (set TUNELOOP_TOKEN to a token with the needed role)" if r.status_code in (401, 403) else ""
        fail(f"server at {client.base_url} answered {r.status_code}: {detail}{hint}")
    return r.json()


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Labelled CSV/TSV/Parquet with columns text and label.")],
    labels: Annotated[str | None, typer.Option(help="Comma-separated label set (default: project.labels).")] = None,
    from_version: Annotated[str | None, typer.Option("--from", help="Continue this version's adapter.")] = None,
    promote: Annotated[bool, typer.Option(help="Make the new version the champion (hot-swapped).")] = False,
    version: Annotated[str | None, typer.Option(help="Name of the new version (default: next vN).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Overrides model.epochs.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote as the project's first champion even a model "
                                        "that does not beat the simple baselines.")] = False,
    project: ProjectOpt = "default",
) -> None:
    """Train a model version, write it under models_dir and register it (through the server when one runs).

    Prints the model beside the simple baselines fitted on the same split. A model that does not beat the
    best of them is still registered, but becomes a project's first champion only with ``--force``.
    """
    from tuneloop.monitor import registry
    from tuneloop.retrain.baselines import baseline_table
    from tuneloop.retrain.trainer import read_labelled

    s = settings()
    if epochs is not None:
        s.model.epochs = epochs
    label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    try:
        df = read_labelled(data)
        from tuneloop.retrain.quality import summary_lines

        for line in summary_lines(data_report(df, label_list, s)):
            typer.echo(f"data check: {line}", err=True)
        trained = registry.train_version(s, df, label_list, version=version, from_version=from_version,
                                         progress=sys.stderr.isatty(), log=lambda m: typer.echo(m, err=True))
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        fail(str(e))
    m = trained.metrics
    typer.echo(f"trained {trained.version} in {trained.path}: val_accuracy {m.get('val_accuracy', 0):.3f} "
               f"val_macro_f1 {m.get('val_macro_f1', 0):.3f}")
    if "baselines" in m:
        typer.echo("validation, same split:")
        for line in baseline_table({"accuracy": m["val_accuracy"], "macro_f1": m["val_macro_f1"]}, m["baselines"]):
            typer.echo(line)
        typer.echo(m["baseline_verdict"])
    guard = promote and not force and m.get("beats_baselines") is False

    def refuse_first_promotion(promotions: list[Any]) -> None:
        if guard and not promotions:
            fail(f"not promoting {trained.version} (registered as a challenger): it does not beat the best simple "
                 "baseline and would be the project's first champion; pass --force to promote it anyway")

    client = api_client(s)
    if client is not None:
        row = api_call(client, "POST", f"/v1/models/{trained.version}/register", params={"project": project})
        if promote:
            refuse_first_promotion(api_call(client, "GET", "/v1/models", params={"project": project})["promotions"])
            api_call(client, "POST", f"/v1/models/{trained.version}/promote", params={"project": project},
                     json={"reason": "tuneloop train --promote"})
        typer.echo(f"registered {trained.version} with the server at {s.server_url}"
                   + (" and promoted it (now serving)" if promote else f" as {row['status']}"))
        return
    store = open_store(s)
    try:
        registry.register_dir(store, project, s.models_dir, trained.version)
        if promote:
            refuse_first_promotion(registry.promotions(store, project))
            registry.promote(store, project, trained.version, actor="cli", reason="tuneloop train --promote")
    finally:
        store.close()
    typer.echo(f"registered {trained.version} in {s.db_path}" + (" as champion" if promote else " as challenger"))


data_app = typer.Typer(help="Check a labelled file before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def data_report(df: Any, labels: list[str] | None, s: Settings, embed: bool = True) -> dict[str, Any]:
    """The data-quality report of ``df`` (text, label); with ``embed`` the encoder-based checks too."""
    from tuneloop.retrain.quality import quality_report

    encoder = None
    if embed:
        from tuneloop.retrain.encoder import Encoder

        encoder = Encoder(s.embedder.base or s.model.base, s.model.max_length)
    return quality_report(df, labels, embed=encoder.encode if encoder else None,
                          tokenizer=encoder.tokenizer if encoder else None, max_tokens=s.model.max_length)


@data_app.command("check")
def data_check(
    file: Annotated[Path, typer.Argument(help="Labelled CSV, TSV, Parquet or JSONL file.")],
    text_column: Annotated[str | None, typer.Option(help="Text column (default: guessed).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column (default: guessed).")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated label set (default: as found).")] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of CSV/TSV/JSONL.")] = "utf-8",
    embed: Annotated[bool, typer.Option(help="Run the encoder-based checks (near duplicates, label errors).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
) -> None:
    """Data-quality report of a labelled file: balance, lengths, duplicates, charset, suspected label errors."""
    from tuneloop.monitor.datasets import DatasetError, detect_format, parse, validate

    s = settings()
    label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    try:
        if not file.is_file():
            raise DatasetError(f"{file}: no such file")
        rows, found = validate(parse(file.read_bytes(), detect_format(file.name), encoding), text_column,
                               label_column, label_list)
    except DatasetError as e:
        fail("; ".join([str(e), *(f"row {x.get('row', x.get('line'))}: {x['error']}" for x in e.errors[:10])]))
    report = data_report(rows, found, s, embed)
    if as_json:
        print_json(report)
        return
    from tuneloop.retrain.quality import summary_lines

    for line in summary_lines(report):
        typer.echo(line)


def _models_offline(s: Settings, write: bool = False):  # type: ignore[no-untyped-def]
    if not s.db_path.exists():
        fail(f"no database at {s.db_path}; run `tuneloop init` first")
    return open_store(s, read_only=not write)


@models_app.command("list")
def models_list(
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Versions with status and validation metrics."""
    from tuneloop.monitor import registry

    s = settings()
    client = api_client(s)
    if client is not None:
        items = api_call(client, "GET", "/v1/models", params={"project": project})["items"]
    else:
        store = _models_offline(s)
        items = registry.list_versions(store, project)
        store.close()
    if as_json:
        print_json(items)
        return
    if not items:
        typer.echo(f"no model versions for project {project}; train one with tuneloop train")
        return
    typer.echo(f"{'version':<12}{'status':<12}{'created_at':<21}{'parent':<10}{'val_acc':>8}{'val_f1':>8}")
    for r in items:
        m = r.get("metrics") or {}
        acc, f1 = m.get("val_accuracy"), m.get("val_macro_f1")
        typer.echo(f"{r['version']:<12}{r['status']:<12}{str(r['created_at'])[:19]:<21}{r['parent'] or '-':<10}"
                   f"{'-' if acc is None else f'{acc:.3f}':>8}{'-' if f1 is None else f'{f1:.3f}':>8}")


@models_app.command("show")
def models_show(version: str, project: ProjectOpt = "default") -> None:
    """One version: registry row, metrics and promotion history (JSON)."""
    from tuneloop.monitor import registry

    s = settings()
    client = api_client(s)
    if client is not None:
        print_json(api_call(client, "GET", f"/v1/models/{version}", params={"project": project}))
        return
    store = _models_offline(s)
    try:
        row = registry.get_version(store, project, version)
        history = registry.promotions(store, project, version=version)
    except (LookupError, ValueError) as e:
        fail(str(e))
    finally:
        store.close()
    print_json({**row, "promotions": history})


@models_app.command("promote")
def models_promote(
    version: str,
    reason: Annotated[str | None, typer.Option(help="Recorded in the promotion history.")] = None,
    force: Annotated[bool, typer.Option(help="Promote even a rejected version.")] = False,
    project: ProjectOpt = "default",
) -> None:
    """Make VERSION the champion (a running server hot-swaps to it)."""
    from tuneloop.monitor import registry

    s = settings()
    client = api_client(s)
    if client is not None:
        out = api_call(client, "POST", f"/v1/models/{version}/promote", params={"project": project},
                       json={"reason": reason, "force": force})
        typer.echo(f"champion of {project}: {out['champion']['version']} (was {out['previous'] or 'none'}); "
                   f"serving {out['serving']}")
        return
    store = _models_offline(s, write=True)
    try:
        row = registry.promote(store, project, version, actor="cli", reason=reason, force=force)
    except (LookupError, ValueError) as e:
        fail(str(e))
    finally:
        store.close()
    typer.echo(f"champion of {project}: {row['version']} (was {row['previous'] or 'none'})")


@models_app.command("rollback")
def models_rollback(
    reason: Annotated[str | None, typer.Option(help="Recorded in the promotion history.")] = None,
    project: ProjectOpt = "default",
) -> None:
    """Re-promote the previous champion (a running server hot-swaps to it)."""
    from tuneloop.monitor import registry

    s = settings()
    client = api_client(s)
    if client is not None:
        out = api_call(client, "POST", "/v1/models/rollback", params={"project": project}, json={"reason": reason})
        typer.echo(f"rolled back {project} to {out['champion']['version']} (was {out['previous']}); "
                   f"serving {out['serving']}")
        return
    store = _models_offline(s, write=True)
    try:
        row = registry.rollback(store, project, actor="cli", reason=reason)
    except LookupError as e:
        fail(str(e))
    finally:
        store.close()
    typer.echo(f"rolled back {project} to {row['version']} (was {row['previous']})")


# -- projects, imports, adoption --------------------------------------------------------------------

projects_app = typer.Typer(help="Create and list projects (one monitored model each).", no_args_is_help=True)
app.add_typer(projects_app, name="projects")
reference_app = typer.Typer(help="The drift reference of an external model.", no_args_is_help=True)
app.add_typer(reference_app, name="reference")
feedback_app = typer.Typer(help="Bulk ground truth for logged predictions.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
FEEDBACK_CHUNK = 10_000


def _offline_store(s: Settings):  # type: ignore[no-untyped-def]
    """The store for a command that writes, when no server runs (created if needed)."""
    return open_store(s)


def _plain(v: Any) -> Any:
    """A DataFrame cell as JSON: NaN/NaT -> None, JSON text of objects/lists parsed, timestamps as ISO."""
    import math

    import pandas as pd

    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v.tolist() if hasattr(v, "tolist") else v


def _records(df: Any, rename: dict[str, str], keep: tuple[str, ...]) -> list[dict[str, Any]]:
    df = df.rename(columns=rename)
    cols = [c for c in keep if c in df.columns]
    return [{c: _plain(v) for c, v in zip(cols, row, strict=True)} for row in df[cols].itertuples(index=False)]


@projects_app.command("list")
def projects_list(as_json: JsonOpt = False) -> None:
    """Every project with its labels and prediction count."""
    from tuneloop.monitor.projects import list_projects

    s = settings()
    client = api_client(s)
    if client is not None:
        items = api_call(client, "GET", "/v1/projects")["items"]
    else:
        if not s.db_path.exists():
            fail(f"no database at {s.db_path}; run `tuneloop init` first")
        store = open_store(s, read_only=True)
        items = list_projects(store, s)
        store.close()
    if as_json:
        print_json(items)
        return
    typer.echo(f"{'project':<24}{'predictions':>12}  labels")
    for p in items:
        typer.echo(f"{p['project']:<24}{p['predictions']:>12}  {', '.join(p['labels'])}")


@projects_app.command("create")
def projects_create(
    name: str,
    labels: Annotated[str, typer.Option(help="Comma-separated label set, e.g. spam,ham.")],
    settings_json: Annotated[str | None, typer.Option(
        "--settings", help='Settings overrides as JSON, e.g. \'{"drift": {"window_size": 200}}\'.')] = None,
) -> None:
    """Create a project: a model monitored with its own labels (and optional drift settings)."""
    from tuneloop.monitor.projects import ProjectExists, create_project

    label_list = [x.strip() for x in labels.split(",") if x.strip()]
    try:
        overrides = json.loads(settings_json) if settings_json else {}
    except ValueError as e:
        fail(f"--settings is not valid JSON ({e})", 2)
    s = settings()
    client = api_client(s)
    if client is not None:
        out = api_call(client, "POST", "/v1/projects", json={"project": name, "labels": label_list,
                                                            "settings": overrides})
    else:
        store = _offline_store(s)
        try:
            out = create_project(store, name, label_list, overrides, s).as_json()
        except ProjectExists as e:
            fail(str(e))
        except ValueError as e:
            fail(str(e), 2)
        finally:
            store.close()
    typer.echo(f"created project {out['project']} with labels {', '.join(out['labels'])}")


@reference_app.command("import")
def reference_import(
    file: Annotated[Path, typer.Argument(help="CSV/Parquet/JSONL: text, prediction, [label], [probabilities].")],
    project: ProjectOpt = "default",
) -> None:
    """Replace the project's drift reference with an external model's outputs on known data."""
    from tuneloop.monitor.imports import import_reference, read_records

    s = settings()
    try:
        df = read_records(file)
    except ValueError as e:
        fail(str(e))
    client = api_client(s)
    if client is not None:
        keep = ("text", "prediction", "label", "probabilities", "confidence", "embedding")
        out = api_call(client, "POST", "/v1/reference/import", timeout=600, json={
            "project": project, "records": _records(df, {"probs": "probabilities"}, keep)})
    else:
        store = _offline_store(s)
        try:
            out = import_reference(store, s, project, df).as_json()
        except (LookupError, ValueError) as e:
            fail(str(e))
        finally:
            store.close()
    typer.echo(f"imported reference of {out['project']}: {out['rows']} rows ({out['with_true_label']} with a true "
               f"label, {out['with_probabilities']} with probabilities), replacing {out['replaced']}")


@feedback_app.command("import")
def feedback_import(
    file: Annotated[Path, typer.Argument(help="CSV/Parquet/JSONL with label and prediction_id (or the key).")],
    project: ProjectOpt = "default",
    by: Annotated[str, typer.Option(help="Match by prediction 'id' or by a client 'key' in the metadata.")] = "id",
    key_field: Annotated[str | None, typer.Option(help="Metadata field holding the key (with --by key).")] = None,
    annotator: Annotated[str | None, typer.Option(help="Recorded as the annotator.")] = None,
) -> None:
    """Attach delayed true labels to logged predictions (source 'import') and report what did not match."""
    from tuneloop.monitor.imports import import_feedback, read_records

    if by not in ("id", "key"):
        fail("--by must be 'id' or 'key'", 2)
    if by == "key" and not key_field:
        fail("--by key needs --key-field NAME (the metadata field holding the key)", 2)
    s = settings()
    try:
        df = read_records(file)
    except ValueError as e:
        fail(str(e))
    client = api_client(s)
    if client is not None:
        rename = {"id": "prediction_id"} if by == "id" else {key_field: "key"}
        rows = _records(df, rename, ("prediction_id", "key", "label", "ts", "annotator"))
        parts = [api_call(client, "POST", "/v1/feedback/import", timeout=600, json={
            "project": project, "by": by, "key_field": key_field, "annotator": annotator,
            "records": rows[i:i + FEEDBACK_CHUNK]}) for i in range(0, len(rows), FEEDBACK_CHUNK)]
        out = _merge_reports(parts)
    else:
        store = _offline_store(s)
        try:
            out = import_feedback(store, s, project, df, by=by, key_field=key_field,  # type: ignore[arg-type]
                                  annotator=annotator or "cli").as_json()
        except (LookupError, ValueError) as e:
            fail(str(e))
        finally:
            store.close()
    acc = out.get("accuracy")
    typer.echo(f"feedback for {project}: {out['rows']} rows, {out['matched']} matched, {out['accepted']} new labels, "
               f"{out['duplicates']} already known, {out['unmatched']} unmatched"
               + (f" (e.g. {', '.join(out['unmatched_examples'][:5])})" if out["unmatched"] else "")
               + (f"; the logged model was right on {acc:.1%} of them" if acc is not None else ""))


def _merge_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum(p[k] for p in parts) for k in
                           ("rows", "matched", "accepted", "duplicates", "unmatched", "ambiguous")}
    out["unmatched_examples"] = [x for p in parts for x in p["unmatched_examples"]][:10]
    scored = [(p["accuracy"], p["matched"]) for p in parts if p.get("accuracy") is not None]
    n = sum(m for _, m in scored)
    out["accuracy"] = sum(a * m for a, m in scored) / n if n else None
    return out


@app.command()
def adopt(
    project: ProjectOpt = "default",
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish and print the gate's verdict.")] = True,
) -> None:
    """Train a tuneloop model for a project that logs an external model, from its labels (gated against it)."""
    from tuneloop.monitor.projects import CannotAdopt
    from tuneloop.monitor.projects import adopt as adopt_project

    s = settings()
    client = api_client(s)
    if client is not None:
        out = api_call(client, "POST", f"/v1/projects/{project}/adopt")
        typer.echo(_adopt_line(out))
        if not wait:
            return
        import time

        while (run := api_call(client, "GET", f"/v1/retrain/runs/{out['run_id']}"))["status"] in ("queued", "running"):
            time.sleep(1.0)
    else:  # no server: run the job from here and wait for it (the run needs this process to finish)
        from tuneloop.monitor.app import Context
        from tuneloop.monitor.auth import TokenRegistry
        from tuneloop.monitor.retraining import RetrainService

        store = _offline_store(s)
        try:
            ctx = Context(settings=s, store=store, tokens=TokenRegistry(store))
            ctx.services["retrain"] = service = RetrainService(ctx)
            out = adopt_project(ctx, project, actor="cli")
            typer.echo(_adopt_line(out))
            run = service.wait(out["run_id"], timeout=s.retrain.timeout_seconds + 60)
        except (CannotAdopt, LookupError) as e:
            fail(str(e))
        finally:
            store.close()
    gate = ((run.get("metrics") or {}).get("gate") or {}).get("summary") or ""
    typer.echo(f"run {run['id']}: {run['status']}" + (f" — {gate}" if gate else ""))
    if run["status"] == "promoted":
        typer.echo(f"{run['version']} now serves project {project} (POST /v1/predict?project={project})")
        return
    for reason in run.get("reasons") or []:
        typer.echo(f"  {reason}")
    if run["status"] in ("failed", "cancelled", "rejected"):
        raise typer.Exit(1)


def _adopt_line(out: dict[str, Any]) -> str:
    acc = out.get("external_accuracy")
    return (f"adopting {out['project']}: retrain run {out['run_id']} on {out['labelled']} labelled predictions"
            + (f" (the external model's logged accuracy on them: {acc:.1%})" if acc is not None else ""))


# -- dashboard ----------------------------------------------------------------------------------------


def _dashboard_env(s: Settings, server_url: str, token: str | None = None) -> dict[str, str]:
    from tuneloop.dashboard.launch import dashboard_env

    env = dashboard_env(server_url, token or s.dashboard.token or os.environ.get("TUNELOOP_TOKEN"),
                        _options.get("config"))
    if _options.get("data_dir") is not None:
        env["TUNELOOP_PATHS__DATA_DIR"] = str(Path(_options["data_dir"]).resolve())
    return env


@app.command()
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


@app.command()
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
        from tuneloop.monitor.auth import create_token

        session_token = f"{getpass.getuser()} (tuneloop up)"
        store = open_store(s)
        token = create_token(store, "admin", session_token)
        store.close()
    cmd = server_command(_options.get("config"), _options.get("data_dir"), s.server.host, s.server.port)
    code = run_together(cmd, server_url, s.dashboard.host,
                        s.dashboard.port if dashboard_port is None else dashboard_port,
                        _dashboard_env(s, server_url, token), echo=typer.echo)
    if session_token is not None:
        from tuneloop.monitor.auth import revoke_token

        store = open_store(s)
        revoke_token(store, session_token)
        store.close()
    raise typer.Exit(code)


# -- retraining -------------------------------------------------------------------------------------

retrain_app = typer.Typer(help="Retrain from feedback now (`tuneloop retrain [--now]`), or list runs.",
                          invoke_without_command=True)
app.add_typer(retrain_app, name="retrain")
RUN_DONE = ("promoted", "passed", "rejected", "failed", "cancelled", "deferred")


def _run_line(run: dict[str, Any]) -> str:
    """One run: status and version, the gate's verdict in words (gain, bound, detectable gain), the reasons."""
    reasons = "; ".join(map(str, run.get("reasons") or []))
    headline = ((run.get("metrics") or {}).get("gate") or {}).get("headline")
    return (f"run {run['id']}: {run['status']}" + (f" -> {run['version']}" if run.get("version") else "")
            + (f"\n    gate: {headline}" if headline else "") + (f"\n    {reasons}" if reasons else ""))


def _follow(get_run: Any, run_id: int) -> dict[str, Any]:
    """Print progress messages of a run until it ends; return the final run."""
    import time

    said = None
    while True:
        run = get_run(run_id)
        progress = run.get("progress") or {}
        message = None if "total_steps" in progress else progress.get("message")  # skip per-step ticks
        if message and message != said:
            typer.echo(f"  {message}", err=True)
            said = message
        if run["status"] in RUN_DONE:
            return run
        time.sleep(1.0)


@retrain_app.callback()
def retrain(
    ctx: typer.Context,
    now: Annotated[bool, typer.Option("--now", help="Skip the cooldown after the last run.")] = False,
    reason: Annotated[str, typer.Option(help="Recorded with the run.")] = "manual (cli)",
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the run until it ends.")] = True,
    project: ProjectOpt = "default",
) -> None:
    """Start a retrain: snapshot the new feedback, train a challenger, gate it, promote it if it wins."""
    if ctx.invoked_subcommand is not None:
        return
    s = settings()
    client = api_client(s)
    if client is not None:
        out = api_call(client, "POST", "/v1/retrain", params={"project": project},
                       json={"reason": reason, "now": now})
        typer.echo(f"started retrain run {out['run_id']} on {s.server_url}")
        if not wait:
            return
        run = _follow(lambda i: api_call(client, "GET", f"/v1/retrain/runs/{i}"), out["run_id"])
    else:
        from types import SimpleNamespace

        from tuneloop.monitor.retraining import RetrainError, RetrainService

        store = open_store(s)
        try:
            service = RetrainService(SimpleNamespace(store=store, settings=s, services={}))
            service.recover()
            try:
                run_id = service.trigger(project, reason, "cli", respect_cooldown=not now)
            except RetrainError as e:
                fail(str(e))
            typer.echo(f"started retrain run {run_id} (no server running: training here)")
            run = _follow(lambda i: service.get_run(i, log_lines=0), run_id)
        finally:
            store.close()
    typer.echo(_run_line(run))
    if run["status"] in ("failed", "cancelled"):
        raise typer.Exit(1)


@retrain_app.command("runs")
def retrain_runs(
    project: ProjectOpt = "default",
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full rows as JSON.")] = False,
) -> None:
    """Recent retrain runs with status, version and gate reasons."""
    s = settings()
    client = api_client(s)
    if client is not None:
        runs = api_call(client, "GET", "/v1/retrain/runs", params={"project": project, "limit": limit})["items"]
    else:
        if not s.db_path.exists():
            fail(f"no database at {s.db_path}; run `tuneloop init` first")
        from types import SimpleNamespace

        from tuneloop.monitor.retraining import RetrainService

        store = open_store(s, read_only=True)
        try:
            runs = RetrainService(SimpleNamespace(store=store, settings=s, services={})).list_runs(project, limit)
        finally:
            store.close()
    if as_json:
        print_json(runs)
        return
    if not runs:
        typer.echo(f"no retrain runs for project {project}")
    for run in runs:
        typer.echo(f"{run['started']}  {_run_line(run)}  [{run['trigger']}]")


# -- operations: backup, restore, retention ------------------------------------------------------------

retention_app = typer.Typer(help="Delete raw rows older than retention.raw_days (hourly rollups stay).",
                            no_args_is_help=True)
app.add_typer(retention_app, name="retention")


@app.command("backup")
def backup_cmd(
    dest: Annotated[Path, typer.Argument(help="New directory to write the backup to.")],
    models: Annotated[bool, typer.Option(help="Include the registered model version directories.")] = True,
) -> None:
    """Consistent backup of the store (through the running server, which keeps serving; else from the file)."""
    import shutil

    from tuneloop.monitor import operations

    s = settings()
    dest = dest.expanduser().resolve()
    if dest.exists():
        fail(f"{dest} already exists; choose a new directory")
    client = api_client(s)
    if client is not None:
        out = api_call(client, "POST", "/v1/admin/backup", json={"include_models": models}, timeout=3600)
        made = Path(out["path"])
        if made != dest:
            if not made.is_dir():
                fail(f"the server wrote the backup to {made}, which is not reachable from here; copy it from there")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(made), str(dest))
    else:
        if not s.db_path.exists():
            fail(f"no database at {s.db_path}; nothing to back up")
        store = open_store(s, read_only=True)
        try:
            out = operations.backup(store, dest, models_dir=s.models_dir if models else None).as_json()
        finally:
            store.close()
    typer.echo(f"backed up {sum(out['tables'].values())} rows in {len(out['tables'])} tables and "
               f"{len(out['models'])} model versions to {dest}")


@app.command("restore")
def restore_cmd(
    src: Annotated[Path, typer.Argument(help="A backup directory written by `tuneloop backup`.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing database (kept as "
                                                        "<db>.replaced-<time>); never one in use.")] = False,
) -> None:
    """Rebuild the database file from a backup (offline: stop the server first)."""
    from tuneloop.monitor import operations
    from tuneloop.monitor.storage import StoreError

    s = settings()
    try:
        out = operations.restore(src, s.db_path, models_dir=s.models_dir, overwrite=force)
    except (StoreError, FileExistsError) as e:
        fail(str(e))
    typer.echo(f"restored {sum(out.tables.values())} rows in {len(out.tables)} tables into {out.db_path}"
               + (f" ({len(out.models)} model versions copied)" if out.models else "")
               + (f"; the previous file is kept as {out.replaced}" if out.replaced else ""))


@retention_app.command("run")
def retention_run(
    raw_days: Annotated[int | None, typer.Option(help="Overrides retention.raw_days.", min=1)] = None,
) -> None:
    """Delete raw predictions and feedback older than retention.raw_days now (through the server when one runs)."""
    from tuneloop.monitor import operations

    s = settings()
    days = raw_days or s.retention.raw_days
    client = api_client(s)
    if client is not None:
        out = api_call(client, "POST", "/v1/admin/retention", json={"raw_days": days}, timeout=3600)
    else:
        if not s.db_path.exists():
            fail(f"no database at {s.db_path}; run `tuneloop init` first")
        store = open_store(s)
        try:
            out = operations.run_retention(store, days, pending_hours=s.retention.pending_feedback_hours).as_json()
        finally:
            store.close()
    typer.echo(f"retention ({days} days, cutoff {out['cutoff']}): deleted {out['predictions']} predictions, "
               f"{out['feedback']} feedback and {out['pending_feedback']} pending feedback rows; "
               f"{out['hours_rolled_up']} hours of labelled accuracy kept in the rollup")


# -- drift checks and alerts ------------------------------------------------------------------------

alerts_app = typer.Typer(help="List and acknowledge drift alerts.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(as_json: JsonOpt = False) -> None:
    """Every effective setting with its source (env, command line, file, default); secrets masked."""
    from tuneloop.monitor.config_show import effective_settings

    rows = effective_settings(settings(), _options.get("config"), _cli_overrides())
    if as_json:
        print_json(rows)
        return
    width = max(len(r["key"]) for r in rows) + 2
    for r in rows:
        typer.echo(f"{r['key']:<{width}}{json.dumps(r['value'], default=str):<40} {r['source']}")


CHECK_EXIT_HELP = "Exit status: 0 no check drifted, 1 at least one check drifted, 2 the checks could not run."


@app.command(help=f"Run the drift checks now (through the server when one runs) and print the results. "
                  f"{CHECK_EXIT_HELP}", epilog=CHECK_EXIT_HELP)
def check(project: ProjectOpt = "default") -> None:
    try:
        run = _run_checks(project)
    except typer.Exit as e:  # every failure (config, store, server answer) is exit status 2 here
        raise typer.Exit(2 if e.exit_code else 0) from None
    except Exception as e:  # noqa: BLE001 - one line, never a traceback, and the documented status
        fail(f"the drift checks could not run: {type(e).__name__}: {e}", 2)
    print_json(run)
    if any(r.get("drifted") for r in run.get("results", [])):
        raise typer.Exit(1)


def _run_checks(project: str) -> dict[str, Any]:
    s = settings()
    client = api_client(s)
    if client is not None:
        return api_call(client, "POST", "/v1/checks", params={"project": project})
    from tuneloop.monitor.checks import NotEnoughData, run_drift_checks

    store = open_store(s)
    try:
        return run_drift_checks(store, s, project).as_json()
    except NotEnoughData as e:
        fail(str(e), 2)
    finally:
        store.close()


@alerts_app.command("list")
def alerts_list(
    project: ProjectOpt = "default",
    status: Annotated[str | None, typer.Option(help="open | closed")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Alerts, newest first."""
    s = settings()
    client = api_client(s)
    params = {"project": project, **({"status": status} if status else {})}
    if client is not None:
        items = api_call(client, "GET", "/v1/alerts", params=params)["items"]
    else:
        from tuneloop.monitor.alerts import list_alerts

        store = open_store(s, read_only=True)
        items = list_alerts(store, project, status)
        store.close()
    if as_json:
        print_json({"items": items})
        return
    if not items:
        typer.echo(f"no {status + ' ' if status else ''}alerts for project {project}")
    for a in items:
        typer.echo(f"#{a['id']:<6}{str(a['ts'])[:19]:<21}{a['status']:<8}{a['severity']:<10}{a['kind']:<22}"
                   f"{'acked' if a.get('acked_at') else ''}")


@alerts_app.command("ack")
def alerts_ack(alert_id: int) -> None:
    """Acknowledge an alert."""
    s = settings()
    client = api_client(s)
    if client is not None:
        print_json(api_call(client, "POST", f"/v1/alerts/{alert_id}/ack"))
        return
    from tuneloop.monitor.alerts import ack_alert

    store = open_store(s)
    alert = ack_alert(store, alert_id, "cli")
    store.close()
    if alert is None:
        fail(f"no alert {alert_id}")
    print_json(alert)


def run() -> None:  # pragma: no cover - console entry for `python -m`
    app(prog_name="tuneloop")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
