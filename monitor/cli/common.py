"""What every command shares: global options, settings, the one ``--json`` option, one-line failures."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from tuneloop.monitor.config import ConfigError, Settings, load_settings

options: dict[str, Any] = {}
"""The global options (``--config``, ``--data-dir``) of this invocation, set by the root callback."""

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (see configs/default.toml).")
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Overrides paths.data_dir.")]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Monitored project (model).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the full data as JSON instead of the summary.")]
"""The one --json option of every command that prints a summary."""


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line to stderr and exit (no traceback)."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def cli_overrides() -> dict[str, dict[str, Any]]:
    return {"paths": {"data_dir": options["data_dir"]}} if options.get("data_dir") is not None else {}


def settings() -> Settings:
    """Settings from --config, --data-dir and the environment; a bad value exits with one line."""
    try:
        s = load_settings(options.get("config"), **cli_overrides())
    except ConfigError as e:
        fail(str(e), 2)
    from tuneloop.monitor.log import setup_logging

    setup_logging(s.logging.level, s.logging.json_format)
    return s


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def show(data: Any, as_json: bool, lines: Callable[[], Iterable[str]]) -> None:
    """``--json``: the data as JSON; otherwise the human lines."""
    if as_json:
        print_json(data)
        return
    for line in lines():
        typer.echo(line)


def show_table(items: list[dict[str, Any]], as_json: bool, header: str, row: Callable[[dict[str, Any]], str]) -> None:
    """``--json``: the items as JSON; otherwise a header line and one formatted line per item."""
    show(items, as_json, lambda: [header, *map(row, items)])


def split_labels(labels: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; None or empty -> None."""
    return [x.strip() for x in labels.split(",") if x.strip()] if labels else None
