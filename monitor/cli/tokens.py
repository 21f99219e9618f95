"""``tuneloop token create|list|revoke``."""

from __future__ import annotations

from typing import Annotated

import typer

from tuneloop.monitor.cli.backend import connect
from tuneloop.monitor.cli.common import JsonOpt, fail, settings, show_table

app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)


@app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="ingest | label | admin")],
    name: Annotated[str, typer.Option(help="A name to recognise the token by.")] = "",
) -> None:
    """Create a token; it is printed once and stored only as a hash (through the server when one runs)."""
    from tuneloop.monitor.auth import ROLES

    if role not in ROLES:
        fail(f"unknown role {role!r}; choose one of {', '.join(ROLES)}", 2)
    with connect(settings(), write=True) as backend:
        typer.echo(backend.create_token(role, name))


@app.command("list")
def token_list(as_json: JsonOpt = False) -> None:
    """Token names and roles (never the tokens)."""
    with connect(settings()) as backend:
        items = backend.list_tokens()
    show_table(items, as_json, f"{'name':<32}{'role':<8}{'created_at':<21}revoked_at",
               lambda t: f"{t['name']:<32}{t['role']:<8}{str(t['created_at'])[:19]:<21}"
                         f"{str(t['revoked_at'] or '-')[:19]}")


@app.command("revoke")
def token_revoke(name: str) -> None:
    """Revoke every active token with this name."""
    with connect(settings(), write=True) as backend:
        typer.echo(f"revoked {backend.revoke_token(name)} token(s)")
