"""The one interface every command talks to: a running server (HTTP) or the database file (local).

:func:`connect` is the only place that decides "is a server running?": when one answers at
``server_url`` every command goes through its API (the server owns the database file); otherwise
the command opens the file itself through :func:`tuneloop.monitor.runtime.local`. Both backends
return the same JSON-shaped answers, so a command parses, makes one call and formats.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tuneloop.monitor.cli.common import fail
from tuneloop.monitor.config import Settings

if TYPE_CHECKING:
    from tuneloop.monitor.cli.local import LocalBackend

NO_DB_HINT = "run `tuneloop init` first"


class Backend(Protocol):
    """What the commands can ask for; :class:`~.remote.RemoteBackend` and :class:`~.local.LocalBackend`."""

    remote: bool
    where: str
    """The server URL or the database file, for messages."""

    def status(self, project: str) -> dict[str, Any]: ...
    def create_token(self, role: str, name: str) -> str: ...
    def list_tokens(self) -> list[dict[str, Any]]: ...
    def revoke_token(self, name: str) -> int: ...
    def list_versions(self, project: str) -> list[dict[str, Any]]: ...
    def show_version(self, project: str, version: str) -> dict[str, Any]: ...
    def register_version(self, project: str, version: str) -> dict[str, Any]: ...
    def promotions(self, project: str) -> list[dict[str, Any]]: ...
    def promote(self, project: str, version: str, reason: str | None, force: bool = False) -> dict[str, Any]: ...
    def rollback(self, project: str, reason: str | None) -> dict[str, Any]: ...
    def list_projects(self) -> list[dict[str, Any]]: ...
    def create_project(self, name: str, labels: list[str], overrides: dict[str, Any]) -> dict[str, Any]: ...
    def import_reference(self, project: str, df: Any) -> dict[str, Any]: ...
    def import_feedback(self, project: str, df: Any, by: str, key_field: str | None,
                        annotator: str | None) -> dict[str, Any]: ...
    def adopt(self, project: str) -> dict[str, Any]: ...
    def start_retrain(self, project: str, reason: str, now: bool) -> int: ...
    def get_run(self, run_id: int) -> dict[str, Any]: ...
    def wait_run(self, run_id: int) -> dict[str, Any]: ...
    def list_runs(self, project: str, limit: int) -> list[dict[str, Any]]: ...
    def backup(self, dest: Path, models: bool) -> dict[str, Any]: ...
    def run_retention(self, raw_days: int) -> dict[str, Any]: ...
    def run_checks(self, project: str) -> dict[str, Any]: ...
    def list_alerts(self, project: str, status: str | None) -> list[dict[str, Any]]: ...
    def ack_alert(self, alert_id: int) -> dict[str, Any]: ...


def server_client(s: Settings, token: str | None = None) -> Any:
    """An httpx client for the server at ``server_url`` when one answers, else None."""
    import httpx

    token = token or os.environ.get("TUNELOOP_TOKEN") or s.dashboard.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(base_url=s.server_url, headers=headers, timeout=30)
    try:
        client.get("/healthz", timeout=1.0).raise_for_status()
    except httpx.HTTPError:
        client.close()
        return None
    return client


@contextmanager
def connect(s: Settings, *, write: bool = False, missing_db: str | None = None) -> Iterator[Backend]:
    """The running server's API, else the database file (read-only unless ``write``); closed on exit.

    ``missing_db``: without a server, refuse a missing database file with this hint instead of creating it.
    """
    client = server_client(s)
    if client is not None:
        from tuneloop.monitor.cli.remote import RemoteBackend

        try:
            yield RemoteBackend(client, s)
        finally:
            client.close()
        return
    if missing_db is not None and not s.store.url and not s.db_path.exists():
        fail(f"no database at {s.db_path}; {missing_db}")
    with local(s, write=write) as backend:
        yield backend


@contextmanager
def local(s: Settings, *, write: bool = True) -> Iterator[LocalBackend]:
    """The database file opened by this process (only when no server owns it); one-line failure otherwise."""
    from tuneloop.monitor.cli.local import LocalBackend
    from tuneloop.monitor.runtime import local as local_runtime
    from tuneloop.monitor.storage import StoreError

    with ExitStack() as stack:
        try:
            runtime = stack.enter_context(local_runtime(s, read_only=not write))
        except StoreError as e:
            fail(str(e))
        yield LocalBackend(runtime)
