"""Leader election on a real PostgreSQL server when the leader's database stops answering.

A network partition closes nothing: the leader's check would wait, and without a deadline the old
leader would keep running the scheduled jobs. The partition is played by a TCP relay between the
leader and the server that stops relaying without closing either side.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

pytest.importorskip("psycopg")

from tuneloop.monitor.leader import SERVER_DEAD_CLIENT_SECONDS, AdvisoryLockLeader  # noqa: E402

RETRY, CHECK = 0.2, 1.0


class Relay:
    """Forwards one loopback port to a server; :meth:`hold` stops relaying (sockets stay open), :meth:`cut`
    closes every relayed connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.held.is_set():  # a partition: nothing gets through, nothing is closed
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass

    def hold(self) -> None:
        self.held.set()

    def cut(self) -> None:
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def through(relay: Relay, url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}"))


def wait_until(condition, timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_leader_cut_off_from_its_database_stops_leading_before_the_lock_can_pass(postgres_url):
    parts = urlsplit(postgres_url)
    relay = Relay(parts.hostname, parts.port)
    events: dict[str, list[str]] = {"a": [], "b": []}
    a = AdvisoryLockLeader(through(relay, postgres_url), lambda: events["a"].append("gain"),
                           lambda: events["a"].append("lose"), retry_seconds=RETRY, check_seconds=CHECK)
    b = AdvisoryLockLeader(postgres_url, lambda: events["b"].append("gain"), lambda: events["b"].append("lose"),
                           retry_seconds=RETRY, check_seconds=CHECK)
    try:
        a.start()
        b.start()
        assert a.is_leader and not b.is_leader
        # The leader's session asks the server to drop it after SERVER_DEAD_CLIENT_SECONDS of silence,
        # far beyond the leader's own deadline.
        timeout_ms = a._con.execute("SHOW tcp_user_timeout").fetchone()[0]
        assert timeout_ms == str(SERVER_DEAD_CLIENT_SECONDS * 1000), timeout_ms
        assert RETRY + CHECK < SERVER_DEAD_CLIENT_SECONDS

        relay.hold()
        stepped_down = wait_until(lambda: not a.is_leader, timeout=RETRY + CHECK + 5)
        assert stepped_down <= RETRY + CHECK + 1.0, stepped_down
        assert events["a"] == ["gain", "lose"]
        # The server still holds the old leader's session (nothing was closed), so nobody else leads:
        # leadership is never held by two replicas at once.
        time.sleep(3 * RETRY)
        assert not b.is_leader and events["b"] == []

        relay.cut()  # the connection ends: the server drops the session and its lock
        wait_until(lambda: b.is_leader, timeout=10)
        assert events["b"] == ["gain"] and not a.is_leader
    finally:
        relay.cut()
        b.stop()
        a.stop()

