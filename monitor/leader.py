"""Which replica runs the background work: one leader per database, elected by PostgreSQL.

Several ``tuneloop serve`` processes on one PostgreSQL database all serve requests, but the
scheduled jobs (drift checks, retrain policies, retention) and the embedder must run once, not once
per replica. The leader is the process whose dedicated session holds the advisory lock
:data:`LEADER_LOCK` (``pg_try_advisory_lock``). The others try again every ``retry_seconds``. A
leader that dies (even by SIGKILL) ends its session, PostgreSQL releases the lock with it, and a
survivor takes it at its next try: failover takes at most ``retry_seconds`` plus the time the
database needs to notice the closed connection. A leader checks its session on the same beat and
steps down as soon as the session is gone (the database restarted), so two leaders overlap at most
one beat.

A database that stops answering without closing anything (a network partition) would leave the
check waiting: the leader gives the check ``check_seconds`` and steps down when it has no answer by
then, while its session asks the server to drop it only after :data:`SERVER_DEAD_CLIENT_SECONDS` of
silence. So an unreachable leader has stopped its jobs before PostgreSQL can hand the lock to another
replica.

On DuckDB one process owns the file: :class:`SoleLeader` is always the leader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from tuneloop.monitor.storage.errors import first_line

log = logging.getLogger(__name__)

LEADER_LOCK = 0x7475_6E6C
"""Advisory lock key held by the leader's session for as long as it leads."""

SERVER_DEAD_CLIENT_SECONDS = 30
"""The leader's session asks PostgreSQL to end it (and release the lock) after about this long without
an answer from the replica: TCP keepalives 15 s idle + 3 probes 5 s apart, and the same user timeout."""
_SESSION_OPTIONS = ("-c tcp_keepalives_idle=15 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 "
                    f"-c tcp_user_timeout={SERVER_DEAD_CLIENT_SECONDS * 1000}")


class SoleLeader:
    """The only process on its store: leads from :meth:`start` to :meth:`stop`."""

    def __init__(self, on_gain: Callable[[], None], on_lose: Callable[[], None]) -> None:
        self.on_gain, self.on_lose = on_gain, on_lose
        self.is_leader = False
        self.changes = 0

    def start(self) -> None:
        self.is_leader = True
        self.changes += 1
        self.on_gain()

    def stop(self) -> None:
        if self.is_leader:
            self.is_leader = False
            self.on_lose()


class AdvisoryLockLeader:
    """Leadership through a session advisory lock on a connection of its own (a thread keeps trying).

    ``on_gain`` runs when this process becomes leader, ``on_lose`` when it stops being one (session
    lost, or :meth:`stop`); both on the election thread, never concurrently.
    """

    def __init__(self, url: str, on_gain: Callable[[], None], on_lose: Callable[[], None],
                 retry_seconds: float = 2.0, check_seconds: float = 5.0) -> None:
        self.url = url
        self.on_gain, self.on_lose = on_gain, on_lose
        self.retry_seconds = max(0.05, float(retry_seconds))
        self.check_seconds = min(float(check_seconds), SERVER_DEAD_CLIENT_SECONDS / 2)
        self._lose_lock = threading.Lock()
        self.is_leader = False
        self.changes = 0
        """Times this process became leader."""
        self._con = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Try once now (so a lone replica leads from start-up), then keep trying in the background."""
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="tuneloop-leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Step down (closing the session releases the lock for the others at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.retry_seconds + 10)
        self._step_down("stopping")

    def _loop(self) -> None:
        while not self._stop.wait(self.retry_seconds):
            self._beat()

    def _beat(self) -> None:
        import psycopg

        from tuneloop.monitor.storage.pg_connect import connect

        try:
            if self._con is None or self._con.closed or self._con.broken:
                self._con = connect(self.url, application_name="tuneloop-leader", options=_SESSION_OPTIONS)
            if self.is_leader:
                self._check_session()
                return
            got = self._con.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK]).fetchall()[0][0]
        except psycopg.Error as e:
            self._step_down(f"session lost ({first_line(e)})")
            return
        if got and not self._stop.is_set():
            self.is_leader = True
            self.changes += 1
            log.info("this replica is now the leader: it runs the scheduled jobs and the embedder")
            try:
                self.on_gain()
            except Exception:
                log.exception("starting the leader's services failed")

    def _check_session(self) -> None:
        """The session (and so the lock) is still there; no answer within ``check_seconds`` steps down."""
        deadline = threading.Timer(self.check_seconds, self._lose,
                                   [f"the database did not answer within {self.check_seconds:g} s"])
        deadline.daemon = True
        deadline.start()
        try:
            self._con.execute("SELECT 1").fetchall()
        finally:
            deadline.cancel()

    def _step_down(self, why: str) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()
        self._lose(why)

    def _lose(self, why: str) -> None:
        """Stop leading (once, whichever thread notices first); the session may still hold the lock,
        in which case the next beat that gets an answer takes leadership back."""
        with self._lose_lock:
            if not self.is_leader:
                return
            self.is_leader = False
        log.warning("this replica is no longer the leader: %s", why)
        try:
            self.on_lose()
        except Exception:
            log.exception("stopping the leader's services failed")


class LeaderGauge:
    """``tuneloop_leader``: 1 on the replica that leads, 0 on the others (a Prometheus collector)."""

    def __init__(self, leads: Callable[[], bool]) -> None:
        self.leads = leads

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("tuneloop_leader", "1 when this replica runs the scheduled jobs and the embedder",
                                value=float(self.leads()))


def elect(url: str | None, on_gain: Callable[[], None], on_lose: Callable[[], None],
          retry_seconds: float, check_seconds: float = 5.0) -> SoleLeader | AdvisoryLockLeader:
    """The election for a store: by advisory lock on PostgreSQL (``url``), the sole process otherwise."""
    if url:
        return AdvisoryLockLeader(url, on_gain, on_lose, retry_seconds, check_seconds)
    return SoleLeader(on_gain, on_lose)
