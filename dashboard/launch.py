"""Starting the dashboard (and, for ``tuneloop up``, the server) as child processes.

The dashboard is a Streamlit script, so it runs in its own process: ``python -m streamlit run
dashboard/app.py`` with the connection passed through the environment (``TUNELOOP_CONFIG`` names
the TOML file; ``TUNELOOP_DASHBOARD__SERVER_URL`` / ``__TOKEN`` the server and its token).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

APP = Path(__file__).resolve().parent / "app.py"
THEME = {"primaryColor": "#4f46e5", "base": "light"}


def streamlit_command(host: str, port: int) -> list[str]:
    """The command that serves the dashboard on ``host:port`` (headless, no usage stats)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
           "--server.headless", "true", "--server.address", host, "--server.port", str(port),
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
           "--server.fileWatcherType", "none"]
    for key, value in THEME.items():
        cmd += [f"--theme.{key}", value]
    return cmd


def dashboard_env(server_url: str, token: str | None = None, config: str | os.PathLike[str] | None = None,
                  base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the dashboard process: the caller's, plus where the server is and how to sign in."""
    env = dict(os.environ if base is None else base)
    env["TUNELOOP_DASHBOARD__SERVER_URL"] = server_url
    if token:
        env["TUNELOOP_DASHBOARD__TOKEN"] = token
    if config is not None:
        env["TUNELOOP_CONFIG"] = str(Path(config).resolve())
    return env


def start_dashboard(host: str, port: int, env: Mapping[str, str], **popen: object) -> subprocess.Popen:
    """Start Streamlit serving the dashboard; returns the process (see :func:`wait_for`)."""
    return subprocess.Popen(streamlit_command(host, port), env=dict(env), **popen)  # type: ignore[call-overload]


def run_dashboard(host: str, port: int, env: Mapping[str, str]) -> int:
    """``tuneloop dashboard``: run Streamlit until it exits, Ctrl-C or SIGTERM (which stops it too)."""
    with _interrupt_on_sigterm():
        proc = start_dashboard(host, port, env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            stop([proc])


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt meanwhile, so children are stopped rather than orphaned."""

    def _raise(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def server_command(config: str | os.PathLike[str] | None, data_dir: str | os.PathLike[str] | None,
                   host: str, port: int) -> list[str]:
    """``tuneloop serve`` as a child process with the same config and data directory."""
    cmd = [sys.executable, "-m", "tuneloop.monitor.cli"]
    if config is not None:
        cmd += ["--config", str(config)]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return cmd + ["serve", "--host", host, "--port", str(port)]


def wait_for(url: str, procs: Sequence[subprocess.Popen] = (), timeout: float = 60.0) -> bool:
    """Poll ``url`` until it answers 200; False on timeout or when one of ``procs`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def stop(procs: Sequence[subprocess.Popen], timeout: float = 15.0) -> None:
    """Terminate children politely (SIGTERM), then kill what is left."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def run_together(server_cmd: list[str], server_url: str, dashboard_host: str, dashboard_port: int,
                 env: Mapping[str, str], echo=print, timeout: float = 120.0) -> int:  # type: ignore[no-untyped-def]
    """``tuneloop up``: start the server, wait until it answers, start the dashboard, print both URLs,
    and keep both running until Ctrl-C / SIGTERM or until one of them exits (then stop the other).

    Returns the exit code: 0 after an interrupt, 1 when a process failed to start or died.
    """
    with _interrupt_on_sigterm():
        procs: list[subprocess.Popen] = []
        try:
            server = subprocess.Popen(server_cmd, env=dict(env))
            procs.append(server)
            if not wait_for(f"{server_url}/healthz", procs, timeout):
                echo(f"the server did not start (exit code {server.poll()}); see its messages above")
                return 1
            dash = start_dashboard(dashboard_host, dashboard_port, env)
            procs.append(dash)
            dash_url = f"http://{dashboard_host}:{dashboard_port}"
            if not wait_for(f"{dash_url}/_stcore/health", procs, timeout):
                echo(f"the dashboard did not start (exit code {dash.poll()}); see its messages above")
                return 1
            echo("tuneloop is up")
            echo(f"  server:    {server_url}   (API docs: {server_url}/docs)")
            echo(f"  dashboard: {dash_url}")
            echo("Ctrl-C stops both.")
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
            dead = next(p for p in procs if p.poll() is not None)
            echo(f"{'server' if dead is server else 'dashboard'} exited with code {dead.returncode}; stopping")
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            stop(procs)
