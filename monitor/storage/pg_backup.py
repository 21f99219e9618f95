"""Backups of the PostgreSQL store with PostgreSQL's own tools: ``pg_dump`` of one exported snapshot, and
``pg_restore`` into an empty database.

The dump runs from a snapshot that a read-only REPEATABLE READ transaction of the store exports
(``pg_export_snapshot``); the same transaction counts every table. So the manifest's row counts describe
exactly the dumped data, and writers are never blocked. The password travels in ``PGPASSWORD``, never
on a command line other users can read.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from tuneloop.monitor.config import redact_password
from tuneloop.monitor.storage.errors import StoreError, StoreFull, StoreLockedError, StoreUnavailable, is_disk_full
from tuneloop.monitor.storage.pg_connect import connect

DUMP_FILE = "tuneloop.dump"
"""The ``pg_dump`` custom-format archive inside a backup's ``db`` directory."""


def pg_tool(name: str) -> str:
    """The path of a PostgreSQL client program (``pg_dump``, ``pg_restore``): on PATH, else the newest
    ``/usr/lib/postgresql/*/bin``; StoreUnavailable (HTTP 503, with the fix) when neither has it."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parent.parent.name))
    if versions:
        return versions[-1]
    raise StoreUnavailable(f"{name} is missing: install PostgreSQL's client programs "
                           "(apt-get install postgresql-client)")


def _client(url: str) -> tuple[str, dict[str, str]]:
    """A conninfo string without the password, and an environment that carries it."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    password = params.pop("password", None)
    env = {**os.environ, **({"PGPASSWORD": str(password)} if password is not None else {})}
    return psycopg.conninfo.make_conninfo(**params), env


def _run(tool: str, args: list[str], url: str, what: str) -> None:
    """Run a client program against ``url``; StoreFull when it ran out of disk, StoreError otherwise."""
    conninfo, env = _client(url)
    # restore_signals=False: a file size limit this process ignores gives the tool EFBIG, not SIGXFSZ
    done = subprocess.run([pg_tool(tool), *args, "--dbname", conninfo], capture_output=True, text=True, env=env,
                          restore_signals=False)
    if done.returncode:
        detail = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
        if done.returncode == -signal.SIGXFSZ:
            detail = "file too large: the file size limit was reached"
        if is_disk_full(OSError(detail)):
            raise StoreFull(f"{what}: the disk is full ({detail})")
        raise StoreError(f"{what} of {redact_password(url)} failed: {detail}")


def table_counts(cur: Any) -> dict[str, int]:
    """Rows per table of the ``public`` schema, by table name."""
    names = [r[0] for r in cur.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "AND table_type = 'BASE TABLE' ORDER BY table_name").fetchall()]
    return {t: int(cur.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0]) for t in names}


def dump(store: Any, directory: Path) -> tuple[dict[str, int], int]:
    """``pg_dump`` the store's database into ``directory/tuneloop.dump`` from one snapshot; returns the
    row count of each table and the schema version, read in that same snapshot."""
    directory.mkdir(parents=True)
    cur = store.cursor()
    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        snapshot = cur.execute("SELECT pg_export_snapshot()").fetchall()[0][0]
        _run("pg_dump", ["--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
                         f"--file={directory / DUMP_FILE}"], store.url, "pg_dump")
        tables = table_counts(cur)
        schema_version = int(cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()[0][0])
    finally:
        with contextlib.suppress(psycopg.Error, StoreError):
            cur.execute("ROLLBACK")  # a read-only snapshot: nothing to commit
    return tables, schema_version


def restore_dump(directory: Path, url: str, *, overwrite: bool, stamp: str) -> tuple[dict[str, int], str | None]:
    """``pg_restore`` a dump written by :func:`dump` into the database at ``url``, in one transaction.

    The database must have no other client (stop every ``tuneloop serve`` first): StoreLockedError.
    Tables already in it are refused (FileExistsError) unless ``overwrite``; then its ``public`` schema
    is kept, renamed ``replaced_<stamp>``, and put back if the restore fails. Returns the restored rows
    per table and the name of the kept schema (None when the database was empty).
    """
    with connect(url) as con:
        others = con.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'").fetchone()[0]
        if others:
            raise StoreLockedError(f"{redact_password(url)} is in use by {others} other connection(s) (stop tuneloop "
                                   "serve first); restore never overwrites a database in use")
        existing = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
                               ).fetchone()[0]
        replaced = None
        if existing:
            if not overwrite:
                raise FileExistsError(f"{redact_password(url)} already holds {existing} tables; restore into an "
                                      "empty database or pass overwrite (--force)")
            replaced = f"replaced_{stamp}"
            with con.transaction():
                con.execute(f"ALTER SCHEMA public RENAME TO {replaced}")
                con.execute("CREATE SCHEMA public")
        try:
            _run("pg_restore", ["--exit-on-error", "--single-transaction", "--no-owner", "--no-privileges",
                                str(directory / DUMP_FILE)], url, "pg_restore")
        except BaseException:
            if replaced:  # the restore rolled back as a whole: put the previous tables back
                with con.transaction():
                    con.execute("DROP SCHEMA public CASCADE")
                    con.execute(f"ALTER SCHEMA {replaced} RENAME TO public")
            raise
        return table_counts(con.cursor()), replaced
