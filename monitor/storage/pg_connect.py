"""One way to open a PostgreSQL connection, with the timeouts every tuneloop session needs."""

from __future__ import annotations

from typing import Any

import psycopg

CONNECT_TIMEOUT_SECONDS = 5

DEAD_PEER_PARAMS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                    "tcp_user_timeout": 10_000}
"""libpq TCP settings: a connection whose server vanished without a word (network partition, powered-off
host) errors within about 10 s instead of waiting on the operating system's defaults (two hours for an
idle socket, about 15 minutes for unacknowledged data)."""


def connect(url: str, **params: Any) -> psycopg.Connection:
    """An autocommit connection that fails fast: 5 s to connect, about 10 s to notice a vanished server."""
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                           **{**DEAD_PEER_PARAMS, **params})
