"""End to end: `tuneloop demo --headless --fast` with the real packaged base model on real tweets."""

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_catches_the_shift_retrains_and_recovers(tmp_path):
    env = {**os.environ, "TUNELOOP_SERVER__PORT": str(free_port()), "TUNELOOP_DASHBOARD__PORT": str(free_port())}
    proc = subprocess.run(
        [sys.executable, "-m", "tuneloop.monitor.cli", "demo", "--headless", "--fast"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500,
    )
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "tuneloop-demo" / "report" / "loop-report.json").read_text())
    served = report["served_accuracy"]
    print("loop-quality figures:", json.dumps({k: report[k] for k in (
        "served_accuracy", "labels_spent", "seconds_from_shift", "test_split", "ratio_to_oracle")}))
    assert (report["seconds_from_shift"]["to_alert"] or -1) > 0, "no alert was raised after the shift"
    assert report["promoted_version"], "no retrained version was promoted"
    assert served["after_promotion"] > served["after_shift"] + 0.05, served
    assert report["labels_spent"] <= 300
    # nothing lost: every prediction the demo sent was logged
    assert report["predictions_logged"] == report["predictions_sent"]
    assert (tmp_path / "tuneloop-demo" / "report" / "loop-report.png").stat().st_size > 10_000
