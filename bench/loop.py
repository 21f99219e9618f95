"""Loop quality: run the demo scenario headless, several streams, and compare with random labelling.

    python bench/loop.py                       # default scenario, 3 streams, queue strategy vs random
    python bench/loop.py --seeds 1 --strategies uncertainty
    python bench/loop.py --fast                # the shrunken scenario the end-to-end test runs

Every run replays another stream (``stream_seed``) over the same splits, so v1 and the oracle (the
same trainer from v1 given every training label of the shifted topics plus replay) are trained
once and cached under ``--data-dir``. Per run: the promoted version's test accuracy on the
shifted topics as a ratio to the oracle's (goal >= 0.98 with <= 300 labels), seconds from the
shift to the promotion, labels the promoted version's run used, and the run's wall time.
Results go to ``bench/out/loop/<scenario>-<strategy>-<seed>.json``; runs already there are not
repeated (the bench is resumable), and the summary gives mean, spread and count per strategy.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any

from tuneloop.monitor.config import load_settings
from tuneloop.monitor.demo import DemoPlan, run_demo

OUT = Path(__file__).resolve().parent / "out" / "loop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(data_dir: Path, fast: bool, strategy: str, seed: int) -> dict[str, Any]:
    settings = load_settings(paths={"data_dir": data_dir}, server={"port": free_port()})
    plan = DemoPlan.fast() if fast else DemoPlan()
    plan.dashboard, plan.label_strategy, plan.stream_seed = False, strategy, seed
    t0 = time.monotonic()
    report = run_demo(settings, plan)
    return {"strategy": strategy, "seed": seed, "wall_seconds": round(time.monotonic() - t0, 1),
            **{k: report.get(k) for k in ("ratio_to_oracle", "served_accuracy", "test_split", "labels_spent",
                                          "labels_in_promoted_run", "seconds_from_shift", "promoted_version",
                                          "alerts_before_shift", "timeline")}}


def spread(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f} (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"


def summary(results: list[dict[str, Any]]) -> None:
    for strategy in sorted({r["strategy"] for r in results}):
        rs = [r for r in results if r["strategy"] == strategy]
        promoted = sum(1 for r in rs if r["promoted_version"])
        print(f"\n{strategy}: {promoted}/{len(rs)} runs promoted")
        print(f"  ratio promoted / oracle      {spread([r['ratio_to_oracle'] for r in rs])}")
        promoted_acc = [(r["test_split"].get("promoted") or {}).get("accuracy") for r in rs]
        print(f"  test accuracy, promoted      {spread(promoted_acc)}")
        print(f"  seconds shift -> promotion   {spread([r['seconds_from_shift']['to_promotion'] for r in rs])}")
        print(f"  labels used by the promoted  {spread([r['labels_in_promoted_run'] for r in rs])}")
        print(f"  wall seconds per demo run    {spread([r['wall_seconds'] for r in rs])}")
    oracle = next((r["test_split"].get("oracle") for r in results if r["test_split"].get("oracle")), None)
    if oracle:
        print(f"\noracle: test accuracy {oracle['accuracy']:.3f} from {oracle['train_labels']} shifted-topic labels "
              f"({oracle['train_rows']} rows with replay, {oracle['epochs']} epoch(s), trained once in "
              f"{oracle['train_seconds']:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", default="uncertainty,random")
    parser.add_argument("--data-dir", type=Path, default=OUT / "data", help="v1 and the oracle are cached here")
    args = parser.parse_args()
    scenario = "fast" if args.fast else "default"
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in range(args.seeds):
        for strategy in args.strategies.split(","):
            path = OUT / f"{scenario}-{strategy}-{seed}.json"
            if not path.exists():
                print(f"== {scenario} scenario, {strategy} labelling, stream seed {seed}", flush=True)
                path.write_text(json.dumps(one_run(args.data_dir, args.fast, strategy, seed), indent=2, default=str))
            results.append(json.loads(path.read_text()))
    summary(results)


if __name__ == "__main__":
    main()
