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


@pytest.mark.timeout(1500)  # the subprocess's own limit; a loaded 2-core machine needs more than the default
def test_demo_catches_the_shift_retrains_and_recovers(tmp_path):
    env = {**os.environ, "TUNELOOP_SERVER__PORT": str(free_port()), "TUNELOOP_DASHBOARD__PORT": str(free_port())}
    proc = subprocess.run(
        [sys.executable, "-m", "tuneloop.monitor.cli", "demo", "--headless", "--fast", "--no-oracle"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500,
    )
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "tuneloop-demo" / "report" / "loop-report.json").read_text())
    served, seconds = report["served_accuracy"], report["seconds_from_shift"]
    print("loop-quality figures:", json.dumps({k: report[k] for k in (
        "served_accuracy", "labels_spent", "labels_in_promoted_run", "seconds_from_shift", "test_split")}))
    # the alert is the shift's: none on the unshifted traffic before it, one after it
    assert report["alerts_before_shift"] == 0, report["timeline"]
    assert seconds["to_alert"] is not None and seconds["to_alert"] > 0, "the shift raised no alert"
    # a retrained version was promoted after that alert, with labels the annotator gave
    assert report["promoted_version"], "no retrained version was promoted"
    assert seconds["to_promotion"] > seconds["to_alert"], seconds
    assert 0 < report["labels_in_promoted_run"] <= report["labels_spent"] <= 480  # the fast budget
    # recovery on held-back shifted traffic (sent only after the promotion, never labelled)
    assert served["after_promotion"] >= served["after_shift"] + 0.10, served
    assert report["test_split"]["promoted"]["accuracy"] > report["test_split"]["v1"]["accuracy"]
    timeline = "\n".join(report["timeline"])
    for step in ("SHIFT", "ALERT", "LABELS", "RETRAIN", "GATE", "PROMOTED", "RECOVERY"):
        assert step in timeline, timeline
    # nothing lost: every prediction the demo sent was logged
    assert report["predictions_logged"] == report["predictions_sent"]
    assert (tmp_path / "tuneloop-demo" / "report" / "loop-report.png").stat().st_size > 10_000
    assert "stay up" not in proc.stdout  # headless exits after the report
