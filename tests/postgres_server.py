"""A real PostgreSQL server for tests: Debian's ``postgresql`` binaries, ``initdb`` + ``pg_ctl`` in a
temp dir on a free loopback port, run as the unprivileged ``postgres`` user (initdb refuses root).

Without the binaries the tests that need it skip with the reason, except in CI (CI=true), where they
fail with the same message. ``postgres_url`` gives each test its own fresh database.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess as sp
import tempfile
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest

from tuneloop.monitor.storage import Store, open_postgres

SERVER_USER = "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binaries() -> Path:
    """The newest installed PostgreSQL's bin directory, or skip/fail with how to get one."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name))
    message = None
    if not found:
        message = "PostgreSQL is missing: no /usr/lib/postgresql/*/bin/pg_ctl (apt-get install postgresql)"
    elif importlib.util.find_spec("psycopg") is None:
        message = "psycopg is missing (pip install 'tuneloop[postgres]')"
    else:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            message = f"PostgreSQL needs the unprivileged system user {SERVER_USER!r} (apt-get install postgresql)"
    if message:
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Path(found[-1]).parent


class PostgresServer:
    """One throw-away cluster: ``start()``, ``stop()`` (fast shutdown), ``remove()``; ``url(db)``."""

    def __init__(self) -> None:
        self.bin = _binaries()
        self.root = Path(tempfile.mkdtemp(prefix="tuneloop-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._databases = count(1)
        user = pwd.getpwnam(SERVER_USER)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        as_user = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
        done = sp.run([*as_user, str(self.bin / tool), *args], capture_output=True, text=True, cwd=self.root)
        if done.returncode:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def crash(self) -> None:
        """Immediate shutdown: every server process quits at once, without a checkpoint, so the next
        start replays the WAL (PostgreSQL's own way to stop as a crash would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = f"t{next(self._databases)}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, stopped and removed at the end."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh database on the session's server."""
    return postgres_server.new_database()


@pytest.fixture(params=["duckdb", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> Callable[[], Store]:
    """Opens a new store on one backend (the test runs once per backend): a DuckDB file in the test's
    temp dir, or a fresh database on the session's PostgreSQL server. Each call opens it again."""
    if request.param == "duckdb":
        path = request.getfixturevalue("tmp_path") / "t.duckdb"
        return lambda: Store(path)
    url = request.getfixturevalue("postgres_url")
    return lambda: open_postgres(url)
