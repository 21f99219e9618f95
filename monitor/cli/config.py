"""``tuneloop config show``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import typer

from tuneloop.monitor.cli.common import JsonOpt, cli_overrides, options, settings, show

app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@app.command("show")
def config_show(as_json: JsonOpt = False) -> None:
    """Every effective setting with its source (env, command line, file, default); secrets masked."""
    from tuneloop.monitor.cli.config_show import effective_settings

    rows = effective_settings(settings(), options.get("config"), cli_overrides())

    def lines() -> Iterator[str]:
        width = max(len(r["key"]) for r in rows) + 2
        for r in rows:
            yield f"{r['key']:<{width}}{json.dumps(r['value'], default=str):<40} {r['source']}"

    show(rows, as_json, lines)
