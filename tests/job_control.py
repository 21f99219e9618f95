"""Hold a retrain job still (SIGSTOP) so a test acts on it in a known state instead of racing it.

A tiny job can finish between two polls; a stopped one cannot, and signals sent to it meanwhile
(the server's SIGTERM on cancel) take effect when it continues.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx


def running_job(client: httpx.Client, run_id: int, timeout: float = 120) -> dict[str, Any]:
    """The run once its job process exists (it has a pid), polled closely; fails if it ended first."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/v1/retrain/runs/{run_id}").json()
        if run.get("pid"):
            return run
        assert run["status"] in ("queued", "running"), f"the run ended before its job could be held: {run}"
        assert time.monotonic() < deadline, f"no job process for run {run_id} after {timeout} s: {run}"
        time.sleep(0.01)


@contextlib.contextmanager
def held(pid: int) -> Iterator[None]:
    """The process is stopped inside the block and continued after it (if it still exists)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
