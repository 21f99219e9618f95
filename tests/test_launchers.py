"""The local launcher's time limit and cancel on real child processes (the Ray launcher: test_ray_launcher.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tuneloop.monitor.launchers import LocalLauncher

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
                  "time.sleep(60)"


def start(tmp_path, code: str, **env: str):
    return LocalLauncher().start([sys.executable, "-c", code], env, tmp_path / "job.log")


def test_output_and_environment_reach_the_job_and_its_exit_code_is_reported(tmp_path):
    job = start(tmp_path, "import os, sys; print(os.environ['TUNELOOP_TEST_VALUE']); sys.exit(3)",
                TUNELOOP_TEST_VALUE="seen")
    end = job.wait(timeout=60, grace=1)
    assert (end.code, end.timed_out) == (3, False)
    assert (tmp_path / "job.log").read_text().strip() == "seen"


def test_past_the_timeout_a_job_gets_sigterm(tmp_path):
    job = start(tmp_path, "import time; time.sleep(60)")
    started = time.monotonic()
    end = job.wait(timeout=0.5, grace=30)
    assert end.timed_out and end.code == -signal.SIGTERM and time.monotonic() - started < 20


def test_a_job_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    job = start(tmp_path, IGNORES_SIGTERM)
    deadline = time.monotonic() + 60
    while "up" not in (tmp_path / "job.log").read_text():  # its SIGTERM handler is in place
        assert time.monotonic() < deadline and job.proc.poll() is None, (tmp_path / "job.log").read_text()
        time.sleep(0.05)
    end = job.wait(timeout=0.5, grace=0.5)
    assert end.timed_out and end.code == -signal.SIGKILL


def test_cancel_sends_sigterm_and_the_wait_reports_it(tmp_path):
    job = start(tmp_path, "import time; time.sleep(60)")
    job.cancel()
    end = job.wait(timeout=30, grace=1)
    assert (end.code, end.timed_out) == (-signal.SIGTERM, False)
    job.cancel()  # a second cancel of an ended job is harmless


def test_launcher_ray_without_the_ray_package_is_a_one_line_config_error(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"  # as if it were not installed
            "from tuneloop.monitor.config import ConfigError, load_settings\n"
            "try:\n    load_settings(retrain={'launcher': 'ray'})\n"
            "except ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ("config error: retrain.launcher: Value error, 'ray' needs the ray package: "
                          "pip install 'tuneloop[ray]' (got 'ray')\n")
