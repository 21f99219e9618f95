"""Crash durability at length: many more SIGKILLs than the CI test, same harness (tests/test_crash.py).

Two runs in one go, on fresh data dirs:

1. baseline: the same clients stream into a server that is never killed, for as long as run 2 takes;
2. crash: the server is SIGKILLed ``--kills`` times at seeded random moments (a share of them during
   start-up, while DuckDB replays its WAL), restarted on the same port and file each time.

Prints kills survived, acknowledged rows audited (lost and duplicated must both be 0), the restart
time after a SIGKILL relative to a cold start, and the acknowledged-rows throughput under kills
relative to the baseline.

    .venv/bin/python bench/crash.py [--kills 60] [--seed 1] [--clients 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_crash import run_crash  # noqa: E402 - the harness lives with the test


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--clients", type=int, default=4)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="tuneloop-crash-") as tmp:
        crash = run_crash(Path(tmp) / "crash", args.kills, seed=args.seed, clients=args.clients)
        print(f"crash run: {crash.kills} SIGKILLs in {crash.stream_seconds:.0f} s; now the baseline for as long")
        base = run_crash(Path(tmp) / "base", 0, seed=args.seed, clients=args.clients,
                         tail_seconds=crash.stream_seconds, say=lambda _m: None)

    ok = not crash.lost and not crash.feedback_lost and not crash.sdk_lost and crash.duplicates == 0 \
        and not crash.unexpected and crash.sdk_errors == 0
    restart = statistics.median(crash.restart_seconds) if crash.restart_seconds else float("nan")
    rate = crash.predictions_acked / crash.stream_seconds
    base_rate = base.predictions_acked / base.stream_seconds
    print(f"kills survived:          {crash.kills} ({crash.kills_during_startup} during start-up)")
    print(f"acknowledged rows:       {crash.rows_checked} audited ({crash.predictions_acked} predictions, "
          f"{crash.feedback_acked} feedback, {crash.sdk_rows} SDK rows)")
    print(f"lost / duplicated:       {len(crash.lost) + len(crash.feedback_lost) + len(crash.sdk_lost)} / "
          f"{crash.duplicates}; unexpected answers {len(crash.unexpected)}; SDK errors {crash.sdk_errors}")
    print(f"restart after SIGKILL:   median {restart:.2f} s vs cold start {crash.first_start_seconds:.2f} s "
          f"(ratio {restart / crash.first_start_seconds:.2f})")
    print(f"acked predictions/s:     {rate:.0f} under kills vs {base_rate:.0f} without (ratio {rate / base_rate:.2f})")
    print("RESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
