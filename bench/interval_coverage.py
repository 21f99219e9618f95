"""How often the 90 % intervals that training prints hold the gap they describe.

    .venv/bin/python -m bench.interval_coverage [--draws 200] [--n 45,150]

Training prints two intervals computed on its validation rows (:func:`tuneloop.retrain.choice.gain_interval`,
a Dirichlet posterior of the rows' paired answers): the served model's macro-F1 minus the best simple
baseline's (the guard's verdict), and, for ``--auto``, the best other trial's minus the defaults' (the
search's choice). An interval at 90 % should hold the true gap in about 90 % of cases.

This bench measures that without training again, from the per-row probabilities ``bench/finetune.py``
records. A cell's 400 test rows (379 for the drug reviews; never trained on) stand for the population:
the true gap is the one on all of them. Each seeded draw takes a stratified sample of ``n`` rows with
replacement (so the 400 rows are an infinite population, and a large ``n`` is not favoured by overlapping
them; 45 is the validation split of 300 labelled rows, 150 that of 1,000), computes the interval there exactly as
training does, and counts whether it holds the population's gap. The baseline is the better of TF-IDF +
LR and the frozen-encoder probe on the drawn rows, as the guard picks it; the served model is the even
blend (what the paired rule keeps in nine cases of ten). The search's interval is that of the trial that
scores best on the drawn rows, so it carries the optimism of picking the best of several.

A rate over draws is reported with its Wilson 95 % interval; draws within a cell share the cell, so the
per-cell rates are printed too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest, bootstrap

from bench.choice_rules import OUT, stratified_draw
from tuneloop.retrain.choice import ALPHA, PRIOR_MASS, RESAMPLES, gain_interval, macro_f1

CONFIGS = ("new", "new:auto=4")  # the defaults' fine-tune, or a search whose first trial is the defaults


def cells_with_rows(files: list[Path]) -> dict[str, dict[str, Any]]:
    """One fine-tune per sample (dataset|rows|seed) whose record holds the encoder's, TF-IDF's and the probe's
    test probabilities: the defaults' cell, else a search's (the one with every trial's rows when there are two)."""
    out: dict[str, dict[str, Any]] = {}
    for f in files:
        for key, cell in json.loads(f.read_text()).items():
            *sample, config = key.split("|")
            test = cell.get("rows", {}).get("test", {})
            if config not in CONFIGS or not all(part in test for part in ("encoder", "tfidf", "probe")):
                continue
            name, have = "|".join(sample), out.get("|".join(sample))
            rank = (config == "new", "rows" in cell.get("search", {}))
            if have is None or rank > (have["_config"] == "new", "rows" in have.get("search", {})):
                out[name] = {**cell, "_config": config}
    return out


def predictions(cell: dict[str, Any]) -> dict[str, Any]:
    """Class-index predictions on the test rows: served blend, baselines, each search trial's served blend."""
    rows = cell["rows"]
    index = {c: i for i, c in enumerate(rows["labels"])}
    test = rows["test"]
    tfidf = np.asarray(test["tfidf"])
    trials = [np.asarray(t["test_encoder"]) for t in cell.get("search", {}).get("rows", [])]
    return {"y": np.array([index[c] for c in test["y"]]), "k": len(index),
            "served": (0.5 * np.asarray(test["encoder"]) + 0.5 * tfidf).argmax(1),
            "baselines": [tfidf.argmax(1), np.asarray(test["probe"]).argmax(1)],
            "trials": [(0.5 * e + 0.5 * tfidf).argmax(1) for e in trials]}


def percentile_bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, seed: int) -> tuple[float, float]:
    """The interval training printed before: a paired percentile bootstrap of the rows at (1 - alpha)."""
    if np.array_equal(a, b):
        return 0.0, 0.0

    def gain(yy: np.ndarray, aa: np.ndarray, bb: np.ndarray, axis: int = -1) -> np.ndarray:
        return macro_f1(yy, aa, k) - macro_f1(yy, bb, k)

    ci = bootstrap((y, a, b), gain, paired=True, vectorized=True, n_resamples=RESAMPLES, confidence_level=1 - ALPHA,
                   method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


METHODS: dict[str, Callable[..., tuple[float, float]]] = {
    "product": lambda y, a, b, k, seed: gain_interval(y, a, b, k, seed=seed),
    "bootstrap": percentile_bootstrap,
}


def covered(y: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, pick: np.ndarray, seed: int) -> dict[str, tuple]:
    """Per method: (the interval on the ``pick`` rows holds the gap on every row, it lies wholly on the wrong
    side of 0, its width)."""
    true = float(macro_f1(y, a, k) - macro_f1(y, b, k))
    out = {}
    for name, method in METHODS.items():
        lo, hi = method(y[pick], a[pick], b[pick], k, seed)
        out[name] = (lo - 1e-9 <= true <= hi + 1e-9, (lo > 0 and true < 0) or (hi < 0 and true > 0), hi - lo)
    return out


def run_cell(p: dict[str, Any], n: int, draws: int, seed: int) -> dict[str, list[dict[str, tuple]]]:
    """Per kind of interval ("verdict", and "search" when the cell has trials): one :func:`covered` per draw."""
    y, k = p["y"], p["k"]
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, tuple]]] = {"verdict": [], "search": []}
    for d in range(draws):
        pick = stratified_draw(y, n, rng, replace=True)
        scores = [float(macro_f1(y[pick], b[pick], k)) for b in p["baselines"]]
        best = p["baselines"][int(np.argmax(scores))]
        out["verdict"].append(covered(y, p["served"], best, k, pick, seed=d))
        if len(p["trials"]) > 1:
            t_scores = [float(macro_f1(y[pick], t[pick], k)) for t in p["trials"][1:]]
            other = p["trials"][1 + int(np.argmax(t_scores))]
            if not np.array_equal(other[pick], p["trials"][0][pick]):
                out["search"].append(covered(y, other, p["trials"][0], k, pick, seed=d))
    return out


def rate(hits: int, n: int) -> str:
    """``hits`` of ``n`` as a percentage with its Wilson 95 % interval."""
    if not n:
        return "–"
    ci = binomtest(hits, n).proportion_ci(0.95, method="wilson")
    return f"{hits}/{n} = {100 * hits / n:.1f} % [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", nargs="*", type=Path, default=sorted(OUT.glob("finetune*.json")))
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--n", default="45,150", help="validation sizes to draw")
    args = p.parse_args(argv)
    cells = cells_with_rows(args.files)
    print(f"{len(cells)} samples with per-row test probabilities; {args.draws} draws per sample and size; "
          f"stated level {1 - ALPHA:.2f}; product = tuneloop.retrain.choice.gain_interval (prior mass {PRIOR_MASS:g}), "
          "bootstrap = the paired percentile bootstrap\n")
    for n in (int(x) for x in args.n.split(",")):
        totals: dict[str, list[dict[str, tuple]]] = {"verdict": [], "search": []}
        for i, (key, cell) in enumerate(sorted(cells.items())):
            res = run_cell(predictions(cell), n, args.draws, seed=i)
            line = []
            for kind, rows in res.items():
                totals[kind] += rows
                if rows:
                    line.append(f"{kind} " + " / ".join(f"{100 * np.mean([r[lv][0] for r in rows]):.0f} %"
                                                      for lv in METHODS))
            print(f"  n={n} {key}: " + ", ".join(line), flush=True)
        for kind, rows in totals.items():
            for lv in METHODS:
                if rows:
                    print(f"n = {n}, {kind}, {lv}: held the population's gap in "
                          f"{rate(sum(r[lv][0] for r in rows), len(rows))}; wholly on the wrong side of 0 in "
                          f"{rate(sum(r[lv][1] for r in rows), len(rows))}; mean width "
                          f"{100 * np.mean([r[lv][2] for r in rows]):.1f} points")
        print()


if __name__ == "__main__":
    main()
