"""Operations on the production record: ``backup``, ``restore``, ``retention run``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop.monitor.cli.backend import NO_DB_HINT, connect
from tuneloop.monitor.cli.common import fail, settings

retention_app = typer.Typer(help="Delete raw rows older than retention.raw_days (hourly rollups stay).",
                            no_args_is_help=True)


def backup_cmd(
    dest: Annotated[Path, typer.Argument(help="New directory to write the backup to.")],
    models: Annotated[bool, typer.Option(help="Include the registered model version directories.")] = True,
) -> None:
    """Consistent backup of the store (through the running server, which keeps serving; else from the file)."""
    dest = dest.expanduser().resolve()
    if dest.exists():
        fail(f"{dest} already exists; choose a new directory")
    with connect(settings(), missing_db="nothing to back up") as backend:
        out = backend.backup(dest, models)
    typer.echo(f"backed up {sum(out['tables'].values())} rows in {len(out['tables'])} tables and "
               f"{len(out['models'])} model versions to {dest}")


def restore_cmd(
    src: Annotated[Path, typer.Argument(help="A backup directory written by `tuneloop backup`.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing database (kept as "
                                                        "<db>.replaced-<time>); never one in use.")] = False,
) -> None:
    """Rebuild the database file (or the PostgreSQL database of store.url) from a backup (offline: stop the
    server first)."""
    from tuneloop.monitor import operations
    from tuneloop.monitor.storage import StoreError

    s = settings()
    try:
        if s.store.url:
            out = operations.restore_postgres(src, s.store.url, models_dir=s.models_dir, overwrite=force)
        else:
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
    s = settings()
    days = raw_days or s.retention.raw_days
    with connect(s, write=True, missing_db=NO_DB_HINT) as backend:
        out = backend.run_retention(days)
    typer.echo(f"retention ({days} days, cutoff {out['cutoff']}): deleted {out['predictions']} predictions, "
               f"{out['feedback']} feedback and {out['pending_feedback']} pending feedback rows; "
               f"{out['hours_rolled_up']} hours of labelled accuracy kept in the rollup")
