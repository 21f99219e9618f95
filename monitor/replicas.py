"""Keeping one replica's in-memory state in step with the database that several replicas share.

Each ``tuneloop serve`` process holds the champion it serves and the token list in memory. With
several replicas on one PostgreSQL database another replica can change either, so each process
re-reads them: at once when PostgreSQL announces a champion change
(:class:`~tuneloop.monitor.storage.notify.ChampionListener`), and every ``store.champion_poll_seconds``
anyway. A champion changed anywhere is served everywhere within that poll plus the model's load
time; a revoked token stops working everywhere within the poll.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tuneloop.monitor import registry

if TYPE_CHECKING:
    from tuneloop.monitor.auth import TokenRegistry
    from tuneloop.monitor.serving import Serving
    from tuneloop.monitor.storage import Store

log = logging.getLogger(__name__)


def refresh_champions(store: Store, serving: Serving, project: str | None = None) -> list[str]:
    """Serve the registry's champion wherever this process serves another; returns the projects swapped.

    ``project`` None: every project this process has loaded. A project not loaded yet is left alone (it
    loads the current champion on first use). The model loads outside any request, under the
    project's swap lock, so a promotion running in this process at the same time is not undone.
    """
    swapped = []
    for name in [project] if project else list(serving.readiness_info()):
        srv = serving.get(name)
        if srv is None:
            continue
        row = registry.champion(store, name)
        if row is None or row["version"] == srv.version:
            continue
        with srv.swap_lock:
            row = registry.champion(store, name)  # again: a local promotion may have won the lock
            if row is not None and row["version"] != srv.version:
                srv.swap(row["version"], row["path"])
                log.info("champion of %s changed elsewhere: now serving %s", name, row["version"])
                swapped.append(name)
    return swapped


class ReplicaSync:
    """The callback of the champion listener: one project on a notification, everything on a poll."""

    def __init__(self, store: Store, serving: Serving, tokens: TokenRegistry) -> None:
        self.store, self.serving, self.tokens = store, serving, tokens
        self.swaps = 0

    def __call__(self, project: str | None) -> None:
        if project is None:
            self.tokens.refresh()
        self.swaps += len(refresh_champions(self.store, self.serving, project))
