"""Drift checks and alerts: ``check``, ``alerts list|ack``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import typer

from tuneloop.monitor.cli.backend import connect
from tuneloop.monitor.cli.common import JsonOpt, ProjectOpt, fail, print_json, settings, show

alerts_app = typer.Typer(help="List and acknowledge drift alerts.", no_args_is_help=True)
CHECK_EXIT_HELP = "Exit status: 0 no check drifted, 1 at least one check drifted, 2 the checks could not run."


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
    with connect(settings(), write=True) as backend:
        return backend.run_checks(project)


@alerts_app.command("list")
def alerts_list(
    project: ProjectOpt = "default",
    status: Annotated[str | None, typer.Option(help="open | closed")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Alerts, newest first."""
    with connect(settings()) as backend:
        items = backend.list_alerts(project, status)

    def lines() -> Iterator[str]:
        if not items:
            yield f"no {status + ' ' if status else ''}alerts for project {project}"
        for a in items:
            yield (f"#{a['id']:<6}{str(a['ts'])[:19]:<21}{a['status']:<8}{a['severity']:<10}{a['kind']:<22}"
                   f"{'acked' if a.get('acked_at') else ''}")

    show({"items": items}, as_json, lines)


@alerts_app.command("ack")
def alerts_ack(alert_id: int) -> None:
    """Acknowledge an alert."""
    with connect(settings(), write=True) as backend:
        print_json(backend.ack_alert(alert_id))
