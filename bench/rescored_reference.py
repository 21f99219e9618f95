"""Model-output checks after a promotion: held-out rows only as the reference, or held-out rows plus
pre-promotion traffic re-scored by the new version, on same-distribution replays of real tweets.

Data and models as in bench/false_alarms.py (its cached embeddings; a logistic regression on them
plays the model). Per stream, v2 is trained on the first half of the stream's tweets; the rest (rows
it was not trained on) is the traffic it serves after its promotion, and earlier traffic it re-scores.
References of v2 compared:

* ``holdout``: 100 random held-out rows (the evaluation slice), what the checks used before;
* ``queue holdout``: the 100 least confident of 500 held-out rows (label-queue picks, as a holdout
  made of queue labels is);
* ``+ rescored``: either holdout plus 2 000 earlier traffic rows re-scored by v2 (split "rescored");
* ``+ rescored drifted``: holdout plus 2 000 earlier rows of which half are off-topic, re-scored
  regardless of the drift (what the server refuses to do, to show what it would hide).

Windows of 200 rows served by v2 are checked with the model-output checks (prediction, confidence,
estimated accuracy; the input checks do not depend on the reference's version): same-distribution
windows for false alarms and alerts after hysteresis, windows of off-topic tweets (a change of topic)
for detection.

    nice -n 10 python bench/rescored_reference.py [--windows 100] [--streams airline,cars]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift import LABELS  # noqa: E402
from false_alarms import OFF_TOPIC, alerts_opened, frame, load, mix, rate, train, windows  # noqa: E402

HOLDOUT_ROWS = 100
RESCORED_ROWS = 2000
WINDOW = 200
SHIFT = 1.0
"""Off-topic share of the shifted windows (a change of topic)."""
DRIFTED_SHARE = 0.5
"""Off-topic share of the earlier traffic in ``+ rescored drifted`` (the shift began halfway through it)."""


def references(after: pd.DataFrame, off: pd.DataFrame, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """The references of v2 compared (see the module docstring); ``after`` holds v2's outputs."""
    order = rng.permutation(len(after))
    holdout = after.iloc[order[:HOLDOUT_ROWS]].assign(split="holdout")
    pool = after.iloc[order[:500]]
    queue = pool.nsmallest(HOLDOUT_ROWS, "confidence").assign(split="holdout")
    rescored = {"split": "rescored", "true_label": None}  # earlier traffic has no labels
    earlier = windows(after, RESCORED_ROWS, 1, rng)[0].assign(**rescored)
    drifted = mix(windows(after, RESCORED_ROWS, 1, rng)[0], off, DRIFTED_SHARE, rng).assign(**rescored)
    return {
        "holdout": holdout,
        "holdout + rescored": pd.concat([holdout, earlier], ignore_index=True),
        "queue holdout": queue,
        "queue holdout + rescored": pd.concat([queue, earlier], ignore_index=True),
        "holdout + rescored drifted": pd.concat([holdout, drifted], ignore_index=True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=100, help="same-distribution windows per stream and reference")
    ap.add_argument("--detect", type=int, default=40, help="off-topic windows per stream and reference")
    ap.add_argument("--streams", default="airline,cars")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from tuneloop.monitor.config import DriftSettings
    from tuneloop.monitor.drift import DEFAULT_CHECKS, run_checks

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    t0 = time.perf_counter()
    raw, emb = load()
    settings = DriftSettings()
    checks = [c if c.name != "prediction_drift" else c.__class__(c.name, c.kind, c.columns, {}, c.scope)
              for c in DEFAULT_CHECKS if c.scope == "output" and c.name != "labelled_accuracy"]
    names = [c.name for c in checks]
    rng = np.random.default_rng(args.seed)
    alarms: dict[str, dict[str, int]] = {}
    for topic in args.streams.split(","):
        stream = raw[raw["topic"] == topic]
        v2 = train(stream.iloc[: len(stream) // 2], emb)
        after = frame(stream.iloc[len(stream) // 2:], emb, v2, "v2")
        off = frame(pd.concat([raw[raw["topic"] == t] for t in OFF_TOPIC]), emb, v2, "v2")
        same = windows(after, WINDOW, args.windows, rng)
        shifted = [mix(w, off, SHIFT, rng) for w in windows(after, WINDOW, args.detect, rng)]
        for name, ref in references(after, off, rng).items():
            tally = alarms.setdefault(name, {})

            def verdicts(ws: list[pd.DataFrame], ref: pd.DataFrame = ref) -> list[dict[str, bool]]:
                return [{r.metric: r.drifted for r in run_checks(ref, w, settings, LABELS, checks=checks,
                                                                   version="v2")} for w in ws]

            quiet, loud = verdicts(same), verdicts(shifted)
            for m in names:
                flags = [v[m] for v in quiet if m in v]
                tally[f"{m} runs"] = tally.get(f"{m} runs", 0) + len(flags)
                tally[m] = tally.get(m, 0) + sum(flags)
                tally[f"{m} alerts"] = tally.get(f"{m} alerts", 0) + alerts_opened(
                    flags, settings.open_after, settings.close_after)
            tally["windows"] = tally.get("windows", 0) + len(quiet)
            tally["any"] = tally.get("any", 0) + sum(any(v.values()) for v in quiet)
            tally["shifted"] = tally.get("shifted", 0) + len(loud)
            tally["detected"] = tally.get("detected", 0) + sum(any(v.values()) for v in loud)
        print(f"{topic}: done at {time.perf_counter() - t0:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)

    print(f"\n## Model-output checks after a promotion, windows of {WINDOW} rows served by v2\n")
    print("| reference of v2 | " + " | ".join(f"{m} alarms" for m in names)
          + " | any output check | alerts opened | off-topic windows detected |")
    print("|---|" + "---|" * (len(names) + 3))
    for name, t in alarms.items():
        opened = sum(t[f"{m} alerts"] for m in names)
        print(f"| {name} | " + " | ".join(rate(t[m], t[f'{m} runs']) for m in names)
              + f" | {rate(t['any'], t['windows'])} | {rate(opened, sum(t[f'{m} runs'] for m in names))}"
              f" | {rate(t['detected'], t['shifted'])} |")
    print(f"\n{time.perf_counter() - t0:.0f} s wall, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
