"""The ``tuneloop`` command line: thin commands over one backend (sqlite-utils style).

Global options (``--config``, ``--data-dir``) come before the command:
``tuneloop --config my.toml serve``. Every command also reads ``TUNELOOP_*`` variables. Each
command group lives in its own module; this one lists them all.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tuneloop.monitor.cli import config, drift, models, operations, projects, retrain, server, tokens
from tuneloop.monitor.cli.common import ConfigOpt, DataDirOpt, options
from tuneloop.monitor.cli.server import FIRST_TOKEN_FILE, _first_admin_token, announce_first_token

__all__ = ["FIRST_TOKEN_FILE", "_first_admin_token", "announce_first_token", "app", "run"]

app = typer.Typer(
    name="tuneloop",
    help="Continuous monitoring and feedback loop for fine-tuned text models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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
    options["config"] = config
    options["data_dir"] = data_dir


app.add_typer(tokens.app, name="token")
app.command()(server.init)
app.command()(server.serve)
app.command()(server.status)
app.command()(server.demo)
app.add_typer(models.app, name="models")
app.command()(models.train)
app.add_typer(models.data_app, name="data")
app.add_typer(projects.app, name="projects")
app.add_typer(projects.reference_app, name="reference")
app.add_typer(projects.feedback_app, name="feedback")
app.command()(projects.adopt)
app.command()(server.dashboard)
app.command()(server.up)
app.add_typer(retrain.app, name="retrain")
app.add_typer(operations.retention_app, name="retention")
app.command("backup")(operations.backup_cmd)
app.command("restore")(operations.restore_cmd)
app.add_typer(drift.alerts_app, name="alerts")
app.add_typer(config.app, name="config")
app.command(help=f"Run the drift checks now (through the server when one runs) and print the results. "
                 f"{drift.CHECK_EXIT_HELP}", epilog=drift.CHECK_EXIT_HELP)(drift.check)


def run() -> None:  # pragma: no cover - console entry for `python -m`
    app(prog_name="tuneloop")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
