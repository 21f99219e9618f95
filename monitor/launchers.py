"""Where a retrain job runs: a child process of the server (``local``) or a job on a Ray cluster (``ray``).

The job is file-in/file-out (a Parquet snapshot in; a version directory, progress lines and a log
out), so a launcher only starts its command, waits for it under a time limit, stops it on cancel,
and says how it ended. The run's files must be at the same paths for the job: on this machine, or
on a path every Ray node shares (as must the server's Python environment, whose interpreter runs
the job).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tuneloop.retrain.settings import RetrainSettings

from tuneloop.monitor.storage.errors import first_line

log = logging.getLogger(__name__)

RAY_POLL_SECONDS = 1.0
RAY_LOST_AFTER_SECONDS = 30.0
"""A cluster that answers no status request for this long has lost the job: the run fails."""


@dataclass(frozen=True)
class Exit:
    """How a job ended: ``code`` 0 is success, a negative code the signal that ended it."""

    code: int
    timed_out: bool = False
    reason: str | None = None
    """Set when the launcher knows the cause better than the job's own progress and log."""


class LaunchError(Exception):
    """The job could not be started (e.g. the Ray cluster cannot be reached); the message says why."""


class Job(Protocol):
    pid: int | None
    """The job's process id on this machine (None when it runs elsewhere)."""

    def cancel(self) -> None:
        """Ask the job to stop (SIGTERM); it is killed only if it then outlives the time limit."""

    def wait(self, timeout: float, grace: float) -> Exit:
        """Block until the job ends; past ``timeout`` stop it, and kill it ``grace`` seconds later."""


class Launcher(Protocol):
    def start(self, cmd: list[str], env: dict[str, str], log_path: Path) -> Job:
        """Start ``cmd`` with ``env`` added to its environment, its output appended to ``log_path``."""


# ---- local: a child process --------------------------------------------------------------------


class LocalJob:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float, grace: float) -> Exit:
        try:
            return Exit(self.proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            return Exit(rc, timed_out=True)


class LocalLauncher:
    """The job as a child process of the server: no cluster, nothing to install."""

    def start(self, cmd: list[str], env: dict[str, str], log_path: Path) -> LocalJob:
        with log_path.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **env})
        return LocalJob(proc)


# ---- ray: a job on a Ray cluster ---------------------------------------------------------------


class RayJob:
    """A submitted Ray job, polled over the cluster's job API; its log is copied into the run's log."""

    pid: int | None = None

    def __init__(self, client: Any, submission_id: str, address: str, log_path: Path) -> None:
        self.client, self.submission_id, self.address, self.log_path = client, submission_id, address, log_path
        self._copied = 0

    def cancel(self) -> None:
        try:
            self.client.stop_job(self.submission_id)
        except Exception as e:  # the cluster went away: the job ends with it, the wait reports that
            log.warning("could not stop Ray job %s at %s: %s", self.submission_id, self.address, e)

    def wait(self, timeout: float, grace: float) -> Exit:
        ended = self._poll_until(time.monotonic() + timeout)
        if ended is not None:
            return ended
        self.cancel()  # Ray sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (= grace)
        ended = self._poll_until(time.monotonic() + grace + 10 * RAY_POLL_SECONDS)
        return Exit(ended.code if ended else -signal.SIGKILL, timed_out=True)

    def _poll_until(self, deadline: float) -> Exit | None:
        """The job's exit once it ends, or None at ``deadline``; an unreachable cluster ends it."""
        last_answer = time.monotonic()
        while True:
            try:
                status = self.client.get_job_status(self.submission_id)
                last_answer = time.monotonic()
                self._copy_log()
                if status.is_terminal():
                    return self._exit(str(status.value))
            except Exception as e:
                if time.monotonic() - last_answer > RAY_LOST_AFTER_SECONDS:
                    return Exit(1, reason=f"lost contact with the Ray cluster at {self.address} for "
                                          f"{RAY_LOST_AFTER_SECONDS:.0f} s: {first_line(e, 300)}")
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(RAY_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def _exit(self, status: str) -> Exit:
        if status == "SUCCEEDED":
            return Exit(0)
        if status == "STOPPED":
            return Exit(-signal.SIGTERM, reason=f"the Ray job {self.submission_id} was stopped")
        info = self.client.get_job_info(self.submission_id)
        code = getattr(info, "driver_exit_code", None)
        if code is None:  # it never ran (e.g. no node has the resources it asked for)
            return Exit(1, reason=f"the Ray job {self.submission_id} failed: {first_line(info.message, 300)}")
        return Exit(code or 1)

    def _copy_log(self) -> None:
        text = self.client.get_job_logs(self.submission_id)
        if len(text) > self._copied:
            with self.log_path.open("a", encoding="utf-8") as out:
                out.write(text[self._copied:])
            self._copied = len(text)


class RayLauncher:
    """Submits the job command to a Ray cluster's job API (the dashboard's HTTP address).

    Ray's ``RAY_API_SERVER_ADDRESS``/``RAY_ADDRESS`` environment variables, when set, take
    precedence over ``address`` inside Ray's client.
    """

    def __init__(self, address: str, num_cpus: float = 1, num_gpus: float = 0, kill_grace: float = 20.0) -> None:
        self.address, self.num_cpus, self.num_gpus, self.kill_grace = address, num_cpus, num_gpus, kill_grace

    def start(self, cmd: list[str], env: dict[str, str], log_path: Path) -> RayJob:
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as e:
            raise LaunchError(f"retrain.launcher is 'ray' but Ray cannot be imported ({e}); "
                              "install tuneloop[ray]") from None
        submission_id = f"tuneloop-{uuid.uuid4().hex[:12]}"
        try:
            client = JobSubmissionClient(self.address)
            client.submit_job(
                entrypoint=shlex.join(cmd), submission_id=submission_id,
                entrypoint_num_cpus=self.num_cpus, entrypoint_num_gpus=self.num_gpus,
                runtime_env={"env_vars": {**env, "RAY_JOB_STOP_WAIT_TIME_S": str(int(self.kill_grace))}},
                metadata={"tuneloop_log": str(log_path)})
        except Exception as e:
            reason = first_line(e, 300)
            raise LaunchError(f"the Ray cluster at {self.address} did not accept the job: {reason}") from None
        log.info("retrain job submitted to Ray at %s as %s", self.address, submission_id)
        return RayJob(client, submission_id, self.address, log_path)


def launcher_for(retrain: RetrainSettings, kill_grace: float) -> Launcher:
    """The launcher ``retrain.launcher`` names (settings validation has already checked its values)."""
    if retrain.launcher == "ray":
        return RayLauncher(retrain.ray_address, retrain.ray_num_cpus, retrain.ray_num_gpus, kill_grace)
    return LocalLauncher()
