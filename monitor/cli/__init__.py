"""The ``tuneloop`` command line (Typer): one module per command group over one backend interface."""

from tuneloop.monitor.cli.main import FIRST_TOKEN_FILE, _first_admin_token, announce_first_token, app, run

__all__ = ["FIRST_TOKEN_FILE", "_first_admin_token", "announce_first_token", "app", "run"]
