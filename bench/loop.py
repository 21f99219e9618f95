"""Loop quality: run the demo scenario headless, several streams, and compare with random labelling.

    python bench/loop.py                       # default scenario, 3 streams, queue strategy vs random
    python bench/loop.py --seeds 1 --strategies uncertainty
    python bench/loop.py --fast                # the shrunken scenario the end-to-end test runs
    python bench/loop.py --tag share1 --set first_retrain_share=1.0 --no-oracle   # a variant of the plan
    python bench/loop.py --ablation default,share1,selftrain --strategies uncertainty   # compare variants

Every run replays another stream (``stream_seed``) over the same splits, so v1 and the oracle (the
same trainer from v1 given every training label of the shifted topics plus replay) are trained
once and cached under ``--data-dir``. Per run: the promoted version's test accuracy on the
shifted topics as a ratio to the oracle's (goal >= 0.98 with <= 300 labels), seconds from the
shift to the promotion, labels the promoted version's run used, and the run's wall time.
Results go to ``bench/out/loop/<scenario>[-<tag>]-<strategy>-<seed>.json``; runs already there are
not repeated (the bench is resumable), and the summary gives mean, spread and count per strategy.
A variant (``--tag`` with ``--set`` overrides of :class:`DemoPlan`) runs in its own data directory
per tag and strategies (v1's cache copied), so it can run beside the main bench and itself; with
``--no-oracle`` its ratio is taken against the oracle an earlier run of the scenario cached. A run
that promoted nothing counts with v1's ratio (what still serves) in the "serving at the end" line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
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


def plan_overrides(pairs: list[str]) -> dict[str, Any]:
    """``name=value`` pairs for :class:`DemoPlan` fields, each value parsed as the field's type."""
    types = {f.name: f.type for f in dataclasses.fields(DemoPlan)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in types:
            raise SystemExit(f"--set {pair}: DemoPlan has no field {name!r} (fields: {', '.join(types)})")
        kind = str(types[name])
        out[name] = (value.lower() in ("1", "true", "yes") if kind == "bool" else
                     int(value) if kind == "int" else float(value) if kind == "float" else value)
    return out


def one_run(data_dir: Path, fast: bool, strategy: str, seed: int, overrides: dict[str, Any],
            oracle: bool = True) -> dict[str, Any]:
    settings = load_settings(paths={"data_dir": data_dir}, server={"port": free_port()})
    plan = dataclasses.replace(DemoPlan.fast() if fast else DemoPlan(), **overrides)
    plan.dashboard, plan.label_strategy, plan.stream_seed, plan.oracle = False, strategy, seed, oracle
    t0 = time.monotonic()
    report = run_demo(settings, plan)
    return {"strategy": strategy, "seed": seed, "wall_seconds": round(time.monotonic() - t0, 1), "plan": overrides,
            **{k: report.get(k) for k in ("ratio_to_oracle", "served_accuracy", "test_split", "labels_spent",
                                          "labels_in_promoted_run", "seconds_from_shift", "promoted_version",
                                          "alerts_before_shift", "timeline")}}


def spread(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f} (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"


def oracle_figures(results: list[dict[str, Any]], scenario: str) -> dict[str, Any] | None:
    """The oracle's test figures from these runs, else from any earlier run of the scenario."""
    earlier = [json.loads(p.read_text()) for p in sorted(OUT.glob(f"{scenario}-*.json"))]
    return next((r["test_split"]["oracle"] for r in results + earlier if r["test_split"].get("oracle")), None)


def with_ratios(r: dict[str, Any], oracle: dict[str, Any] | None) -> dict[str, Any]:
    """The run plus ``serving_ratio``: test accuracy of what serves at the end (v1 when nothing was
    promoted) over the oracle's; ``ratio_to_oracle`` filled in from the cached oracle when absent."""
    if not oracle:
        return {**r, "serving_ratio": None}
    split = r["test_split"]
    promoted = (split.get("promoted") or {}).get("accuracy")
    serving = promoted if promoted is not None else split["v1"]["accuracy"]
    ratio = r["ratio_to_oracle"] or (None if promoted is None else round(promoted / oracle["accuracy"], 4))
    return {**r, "ratio_to_oracle": ratio, "serving_ratio": round(serving / oracle["accuracy"], 4)}


def per_seed_table(results: list[dict[str, Any]]) -> None:
    print("\n| strategy | seed | promoted | labels spent / in promoted run | test acc v1 -> promoted | ratio to oracle "
          "| s shift -> alert / promotion | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        split, sec = r["test_split"], r["seconds_from_shift"]
        promoted = (split.get("promoted") or {}).get("accuracy")
        print(f"| {r['strategy']} | {r['seed']} | {r['promoted_version'] or '—'} | {r['labels_spent']} / "
              f"{r['labels_in_promoted_run'] or '—'} | {split['v1']['accuracy']:.3f} -> "
              f"{'—' if promoted is None else f'{promoted:.3f}'} | {r['serving_ratio'] or '—'} | "
              f"{sec.get('to_alert') or '—'} / {sec.get('to_promotion') or '—'} | {r['wall_seconds']} |")


def summary(results: list[dict[str, Any]], scenario: str) -> None:
    oracle = oracle_figures(results, scenario)
    results = [with_ratios(r, oracle) for r in results]
    per_seed_table(results)
    for strategy in sorted({r["strategy"] for r in results}):
        rs = [r for r in results if r["strategy"] == strategy]
        promoted = sum(1 for r in rs if r["promoted_version"])
        print(f"\n{strategy}: {promoted}/{len(rs)} runs promoted")
        print(f"  ratio promoted / oracle      {spread([r['ratio_to_oracle'] for r in rs])}")
        print(f"  ratio serving at the end     {spread([r['serving_ratio'] for r in rs])}")
        promoted_acc = [(r["test_split"].get("promoted") or {}).get("accuracy") for r in rs]
        print(f"  test accuracy, promoted      {spread(promoted_acc)}")
        print(f"  seconds shift -> promotion   {spread([r['seconds_from_shift']['to_promotion'] for r in rs])}")
        print(f"  labels used by the promoted  {spread([r['labels_in_promoted_run'] for r in rs])}")
        print(f"  wall seconds per demo run    {spread([r['wall_seconds'] for r in rs])}")
    if oracle:
        print(f"\noracle: test accuracy {oracle['accuracy']:.3f} from {oracle['train_labels']} shifted-topic labels "
              f"({oracle['train_rows']} rows with replay, {oracle['epochs']} epoch(s), trained once in "
              f"{oracle['train_seconds']:.0f} s)")


def ablation(names: list[str], scenario: str, strategy: str) -> None:
    """One row per variant (``""`` or ``default``: the plan as it is): ratio to the oracle per stream
    seed, mean ± spread, promotions, labels the promoted version used, seconds shift -> promotion."""
    oracle = oracle_figures([], scenario)
    print(f"\n| variant ({strategy}) | ratio to oracle per seed | mean ± sd | promoted | labels used "
          "| s shift -> promotion |")
    print("|---|---|---|---|---|---|")
    for name in names:
        prefix = scenario if name in ("", "default") else f"{scenario}-{name}"
        rs = [with_ratios(json.loads(p.read_text()), oracle)
              for p in sorted(OUT.glob(f"{prefix}-{strategy}-[0-9]*.json"))]
        if not rs:
            continue
        ratios = [r["serving_ratio"] for r in rs]
        xs = [x for x in ratios if x is not None]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        mean = f"{statistics.mean(xs):.3f} ± {sd:.3f}" if xs else "—"
        promoted = "".join("y" if r["promoted_version"] else "n" for r in rs)
        print(f"| {name or 'default'} | {', '.join('—' if x is None else f'{x:.3f}' for x in ratios)} | {mean} "
              f"| {promoted} | {', '.join(str(r['labels_in_promoted_run'] or '—') for r in rs)} "
              f"| {', '.join(str(r['seconds_from_shift'].get('to_promotion') or '—') for r in rs)} |")
    print("(a run that promoted nothing counts with v1's ratio: what still serves)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", default="uncertainty,random")
    parser.add_argument("--data-dir", type=Path, default=OUT / "data", help="v1 and the oracle are cached here")
    parser.add_argument("--tag", default="", help="names a variant of the plan (its results and data directory)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a DemoPlan field")
    parser.add_argument("--no-oracle", action="store_true", help="use the oracle an earlier run cached")
    parser.add_argument("--ablation", metavar="TAG,TAG", help="print the table of these variants' finished runs "
                        "(first strategy of --strategies) and exit; 'default' is the untagged plan")
    args = parser.parse_args()
    scenario = "fast" if args.fast else "default"
    if args.ablation is not None:
        ablation(args.ablation.split(","), scenario, args.strategies.split(",")[0])
        return
    name = f"{scenario}-{args.tag}" if args.tag else scenario
    overrides = plan_overrides(args.set)
    data_dir = args.data_dir
    if args.tag:
        data_dir = OUT / f"data-{args.tag}-{args.strategies.replace(',', '-')}"  # one per process
        if (args.data_dir / "cache").is_dir() and not (data_dir / "cache").exists():
            shutil.copytree(args.data_dir / "cache", data_dir / "cache")
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in range(args.seeds):
        for strategy in args.strategies.split(","):
            path = OUT / f"{name}-{strategy}-{seed}.json"
            if not path.exists():
                print(f"== {name} scenario, {strategy} labelling, stream seed {seed}", flush=True)
                run = one_run(data_dir, args.fast, strategy, seed, overrides, oracle=not args.no_oracle)
                path.write_text(json.dumps(run, indent=2, default=str))
            results.append(json.loads(path.read_text()))
    summary(results, scenario)


if __name__ == "__main__":
    main()
