"""Champion changes announced by PostgreSQL itself, so every replica hot-swaps at once.

A trigger on ``promotions`` (every promotion and rollback adds a row there, whichever replica or
CLI wrote it) calls ``pg_notify`` with the project; PostgreSQL delivers it to every listening
session when the transaction commits, never before. :class:`ChampionListener` holds one such
session per process. A notification can be missed (the listener was reconnecting, the database
restarted), so the listener also calls back every ``poll_seconds`` with ``None`` ("check every
project"): no replica serves a stale champion longer than that poll plus the model's load time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from tuneloop.monitor.storage.errors import StoreUnavailable, first_line
from tuneloop.monitor.storage.pg_connect import connect

log = logging.getLogger(__name__)

CHANNEL = "tuneloop_champion"
WAIT_SLICE_SECONDS = 0.5
"""How long one wait for a notification lasts: the longest a stop waits for the thread."""

CHAMPION_TRIGGER_SQL = f"""
CREATE OR REPLACE FUNCTION tuneloop_notify_champion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.project);
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS champion_changed ON promotions;
CREATE TRIGGER champion_changed AFTER INSERT ON promotions
    FOR EACH ROW EXECUTE FUNCTION tuneloop_notify_champion();
"""
"""Installed (idempotently) by the PostgreSQL store when it migrates."""


class ChampionListener:
    """A thread on its own connection: ``on_change(project)`` per notification, ``on_change(None)`` per poll.

    The callback runs on this thread (a model load there keeps requests flowing). Connection errors
    are retried every ``poll_seconds``; after a reconnect the first call is a poll, since
    notifications sent meanwhile are gone. An outage (no connection, or a callback the database did
    not answer) is logged once when it starts and once when a poll succeeds again, not per retry.
    """

    def __init__(self, url: str, on_change: Callable[[str | None], None], poll_seconds: float) -> None:
        self.url = url
        self.on_change = on_change
        self.poll_seconds = max(0.1, float(poll_seconds))
        self.notifications = 0
        self.outages = 0
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tuneloop-champion-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WAIT_SLICE_SECONDS + 10)

    def _call(self, project: str | None) -> None:
        try:
            self.on_change(project)
        except (psycopg.Error, StoreUnavailable) as e:  # the next notification or poll tries again
            self._down(e)
            return
        except Exception:
            log.exception("refreshing the champion of %s failed", project or "every project")
            return
        if project is None:
            self._up()

    def _down(self, error: BaseException) -> None:
        """The database stopped answering: one warning for the whole outage."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self.outages += 1
        log.warning("champion listener: PostgreSQL does not answer (%s); serving the loaded champions and "
                    "retrying every %g s", first_line(error), self.poll_seconds)

    def _up(self) -> None:
        """A poll succeeded: the outage, if any, is over."""
        if self._down_since is None:
            return
        log.warning("champion listener: PostgreSQL answers again after %.0f s; champions re-checked",
                    time.monotonic() - self._down_since)
        self._down_since = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                con = connect(self.url)
            except psycopg.Error as e:
                self._down(e)
                self._stop.wait(self.poll_seconds)
                continue
            try:
                con.execute(f"LISTEN {CHANNEL}")
                self._listen(con)
            except psycopg.Error as e:
                if not self._stop.is_set():
                    self._down(e)
            finally:
                con.close()

    def _listen(self, con: psycopg.Connection) -> None:
        """Poll first (what changed while nobody listened), then act on each notification as it comes."""
        next_poll = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_poll:
                self._call(None)
                next_poll = time.monotonic() + self.poll_seconds
            changed = {note.payload for note in con.notifies(timeout=WAIT_SLICE_SECONDS, stop_after=1)}
            if changed:  # take what else is queued, without waiting
                changed |= {note.payload for note in con.notifies(timeout=0.01)}
            self.notifications += len(changed)
            for project in sorted(changed):
                if not self._stop.is_set():
                    self._call(project)
