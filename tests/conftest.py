"""Shared fixtures: a real tuneloop server on a free loopback port.

``running_server(directory, *, subprocess=False, **sections)`` starts one and returns a
:class:`RunningServer` (``.url``, ``.settings``, ``.tokens`` {role: token}, ``.client(role)``,
``.stop()``, ``.restart()``, ``.kill()``). ``sections`` override config sections, as for
``load_settings``: ``running_server(tmp_path, server={"max_batch": 10})``.

* thread mode (default, fast): ``create_app`` under uvicorn in a background thread of the test
  process; ``.store`` is the server's own Store (read from the test freely).
* subprocess mode: ``python -m tuneloop.monitor.cli --config ... serve`` in a child process, for
  restart and kill tests; ``.log_path`` has its output.

Tokens for every role are created in the database before the server starts. Background services
that would load the packaged encoder (the embedder) are off unless a test turns them on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess as sp
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from postgres_server import postgres_server, postgres_url, store_backend  # noqa: F401 (fixtures: real PostgreSQL)

from tuneloop.monitor.auth import ROLES, create_token
from tuneloop.monitor.config import Settings, load_settings
from tuneloop.monitor.runtime import open_store
from tuneloop.monitor.storage import Store

READY_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_in_process(*args: str, cwd: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """The real ``tuneloop`` command in this process, on the data dir ``cwd/d``: a subprocess would spend
    most of its time importing torch."""
    from typer.testing import CliRunner

    from tuneloop.monitor.cli import app

    return CliRunner().invoke(app, ["--data-dir", str(cwd / "d"), *args], env=env, catch_exceptions=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_dumps(sections: dict[str, dict[str, Any]]) -> str:
    """Section dicts -> TOML text (enough for tuneloop configs; None values are left out)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


@dataclass
class RunningServer:
    url: str
    settings: Settings
    tokens: dict[str, str]
    subprocess: bool
    config_path: Path
    store: Store | None = None
    log_path: Path | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)
    _server: uvicorn.Server | None = field(default=None, repr=False)
    _proc: sp.Popen | None = field(default=None, repr=False)
    preexec: Any = field(default=None, repr=False)
    """Subprocess mode: a callable run in the child before ``serve`` starts (e.g. to set resource limits)."""

    def headers(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    def client(self, role: str | None = "admin", **kwargs: Any) -> httpx.Client:
        """An httpx client for this server, authenticated as ``role`` (None: no token)."""
        return httpx.Client(base_url=self.url, headers=self.headers(role), timeout=kwargs.pop("timeout", 30), **kwargs)

    @property
    def running(self) -> bool:
        if self.subprocess:
            return self._proc is not None and self._proc.poll() is None
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> RunningServer:
        self.spawn()
        self.wait_ready()
        return self

    def spawn(self) -> None:
        """Start the server without waiting for it to be ready (e.g. to kill it during start-up)."""
        if self.subprocess:
            self.log_path = self.settings.data_dir / "server.log"
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
            self._proc = sp.Popen(
                [sys.executable, "-m", "tuneloop.monitor.cli", "--config", str(self.config_path), "serve"],
                stdout=log, stderr=sp.STDOUT, preexec_fn=self.preexec,
            )
            log.close()
        else:
            from tuneloop.monitor.api.app import create_app

            if self.store is None:
                self.store = open_store(self.settings)
            config = uvicorn.Config(create_app(self.settings, store=self.store), host="127.0.0.1",
                                    port=self.settings.server.port, log_level="warning", access_log=False)
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._server.run, daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"server exited during start-up{self._log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return ":\n" + self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        """Graceful stop (the writer drains its queue); thread mode keeps ``.store`` open for asserts."""
        if self.subprocess and self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(30)
                except sp.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
            self._proc = None
        elif self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(30)
            self._server = self._thread = None

    def kill(self) -> None:
        """SIGKILL the server process (subprocess mode): nothing gets to clean up."""
        assert self.subprocess and self._proc is not None, "kill() needs subprocess=True"
        self._proc.kill()
        self._proc.wait(10)
        self._proc = None

    def restart(self) -> RunningServer:
        """Stop (if running) and start again on the same port and data directory."""
        if self.running:
            self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self.store is not None:
            self.store.close()
            self.store = None


def start_server(directory: Path, *, subprocess: bool = False, **sections: dict[str, Any]) -> RunningServer:
    """Create the database with a token per role, then serve it on a free loopback port."""
    sections = {name: dict(values) for name, values in sections.items()}
    sections.setdefault("paths", {})["data_dir"] = str(Path(directory) / "data")
    sections.setdefault("server", {}).setdefault("port", free_port())
    sections["server"]["host"] = "127.0.0.1"
    if "embedder" in Settings.model_fields:
        sections.setdefault("embedder", {}).setdefault("enabled", False)
    settings = load_settings(**sections)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config_path = settings.data_dir / "test-config.toml"
    config_path.write_text(toml_dumps(sections), encoding="utf-8")
    store = open_store(settings)
    tokens = {role: create_token(store, role, f"test-{role}") for role in ROLES}
    if subprocess:
        store.close()
        store = None
    server = RunningServer(url=f"http://127.0.0.1:{settings.server.port}", settings=settings, tokens=tokens,
                           subprocess=subprocess, config_path=config_path, store=store)
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


@pytest.fixture
def running_server(tmp_path):  # type: ignore[no-untyped-def]
    """Factory: ``running_server(directory=tmp_path, *, subprocess=False, **sections)``; all stopped at teardown."""
    started: list[RunningServer] = []

    def factory(
        directory: Path | None = None, *, subprocess: bool = False, **sections: dict[str, Any]
    ) -> RunningServer:
        server = start_server(Path(directory or tmp_path), subprocess=subprocess, **sections)
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.close()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One default server (thread mode) shared by the tests of a module."""
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    server.close()


# -- parallel runs (pytest-xdist, as `make test` runs the suite) --------------------------------------------

LONG_MODULES = ["test_demo.py", "test_replicas.py", "test_drift.py", "test_packaged_bases.py", "test_soak.py",
                "test_replica_retrain.py", "test_crash.py", "test_reference_rescore.py", "test_ray_launcher.py",
                "test_registry_safety.py"]
"""Started first under ``--dist loadfile --no-loadscope-reorder``: whole files go to one worker each, in
collection order, so the longest ones must not be left until the end, with the other worker idle."""


def pytest_configure(config):  # type: ignore[no-untyped-def]
    if hasattr(config, "workerinput"):  # a worker: one torch thread each, so two workers share two cores
        os.environ["OMP_NUM_THREADS"] = "1"  # servers, jobs and the demo started as child processes
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    if hasattr(config, "workerinput"):  # every worker sorts alike, as xdist requires
        rank = {name: i for i, name in enumerate(LONG_MODULES)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# -- a tiny real classifier, trained once per session (random 2-layer BERT, keyword sentiment) ---------

TINY_LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="session")
def sentiment_base(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A tiny base model dir whose vocabulary holds the keyword-sentiment words."""
    from tuneloop.retrain import tiny

    words = tiny.POSITIVE_WORDS + tiny.NEGATIVE_WORDS + tiny.NEUTRAL_WORDS
    return tiny.make_tiny_base(tmp_path_factory.mktemp("sentiment-base"), words)


@pytest.fixture(scope="session")
def sentiment_settings(sentiment_base):  # type: ignore[no-untyped-def]
    """ModelSettings that make the tiny base learn keyword sentiment in a few seconds."""
    from tuneloop.monitor.config import ModelSettings

    return ModelSettings(base=str(sentiment_base), epochs=8, learning_rate=3e-3, batch_size=16, max_length=32)


@pytest.fixture(scope="session")
def sentiment_trained(sentiment_base, sentiment_settings):  # type: ignore[no-untyped-def]
    """TrainResult of the tiny base trained on 240 keyword-sentiment texts."""
    from tuneloop.retrain.tiny import keyword_sentiment
    from tuneloop.retrain.trainer import train

    return train(keyword_sentiment(240), TINY_LABELS, sentiment_settings, progress=False)


@pytest.fixture(scope="session")
def sentiment_version(tmp_path_factory, sentiment_trained):  # type: ignore[no-untyped-def]
    """The trained tiny classifier written as version ``v1`` in a session models dir."""
    from tuneloop.retrain.versions import write_version

    models = tmp_path_factory.mktemp("sentiment-models")
    r = sentiment_trained
    return write_version(models, "v1", r.classifier, r.metrics, r.manifest)


# -- reliability figures: numbers the reliability tests report, printed at the end of the run ----------

RELIABILITY_FIGURES: list[tuple[str, str]] = []
FIGURE_PROPERTY = "reliability figure"


@pytest.fixture
def figure(request):  # type: ignore[no-untyped-def]
    """``figure(name, value)``: a figure printed in the "reliability figures" section of the summary.

    Kept in the test's report (``user_properties``), so figures measured in parallel workers reach the
    summary printed by the main process too."""

    def record(name: str, value: Any) -> None:
        request.node.user_properties.append((FIGURE_PROPERTY, (name, str(value))))
        print(f"{name}: {value}")

    return record


def pytest_runtest_logreport(report):  # type: ignore[no-untyped-def]
    if report.when == "teardown":  # the last report of a test carries every figure it recorded
        RELIABILITY_FIGURES.extend(tuple(value) for key, value in report.user_properties if key == FIGURE_PROPERTY)


def pytest_terminal_summary(terminalreporter):  # type: ignore[no-untyped-def]
    if RELIABILITY_FIGURES:
        terminalreporter.section("reliability figures")
        for name, value in RELIABILITY_FIGURES:
            terminalreporter.line(f"{name}: {value}")


def wait_run(client: httpx.Client, run_id: int, timeout: float = 400,
             path: str = "/v1/retrain/runs/{run_id}") -> dict[str, Any]:
    """Poll a retrain (or training) run until it leaves queued/running; the answer of its last poll."""
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = client.get(path.format(run_id=run_id)).json()
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s: {run}")
