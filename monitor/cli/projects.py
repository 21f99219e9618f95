"""Projects and external models: ``projects list|create``, ``reference import``, ``feedback import``, ``adopt``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.monitor.cli.backend import NO_DB_HINT, connect
from tuneloop.monitor.cli.common import JsonOpt, ProjectOpt, fail, settings, show_table, split_labels

app = typer.Typer(help="Create and list projects (one monitored model each).", no_args_is_help=True)
reference_app = typer.Typer(help="The drift reference of an external model.", no_args_is_help=True)
feedback_app = typer.Typer(help="Bulk ground truth for logged predictions.", no_args_is_help=True)


@app.command("list")
def projects_list(as_json: JsonOpt = False) -> None:
    """Every project with its labels and prediction count."""
    with connect(settings(), missing_db=NO_DB_HINT) as backend:
        items = backend.list_projects()
    show_table(items, as_json, f"{'project':<24}{'predictions':>12}  labels",
               lambda p: f"{p['project']:<24}{p['predictions']:>12}  {', '.join(p['labels'])}")


@app.command("create")
def projects_create(
    name: str,
    labels: Annotated[str, typer.Option(help="Comma-separated label set, e.g. spam,ham.")],
    settings_json: Annotated[str | None, typer.Option(
        "--settings", help='Settings overrides as JSON, e.g. \'{"drift": {"window_size": 200}}\'.')] = None,
) -> None:
    """Create a project: a model monitored with its own labels (and optional drift settings)."""
    try:
        overrides = json.loads(settings_json) if settings_json else {}
    except ValueError as e:
        fail(f"--settings is not valid JSON ({e})", 2)
    with connect(settings(), write=True) as backend:
        out = backend.create_project(name, split_labels(labels) or [], overrides)
    typer.echo(f"created project {out['project']} with labels {', '.join(out['labels'])}")


def _read(file: Path) -> Any:
    from tuneloop.monitor.imports import read_records

    try:
        return read_records(file)
    except ValueError as e:
        fail(str(e))


@reference_app.command("import")
def reference_import(
    file: Annotated[Path, typer.Argument(help="CSV/Parquet/JSONL: text, prediction, [label], [probabilities].")],
    project: ProjectOpt = "default",
) -> None:
    """Replace the project's drift reference with an external model's outputs on known data."""
    s = settings()
    df = _read(file)
    with connect(s, write=True) as backend:
        out = backend.import_reference(project, df)
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
    if by not in ("id", "key"):
        fail("--by must be 'id' or 'key'", 2)
    if by == "key" and not key_field:
        fail("--by key needs --key-field NAME (the metadata field holding the key)", 2)
    s = settings()
    df = _read(file)
    with connect(s, write=True) as backend:
        out = backend.import_feedback(project, df, by, key_field, annotator)
    acc = out.get("accuracy")
    typer.echo(f"feedback for {project}: {out['rows']} rows, {out['matched']} matched, {out['accepted']} new labels, "
               f"{out['duplicates']} already known, {out['unmatched']} unmatched"
               + (f" (e.g. {', '.join(out['unmatched_examples'][:5])})" if out["unmatched"] else "")
               + (f"; the logged model was right on {acc:.1%} of them" if acc is not None else ""))


def adopt(
    project: ProjectOpt = "default",
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish and print the gate's verdict.")] = True,
) -> None:
    """Train a tuneloop model for a project that logs an external model, from its labels (gated against it)."""
    with connect(settings(), write=True) as backend:
        out = backend.adopt(project)
        acc = out.get("external_accuracy")
        typer.echo(f"adopting {out['project']}: retrain run {out['run_id']} on {out['labelled']} labelled "
                   "predictions" + (f" (the external model's logged accuracy on them: {acc:.1%})"
                                    if acc is not None else ""))
        if backend.remote and not wait:
            return
        run = backend.wait_run(out["run_id"])  # without a server the run needs this process to finish
    gate = ((run.get("metrics") or {}).get("gate") or {}).get("summary") or ""
    typer.echo(f"run {run['id']}: {run['status']}" + (f" — {gate}" if gate else ""))
    if run["status"] == "promoted":
        typer.echo(f"{run['version']} now serves project {project} (POST /v1/predict?project={project})")
        return
    for reason in run.get("reasons") or []:
        typer.echo(f"  {reason}")
    if run["status"] in ("failed", "cancelled", "rejected"):
        raise typer.Exit(1)
