"""The retrain runner of a replica on a shared PostgreSQL store: heartbeats, orphans, queued runs.

Any replica may accept a retrain trigger, but only the leader launches runs: a replica that does not
lead records the run as ``queued`` and this runner, on the leader, claims and starts it. Every
replica refreshes the heartbeat of the run it runs (a former leader keeps running the run it
started), and the leader fails runs whose replica stopped beating (it died).
On DuckDB one process triggers and runs, so nothing here is started.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneloop.monitor.retraining import RetrainService

from tuneloop.monitor.storage.errors import first_line

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
"""How often a replica refreshes the heartbeat of the run it runs (and the leader looks for queued runs)."""
OWNER_GONE_SECONDS = 30.0
"""A queued or running run whose replica has not beaten for this long is failed by the leader."""


def replica_name() -> str:
    """This process among the replicas: host, pid and a random suffix (a pid can be reused)."""
    import os
    import secrets
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class RunQueue:
    """A thread that beats for this replica's run and, while ``leads()``, picks up the queued ones."""

    def __init__(self, service: RetrainService, leads: Callable[[], bool],
                 interval: float = HEARTBEAT_SECONDS) -> None:
        self.service = service
        self.leads = leads
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tuneloop-run-queue", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """One beat; a store that does not answer is logged once until it answers again."""
        try:
            self.service.store.runs.beat(self.service.owner)
            if self.leads():
                self.service.recover(sole=False)
                self.service.pick_up()
        except Exception as e:
            if not self._failing:
                log.warning("retrain runner paused: the store does not answer (%s)", first_line(e))
            self._failing = True
            return
        if self._failing:
            log.info("retrain runner resumed: the store answers again")
        self._failing = False
