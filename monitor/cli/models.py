"""Model versions: ``train``, ``data check``, ``models list|show|promote|rollback``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.monitor.cli.backend import NO_DB_HINT, connect
from tuneloop.monitor.cli.common import JsonOpt, ProjectOpt, fail, print_json, settings, show, split_labels
from tuneloop.monitor.config import Settings

app = typer.Typer(help="List, inspect, promote and roll back model versions.", no_args_is_help=True)
data_app = typer.Typer(help="Check a labelled file before training on it.", no_args_is_help=True)


def train(
    data: Annotated[Path, typer.Argument(help="Labelled CSV/TSV/Parquet with columns text and label.")],
    labels: Annotated[str | None, typer.Option(help="Comma-separated label set (default: project.labels).")] = None,
    from_version: Annotated[str | None, typer.Option("--from", help="Continue this version's adapter.")] = None,
    promote: Annotated[bool, typer.Option(help="Make the new version the champion (hot-swapped).")] = False,
    version: Annotated[str | None, typer.Option(help="Name of the new version (default: next vN).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Overrides model.epochs.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote as the project's first champion even a model "
                                        "that does not beat the simple baselines.")] = False,
    unlabelled: Annotated[Path | None, typer.Option(help="CSV/TSV/Parquet of unlabelled texts (column text) of the "
                                                    "traffic to serve: self-training adds agreed, confident "
                                                    "pseudo-labels of them to the training rows.")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Try a few training configurations (search.trials, within "
                                       "search.minutes) and keep the best on validation.")] = False,
    project: ProjectOpt = "default",
) -> None:
    """Train a model version, write it under models_dir and register it (through the server when one runs).

    Prints the model beside the simple baselines fitted on the same split. A model that does not beat the
    best of them is still registered, but becomes a project's first champion only with ``--force``.
    ``--unlabelled`` self-trains on those texts with the retrain.pseudo_* settings; ``--auto`` (or
    search.enabled) searches as retrain/search.py says, for a few times the training time.
    """
    s = settings()
    if epochs is not None:
        s.model.epochs = epochs
    trained = _train(s, data, split_labels(labels), version, from_version, unlabelled, auto or s.search.enabled)
    guard = promote and not force and trained.metrics.get("beats_baselines") is False
    with connect(s, write=True) as backend:
        row = backend.register_version(project, trained.version)
        if promote:
            if guard and not backend.promotions(project):
                fail(f"not promoting {trained.version} (registered as a challenger): it does not beat the best "
                     "simple baseline and would be the project's first champion; pass --force to promote it anyway")
            backend.promote(project, trained.version, "tuneloop train --promote")
    if backend.remote:
        typer.echo(f"registered {trained.version} with the server at {backend.where}"
                   + (" and promoted it (now serving)" if promote else f" as {row['status']}"))
    else:
        typer.echo(f"registered {trained.version} in {backend.where}"
                   + (" as champion" if promote else " as challenger"))


def _train(s: Settings, data: Path, labels: list[str] | None, version: str | None, from_version: str | None,
           unlabelled: Path | None = None, auto: bool = False) -> Any:
    """Check the file, train the version here, print its scores beside the baselines."""
    from tuneloop.retrain.baselines import baseline_table
    from tuneloop.retrain.build import train_version
    from tuneloop.retrain.quality import summary_lines
    from tuneloop.retrain.selftrain import SelfTraining
    from tuneloop.retrain.trainer import read_labelled, read_unlabelled

    try:
        df = read_labelled(data)
        pool = read_unlabelled(unlabelled) if unlabelled is not None else []
        if unlabelled is not None and not pool:
            raise ValueError(f"unlabelled data {unlabelled}: no texts")
        for line in summary_lines(data_report(df, labels, s)):
            typer.echo(f"data check: {line}", err=True)
        trained = train_version(s.models_dir, s.model, df, labels or (None if from_version else s.project.labels),
                                version=version, from_version=from_version, progress=sys.stderr.isatty(),
                                log=lambda m: typer.echo(m, err=True),
                                self_training=SelfTraining.from_settings(pool, s.retrain) if pool else None,
                                search=s.search if auto else None)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        fail(str(e))
    m = trained.metrics
    typer.echo(f"trained {trained.version} in {trained.path}: val_accuracy {m.get('val_accuracy', 0):.3f} "
               f"val_macro_f1 {m.get('val_macro_f1', 0):.3f}")
    if "search" in m:
        found = m["search"]
        typer.echo(f"search: kept trial {found['kept_trial'] + 1} of {len(found['trials'])} "
                   f"({found['kept_changes']}) in {found['seconds']:.0f} s"
                   + ("; its validation score is optimistic, as it was chosen on the same rows"
                      if found["kept_trial"] else ""))
        if found.get("choice"):
            typer.echo(f"search: {found['choice']['words']}")
    if "baselines" in m:
        typer.echo("validation, same split:")
        for line in baseline_table({"accuracy": m["val_accuracy"], "macro_f1": m["val_macro_f1"]}, m["baselines"]):
            typer.echo(line)
        typer.echo(m["baseline_verdict"])
    return trained


def data_report(df: Any, labels: list[str] | None, s: Settings, embed: bool = True) -> dict[str, Any]:
    """The data-quality report of ``df`` (text, label); with ``embed`` the encoder-based checks too."""
    from tuneloop.retrain.quality import quality_report

    encoder = None
    if embed:
        from tuneloop.retrain.report_encoder import ReportEncoder

        try:
            encoder = ReportEncoder(s.embedder.base or s.model.base, s.model.max_length)
            encoder.load()  # a bad base fails here, with one line
        except (FileNotFoundError, ValueError) as e:  # a missing or unsupported base: one line, no traceback
            fail(str(e))
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
    as_json: JsonOpt = False,
) -> None:
    """Data-quality report of a labelled file: balance, lengths, duplicates, charset, suspected label errors."""
    from tuneloop.monitor.datasets import DatasetError, detect_format, parse, validate
    from tuneloop.retrain.quality import summary_lines

    s = settings()
    try:
        if not file.is_file():
            raise DatasetError(f"{file}: no such file")
        rows, found = validate(parse(file.read_bytes(), detect_format(file.name), encoding), text_column,
                               label_column, split_labels(labels))
    except DatasetError as e:
        fail("; ".join([str(e), *(f"row {x.get('row', x.get('line'))}: {x['error']}" for x in e.errors[:10])]))
    report = data_report(rows, found, s, embed)
    show(report, as_json, lambda: summary_lines(report))


@app.command("list")
def models_list(project: ProjectOpt = "default", as_json: JsonOpt = False) -> None:
    """Versions with status and validation metrics."""
    with connect(settings(), missing_db=NO_DB_HINT) as backend:
        items = backend.list_versions(project)

    def lines() -> Iterator[str]:
        if not items:
            yield f"no model versions for project {project}; train one with tuneloop train"
            return
        yield f"{'version':<12}{'status':<12}{'created_at':<21}{'parent':<10}{'val_acc':>8}{'val_f1':>8}"
        for r in items:
            m = r.get("metrics") or {}
            acc, f1 = m.get("val_accuracy"), m.get("val_macro_f1")
            yield (f"{r['version']:<12}{r['status']:<12}{str(r['created_at'])[:19]:<21}{r['parent'] or '-':<10}"
                   f"{'-' if acc is None else f'{acc:.3f}':>8}{'-' if f1 is None else f'{f1:.3f}':>8}")

    show(items, as_json, lines)


@app.command("show")
def models_show(version: str, project: ProjectOpt = "default") -> None:
    """One version: registry row, metrics and promotion history (JSON)."""
    with connect(settings(), missing_db=NO_DB_HINT) as backend:
        print_json(backend.show_version(project, version))


@app.command("promote")
def models_promote(
    version: str,
    reason: Annotated[str | None, typer.Option(help="Recorded in the promotion history.")] = None,
    force: Annotated[bool, typer.Option(help="Promote even a rejected version.")] = False,
    project: ProjectOpt = "default",
) -> None:
    """Make VERSION the champion (a running server hot-swaps to it)."""
    with connect(settings(), write=True, missing_db=NO_DB_HINT) as backend:
        out = backend.promote(project, version, reason, force)
    typer.echo(f"champion of {project}: {out['champion']['version']} (was {out['previous'] or 'none'})"
               + (f"; serving {out['serving']}" if backend.remote else ""))


@app.command("rollback")
def models_rollback(
    reason: Annotated[str | None, typer.Option(help="Recorded in the promotion history.")] = None,
    project: ProjectOpt = "default",
) -> None:
    """Re-promote the previous champion (a running server hot-swaps to it)."""
    with connect(settings(), write=True, missing_db=NO_DB_HINT) as backend:
        out = backend.rollback(project, reason)
    typer.echo(f"rolled back {project} to {out['champion']['version']} (was {out['previous']})"
               + (f"; serving {out['serving']}" if backend.remote else ""))


@app.command("export")
def models_export(
    version: str,
    dest: Annotated[Path, typer.Argument(help="New directory for the exported model.")],
    format: Annotated[str, typer.Option("--format", help="hf: a standard Hugging Face sequence-classification "
                                        "directory (transformers.pipeline loads it).")] = "hf",
    as_json: JsonOpt = False,
) -> None:
    """Write VERSION (a directory under models_dir) as a standalone model for use outside tuneloop.

    The LoRA adapter is merged into the base and the head becomes the architecture's standard
    classification head. A version that blends a TF-IDF model into its predictions is exported as its
    encoder classifier alone: its labels then differ from /v1/predict wherever the blend changes them.
    """
    from tuneloop.retrain.export import ExportError, export_hf
    from tuneloop.retrain.versions import is_complete, validate_version_name

    if format != "hf":
        fail(f"--format {format!r}: the only format is hf")
    s = settings()
    try:
        path = s.models_dir / validate_version_name(version)
        if not is_complete(path):
            raise FileNotFoundError(f"no complete version {version} in {s.models_dir}")
        report = export_hf(path, dest)
    except (ExportError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    out = report.as_json()
    out["note"] = export_note(report.blend_tfidf)
    show(out, as_json, lambda: [
        f"exported {version} ({report.model_type}, labels {', '.join(report.labels)}) to {dest}",
        f"checked on {report.checked_texts} texts: same label as the encoder classifier on "
        f"{report.label_agreement:.1%}, largest probability difference {report.max_prob_diff:.1e}",
        out["note"],
        f'load it with: transformers.pipeline("text-classification", model="{dest}")',
    ])


def export_note(blend: float) -> str:
    """What the export reproduces of the served model, in one line."""
    if blend > 0:
        return (f"note: this version serves a blend ({blend:g} TF-IDF + LR, {1 - blend:g} fine-tuned encoder); the "
                "export holds the encoder classifier alone, so its labels can differ from /v1/predict (they agree "
                "when the blend weight is 0)")
    return "the export gives the labels and probabilities /v1/predict serves (blend weight 0)"
