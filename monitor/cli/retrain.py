"""``tuneloop retrain [--now]`` and ``tuneloop retrain runs``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from tuneloop.monitor.cli.backend import NO_DB_HINT, connect
from tuneloop.monitor.cli.common import JsonOpt, ProjectOpt, settings, show

app = typer.Typer(help="Retrain from feedback now (`tuneloop retrain [--now]`), or list runs.",
                  invoke_without_command=True)
RUN_DONE = ("promoted", "passed", "rejected", "failed", "cancelled", "deferred")


def run_line(run: dict[str, Any]) -> str:
    """One run: status and version, the gate's verdict in words (gain, bound, detectable gain), the reasons."""
    reasons = "; ".join(map(str, run.get("reasons") or []))
    headline = ((run.get("metrics") or {}).get("gate") or {}).get("headline")
    return (f"run {run['id']}: {run['status']}" + (f" -> {run['version']}" if run.get("version") else "")
            + (f"\n    gate: {headline}" if headline else "") + (f"\n    {reasons}" if reasons else ""))


def follow(get_run: Callable[[int], dict[str, Any]], run_id: int) -> dict[str, Any]:
    """Print progress messages of a run until it ends; return the final run."""
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


@app.callback()
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
    with connect(settings(), write=True) as backend:
        run_id = backend.start_retrain(project, reason, now)
        typer.echo(f"started retrain run {run_id} on {backend.where}" if backend.remote
                   else f"started retrain run {run_id} (no server running: training here)")
        if backend.remote and not wait:
            return
        run = follow(backend.get_run, run_id)  # without a server the run needs this process to finish
    typer.echo(run_line(run))
    if run["status"] in ("failed", "cancelled"):
        raise typer.Exit(1)


@app.command("runs")
def retrain_runs(
    project: ProjectOpt = "default",
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recent retrain runs with status, version and gate reasons."""
    with connect(settings(), missing_db=NO_DB_HINT) as backend:
        runs = backend.list_runs(project, limit)

    def lines() -> Iterator[str]:
        if not runs:
            yield f"no retrain runs for project {project}"
        for run in runs:
            yield f"{run['started']}  {run_line(run)}  [{run['trigger']}]"

    show(runs, as_json, lines)
