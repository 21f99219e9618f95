"""False alarms of the input checks (text descriptors) when a retrained version's reference holds its
label-queue picks, next to a reference of the rows it was not trained on.

Real tweets (the demo corpus's airline stream). A TF-IDF logistic regression plays the champion,
trained on 300 random rows. The label queue then picks the rows it is least sure of (smallest
margin between its top two classes) from the unlabelled traffic: those become the retrained
version's training rows (split "train"); a uniformly random evaluation slice of the same traffic is
its holdout (split "holdout"). Every window is drawn from the rest of the traffic (same
distribution, no drift), so every alarm is a false one. Both references are checked against the
same windows:

* all reference rows (what the input checks took when there was too little pre-promotion traffic);
* the rows the version was not trained on (:func:`tuneloop.retrain.reference.not_trained_on`, what
  they take now).

    python bench/input_reference.py [--windows 200] [--window-size 200] [--picks 300] [--holdout 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from tuneloop.monitor.config import DriftSettings
from tuneloop.monitor.demo import data as dd
from tuneloop.monitor.drift import DEFAULT_CHECKS, run_checks
from tuneloop.retrain.reference import not_trained_on

LABELS = ["negative", "neutral", "positive"]
TEXT_CHECKS = [c for c in DEFAULT_CHECKS if c.scope == "input" and c.kind == "descriptor"]


def version_reference(pool: pd.DataFrame, picks: int, holdout: int, rng: np.random.Generator) -> tuple[
        pd.DataFrame, pd.DataFrame]:
    """(the retrained version's reference rows, the traffic left for windows)."""
    order = rng.permutation(len(pool))
    seed_rows, unlabelled = pool.iloc[order[:300]], pool.iloc[order[300:]].reset_index(drop=True)
    vectorizer = TfidfVectorizer(min_df=2)
    model = LogisticRegression(max_iter=1000).fit(vectorizer.fit_transform(seed_rows["text"]), seed_rows["label"])
    probs = np.sort(model.predict_proba(vectorizer.transform(unlabelled["text"])), axis=1)
    queue = np.argsort(probs[:, -1] - probs[:, -2])[:picks]  # uncertainty sampling: smallest margin first
    rest = np.setdiff1d(np.arange(len(unlabelled)), queue)
    slice_rows = rng.choice(rest, holdout, replace=False)  # the random evaluation slice
    traffic = np.setdiff1d(rest, slice_rows)
    reference = pd.concat([unlabelled.iloc[queue].assign(split="train"),
                           unlabelled.iloc[slice_rows].assign(split="holdout")], ignore_index=True)
    return reference, unlabelled.iloc[traffic].reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--window-size", type=int, default=200)
    ap.add_argument("--picks", type=int, default=300, help="label-queue picks in the version's training rows")
    ap.add_argument("--holdout", type=int, default=200, help="rows of the random evaluation slice")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    pool = dd.split_topics(seed=0)["airline"]["stream"][["text", "label"]].reset_index(drop=True)
    reference, traffic = version_reference(pool, args.picks, args.holdout, rng)
    references = {"all reference rows (training rows included)": reference,
                  "rows not trained on": not_trained_on(reference)}
    lengths = {name: ref["text"].str.len().median() for name, ref in references.items()}
    settings = DriftSettings()
    alarms = {name: {c.name: 0 for c in TEXT_CHECKS} | {"any": 0} for name in references}
    started = time.perf_counter()
    for _ in range(args.windows):
        window = traffic.iloc[rng.choice(len(traffic), args.window_size, replace=True)].reset_index(drop=True)
        for name, ref in references.items():
            results = run_checks(ref, window, settings, LABELS, checks=TEXT_CHECKS)
            for r in results:
                alarms[name][r.metric] += bool(r.drifted)
            alarms[name]["any"] += any(r.drifted for r in results)
    print(f"airline tweets: {len(pool)} rows; reference: {args.picks} queue picks (train) + {args.holdout} random "
          f"slice (holdout); {args.windows} windows of {args.window_size} random traffic rows; "
          f"median text length: traffic {traffic['text'].str.len().median():.0f}, "
          + ", ".join(f"{name} {v:.0f}" for name, v in lengths.items()))
    for name, counts in alarms.items():
        print(f"{name:<45} " + "   ".join(f"{m} {k}/{args.windows}" for m, k in counts.items()))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
