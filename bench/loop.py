"""Loop quality: run the demo scenario headless and print its figures and the ratio to the oracle.

    python bench/loop.py            # the default scenario (300-label budget, full oracle)
    python bench/loop.py --fast     # the shrunken scenario the end-to-end test runs

Figures: served accuracy before the shift / after it / after the promotion, test accuracy on
the shifted topics for v1, the promoted version and the oracle (the same trainer given every
training label of the shifted topics), labels spent, seconds from shift to alert and promotion.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
from pathlib import Path

from tuneloop.monitor.config import load_settings
from tuneloop.monitor.demo import DemoPlan, run_demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the v1 cache here between runs")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="tuneloop-bench-loop-"))
    settings = load_settings(paths={"data_dir": data_dir}, server={"port": free_port()})
    plan = DemoPlan.fast() if args.fast else DemoPlan(oracle_max=0)
    plan.dashboard = False
    report = run_demo(settings, plan)
    figures = {k: report[k] for k in ("served_accuracy", "test_split", "ratio_to_oracle", "labels_spent",
                                      "seconds_from_shift", "predictions_sent", "predictions_logged")}
    print(json.dumps(figures, indent=2))
    print(f"ratio promoted / oracle = {report['ratio_to_oracle']} (goal >= 0.98 with <= 300 labels; "
          f"labels spent {report['labels_spent']})")


if __name__ == "__main__":
    main()
