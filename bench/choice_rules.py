"""How often a rule for choosing on a few dozen validation rows serves something worse than its default.

    .venv/bin/python -m bench.choice_rules [--draws 200] [--files bench/out/finetune-trials-*.json]

Two choices in training are made on the validation split, about 45 rows at 300 labelled rows: which
search trial to keep (``tuneloop train --auto``) and the TF-IDF weight of the served blend. Both start
from a default (the first trial; the even blend) and replace it only when a rule says so. This bench
scores candidate rules without training again, from the per-row probabilities that ``bench/finetune.py
--configs new:auto=N`` records for every trial of a search.

Each draw holds out a stratified "validation" sample of the real validation size from a cell's 400 test
rows (never trained on), applies the rule there, and scores what it chose on the other test rows
against the default on the same rows. Over ``--draws`` seeded draws per cell it reports:

* how often the rule replaces the default, and how often the replacement is *harmful* (macro-F1 on the
  unseen rows below the default's by more than ``HARM`` points): the false-replacement rate;
* the mean gain of what it serves over the default on the unseen rows, and the best achievable (an
  oracle that picks on the unseen rows themselves).

It also replays each rule on the cells' real validation rows and prints the test macro-F1 it would serve.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.retrain.baselines import blend_order, choose_blend
from tuneloop.retrain.choice import Candidate, keep_default_unless_better
from tuneloop.retrain.choice import macro_f1 as choice_macro_f1

HARM = 0.01  # a replacement more than 1 point of macro-F1 worse than the default on unseen rows is harmful
OUT = Path(__file__).parent / "out"


def macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Macro-F1 of one prediction vector (the product's, :func:`tuneloop.retrain.choice.macro_f1`)."""
    return float(choice_macro_f1(y, pred, k))


Rule = Callable[[np.ndarray, list[np.ndarray], int], int]
"""(y, candidates' predictions on the choice rows, k classes) -> index of the candidate served; 0 is the default."""


def margin_rule(margin: float) -> Rule:
    """The former rule: the best-scoring candidate replaces the default when it is ``margin`` higher."""
    def rule(y: np.ndarray, preds: list[np.ndarray], k: int) -> int:
        scores = [macro_f1(y, p, k) for p in preds]
        best = max(range(len(preds)), key=lambda i: (round(scores[i], 9), -i))
        return best if scores[best] - scores[0] > margin else 0
    return rule


def paired_rule(alpha: float, margin: float = 0.0) -> Rule:
    """The candidate rule: :func:`keep_default_unless_better`, the product's paired test."""
    def rule(y: np.ndarray, preds: list[np.ndarray], k: int) -> int:
        cands = [Candidate(name=str(i), predictions=p) for i, p in enumerate(preds)]
        return int(keep_default_unless_better(y, cands, k, alpha=alpha, margin=margin).name)
    return rule


RULES: dict[str, Rule] = {
    "default always": lambda y, preds, k: 0,
    "margin 0": margin_rule(0.0),
    "margin 3 pts (before)": margin_rule(0.03),
    "paired a=0.05": paired_rule(0.05),
    "paired a=0.10": paired_rule(0.10),
    "paired a=0.20": paired_rule(0.20),
    "paired a=0.30": paired_rule(0.30),
    "paired a=0.50": paired_rule(0.50),
}


def stratified_draw(y: np.ndarray, n: int, rng: np.random.Generator, replace: bool = False) -> np.ndarray:
    """Row indices of a sample of ``n`` rows with ``y``'s class proportions (at least one per class);
    ``replace`` draws with replacement, i.e. from the rows' own distribution as an infinite population."""
    classes, counts = np.unique(y, return_counts=True)
    want = np.maximum(1, np.round(counts / counts.sum() * n)).astype(int)
    picked = [rng.choice(np.flatnonzero(y == c), size=w if replace else min(w, cnt), replace=replace)
              for c, w, cnt in zip(classes, want, counts, strict=True)]
    return np.concatenate(picked)


Options = tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]


def choices(cell: dict[str, Any], seed: int) -> dict[str, Options]:
    """Per choice ("trial", and "weight" for each trial): candidates' predictions on the real validation
    rows and on the test rows, and the two label vectors (as class indices). A trial serves the TF-IDF
    weight the product's rule (:func:`choose_blend`, seeded with the cell's seed) picks on its validation rows."""
    rows, labels = cell["rows"], cell["rows"]["labels"]
    index = {c: i for i, c in enumerate(labels)}
    y_val = np.array([index[c] for c in rows["val"]["y"]])
    y_test = np.array([index[c] for c in rows["test"]["y"]])
    tf_val, tf_test = np.asarray(rows["val"]["tfidf"]), np.asarray(rows["test"]["tfidf"])
    out: dict[str, Any] = {}
    trial_val, trial_test = [], []
    order = blend_order()  # the default first
    for t, tr in enumerate(cell["search"]["rows"]):
        ev, et = np.asarray(tr["val_encoder"]), np.asarray(tr["test_encoder"])
        w = choose_blend(ev, tf_val, rows["val"]["y"], labels, seed=seed).weight  # as the product serves it now
        trial_val.append(((1 - w) * ev + w * tf_val).argmax(1))
        trial_test.append(((1 - w) * et + w * tf_test).argmax(1))
        out[f"weight@trial{t}"] = ([((1 - x) * ev + x * tf_val).argmax(1) for x in order],
                                   [((1 - x) * et + x * tf_test).argmax(1) for x in order], y_val, y_test)
    out["trial"] = (trial_val, trial_test, y_val, y_test)
    return out


def simulate(rule: Rule, test_preds: list[np.ndarray], y: np.ndarray, n_val: int, k: int,
             draws: int, seed: int) -> dict[str, float]:
    """Replace/harm counts and mean gain over seeded draws of choice rows from the test rows."""
    rng = np.random.default_rng(seed)
    replaced = harmful = 0
    gains, best = [], []
    for _ in range(draws):
        pick = stratified_draw(y, n_val, rng)
        rest = np.setdiff1d(np.arange(len(y)), pick)
        chosen = rule(y[pick], [p[pick] for p in test_preds], k)
        unseen = [macro_f1(y[rest], p[rest], k) for p in test_preds]
        gain = unseen[chosen] - unseen[0]
        replaced += chosen != 0
        harmful += chosen != 0 and gain < -HARM
        gains.append(gain)
        best.append(max(unseen) - unseen[0])
    return {"replaced": replaced, "harmful": harmful, "gain": float(np.mean(gains)), "best": float(np.mean(best))}


NEEDED_DRAWS = 20


def needed(options: dict[str, Options], n: int, choice: str, k: int) -> float:
    """Mean ``needed`` of the product's test for a cell's first choice of kind ``choice`` (``options``:
    :func:`choices`) on ``n`` validation rows drawn from its test rows (NaN when every candidate answers
    alike: nothing to test)."""
    _, test_p, _, y = options[next(w for w in options if w.startswith(choice))]
    if all(np.array_equal(q, test_p[0]) for q in test_p[1:]):
        return float("nan")
    rng = np.random.default_rng(n)
    out = []
    for _ in range(NEEDED_DRAWS):
        pick = stratified_draw(y, n, rng)
        cands = [Candidate(str(i), q[pick]) for i, q in enumerate(test_p)]
        out.append(keep_default_unless_better(y[pick], cands, k).needed)
    return float(np.mean(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", nargs="*", type=Path, default=sorted(OUT.glob("finetune-trials-*.json")))
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--choice", default="trial", help="trial, weight, or weight@trialN (that trial's weights only)")
    args = p.parse_args(argv)
    cells = {k: v for f in args.files for k, v in json.loads(f.read_text()).items() if "rows" in v.get("search", {})}
    print(f"{len(cells)} searched cells; {args.draws} draws each; harmful = more than {100 * HARM:g} point(s) "
          f"of macro-F1 below the default on the unseen test rows\n")
    totals = {name: {"replaced": 0, "harmful": 0, "gain": [], "real": []} for name in RULES}
    best: list[float] = []  # per choice: the most any rule could gain
    needs: dict[int, list[float]] = {45: [], 150: []}
    n_choices = 0
    for key, cell in sorted(cells.items()):
        k = len(cell["rows"]["labels"])
        options = choices(cell, int(key.split("|")[2]))
        for n in needs:
            needs[n].append(needed(options, n, args.choice, k))
        for what, (val_p, test_p, y_val, y_test) in options.items():
            if not what.startswith(args.choice):
                continue
            n_choices += 1
            for name, rule in RULES.items():
                sim = simulate(rule, test_p, y_test, len(y_val), k, args.draws, seed=n_choices)
                real = rule(y_val, val_p, k)
                t = totals[name]
                t["replaced"] += sim["replaced"]
                t["harmful"] += sim["harmful"]
                t["gain"].append(sim["gain"])
                t["real"].append(macro_f1(y_test, test_p[real], k) - macro_f1(y_test, test_p[0], k))
            best.append(sim["best"])  # the same for every rule: the draws are seeded by the choice
            print(f"{key} {what}: candidates' test macro-F1 "
                  + ", ".join(f"{macro_f1(y_test, q, k):.3f}" for q in test_p), flush=True)
    print(f"\ngain these rows tell from noise (the test's `needed` at level 0.10, mean over cells, {NEEDED_DRAWS} "
          "draws each):")
    for n, values in needs.items():
        print(f"  {n} validation rows: {100 * np.nanmean(values):.1f} points")
    draws = n_choices * args.draws
    print(f"\nbest achievable (picked on the unseen rows themselves): "
          f"{100 * np.mean(best):+.2f} points on average")
    print(f"\n| rule | replaced (of {draws} draws) | harmful replacements | mean gain on unseen rows, pts | "
          f"real validation rows: test gain per choice, mean pts |")
    print("|---|---|---|---|---|")
    for name, t in totals.items():
        print(f"| {name} | {t['replaced']} ({100 * t['replaced'] / draws:.1f} %) | {t['harmful']} "
              f"({100 * t['harmful'] / draws:.1f} %) | {100 * np.mean(t['gain']):+.2f} | "
              f"{100 * np.mean(t['real']):+.2f} |")


if __name__ == "__main__":
    main()
