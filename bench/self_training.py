"""What does self-training on unlabelled shifted traffic add to a few hundred labels?

The demo's setting (``bench/active_learning.py --model lora``): v1 (LoRA on all-MiniLM-L6-v2,
airline tweets) meets the shifted topics. Per seed, k random stream tweets are labelled and joined
by the retrain's replay; the next ``--pools`` stream tweets are the unlabelled traffic. The two
frozen views of :mod:`tuneloop.retrain.selftrain` (logistic regression on v1's embeddings, TF-IDF)
are fitted on the labelled rows plus the pseudo-labels of 0, 1 or 3 rounds, and their even blend,
which is the retrain's epoch 0 with ``refit_head``, is scored on the 1,500 shifted-topic test tweets
the loop bench scores versions on. Also printed: the same blend fitted on every stream label (what
the frozen views reach with the oracle's labels) and the pseudo-labels' own accuracy.

Only v1's encoder passes are costly (about 90 s once; cached in ``bench/out/al_lora/recipes/``).

``--domains`` asks the same of a first training on other data (``bench/finetune.py``'s datasets):
per dataset and seed, k stratified training rows, ``--pools`` other rows of its pool as unlabelled
texts, the base encoder's embeddings; test accuracy and macro-F1 on the dataset's test rows, beside
the best simple baseline (TF-IDF + LR or frozen-embedding LR) fitted on the same k rows.

With several ``--ks`` it also prints the label savings: how many random labels the views need without
self-training to reach what k labels reach with it (interpolated on the no-self-training curve, per
seed).

    python bench/self_training.py [--seeds 0,1,2] [--ks 300] [--pools 800,1500,3000] [--rounds 0,1,3]
    python bench/self_training.py --ks 300,600,1000,2000,4000 --pools 1500 --rounds 0,3
    python bench/self_training.py --domains airline,tweets5,bbc,drugs --seeds 0,1 --pools 1500
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import active_learning as al  # noqa: E402
import finetune as ft  # noqa: E402
import loop  # noqa: E402
import retrain_recipes as rr  # noqa: E402

DOMAIN_CACHE = al.OUT / "self_training"


def views_after(rounds: int, args: argparse.Namespace, train: tuple[list[str], list[str], np.ndarray],
                pool_texts: list[str], x_pool: np.ndarray, truth: np.ndarray, labels: list[str],
                seed: int) -> tuple[Any, dict[str, Any]]:
    """(the two views fitted on the training rows plus ``rounds`` rounds of pseudo-labels, facts: how many
    pseudo-labels and how many of them match ``truth``, the pool's true labels)."""
    from tuneloop.retrain.selftrain import SelfTraining, agreed_labels, fit_views

    texts, y, x = train
    if not rounds:
        return fit_views(texts, y, x, labels, seed), {"picked": 0, "pseudo_acc": None}
    picked, label_idx, _conf, facts = agreed_labels(
        texts, y, x, pool_texts, x_pool, labels, SelfTraining(pool_texts, rounds, args.min_confidence, args.ratio,
                                                              args.balance),
        seed)
    pseudo_y = [labels[j] for j in label_idx]
    predict = fit_views(texts + [pool_texts[i] for i in picked], y + pseudo_y, np.vstack([x, x_pool[picked]]),
                        labels, seed)
    return predict, {"picked": facts["picked"], "pseudo_acc": float((np.asarray(pseudo_y) == truth[picked]).mean())}


def blend_accuracy(predict: Any, test: pd.DataFrame, x_test: np.ndarray, labels: list[str]) -> float:
    frozen, tfidf = predict(test["text"].tolist(), x_test)
    return rr.accuracy(0.5 * frozen + 0.5 * tfidf, labels, test["label"].to_numpy())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ks", default="300", help="labelled rows (a list: also prints the label savings)")
    p.add_argument("--pools", default="800,1500,3000", help="unlabelled stream rows offered")
    p.add_argument("--rounds", default="0,1,3")
    p.add_argument("--min-confidence", type=float, default=0.7)
    p.add_argument("--ratio", type=float, default=5.0)
    p.add_argument("--balance", action="store_true", help="pseudo-labels in the training rows' class proportions")
    p.add_argument("--domains", default="", help="datasets of bench/finetune.py instead of the demo's shift")
    args = p.parse_args()
    if args.domains:
        return domains(args)

    from tuneloop.monitor.demo.data import split_topics
    from tuneloop.monitor.demo.models import shifted_test, shifted_topics
    from tuneloop.retrain.selftrain import fit_views
    from tuneloop.retrain.versions import load_version

    al_args = argparse.Namespace(data_dir=al.OUT / "loop" / "data", pool=1, test=1, seeds=1)
    settings, plan, v1, older, _pools, _test = al.lora_setting(al_args)
    splits = split_topics(seed=plan.seed)
    stream = pd.concat([splits[t]["stream"] for t in shifted_topics(plan)])[["text", "label"]]
    stream = stream.drop_duplicates("text").reset_index(drop=True)
    test = shifted_test(plan).reset_index(drop=True)
    labels = load_version(v1, threads=1).labels
    x_stream = rr.pooled(v1, stream["text"].tolist(), rr.OUT, adapter=True)
    x_test = rr.pooled(v1, test["text"].tolist(), rr.OUT, adapter=True)
    x_older = rr.pooled(v1, older["text"].tolist(), rr.OUT, adapter=True)
    older_row = {t: i for i, t in enumerate(older["text"])}

    def rows(data: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
        """Texts, labels and v1 embeddings of training rows drawn from the stream and v1's data."""
        stream_row = dict(zip(stream["text"], range(len(stream)), strict=True))
        x = np.stack([x_stream[stream_row[t]] if t in stream_row else x_older[older_row[t]] for t in data["text"]])
        return data["text"].tolist(), data["label"].astype(str).tolist(), x

    everything = al.training_rows(settings, stream, older, 0)
    ceiling = blend_accuracy(fit_views(*rows(everything), labels), test, x_test, labels)
    print(f"frozen views on every one of the {len(stream)} stream labels plus replay: test accuracy {ceiling:.3f}")

    results: list[dict[str, Any]] = []
    ks = [int(k) for k in args.ks.split(",")]
    for seed, k, n_pool in itertools.product([int(s) for s in args.seeds.split(",")], ks,
                                             [int(n) for n in args.pools.split(",")]):
        order = np.random.default_rng(seed).permutation(len(stream))
        texts, y, x = rows(al.training_rows(settings, stream.iloc[order[:k]], older, seed))
        unlabelled = order[k:k + n_pool]
        pool_texts = stream["text"].iloc[unlabelled].tolist()
        for rounds in [int(r) for r in args.rounds.split(",")]:
            predict, facts = views_after(rounds, args, (texts, y, x), pool_texts, x_stream[unlabelled],
                                         stream["label"].iloc[unlabelled].to_numpy(), labels, seed)
            row: dict[str, Any] = {"seed": seed, "k": k, "pool": n_pool, "rounds": rounds, **facts,
                                   "test_accuracy": blend_accuracy(predict, test, x_test, labels)}
            results.append(row)
            print(json.dumps(row), flush=True)
    table = pd.DataFrame(results)
    keys = ["seed", "k", "pool"]
    base = table[table["rounds"] == 0].set_index(keys)["test_accuracy"]
    table["gain"] = table["test_accuracy"].to_numpy() - base.loc[list(table[keys].itertuples(index=False))].to_numpy()
    summary = table.groupby(["k", "pool", "rounds"]).agg(
        test_accuracy=("test_accuracy", "mean"), sd=("test_accuracy", "std"), gain=("gain", "mean"),
        gain_min=("gain", "min"), picked=("picked", "mean"), pseudo_acc=("pseudo_acc", "mean"), seeds=("seed", "count"))
    oracle = loop.oracle_figures([], "default")  # the fine-tuned oracle an earlier bench/loop.py run scored
    if oracle:
        summary["ratio"] = summary["test_accuracy"] / oracle["accuracy"]
    print("\nrandom labels plus replay; test accuracy of the frozen views' even blend"
          + (f" (ratio: to the fine-tuned oracle's {oracle['accuracy']:.3f})" if oracle else "") + ":")
    print(summary.round(3).to_string())
    if len(ks) > 1 and 0 in table["rounds"].values:
        label_savings(table, max(int(r) for r in args.rounds.split(",")))
    return 0


def label_savings(table: pd.DataFrame, rounds: int) -> None:
    """Per k: random labels the views need without self-training to match k labels with it, over k."""
    print(f"\nlabels needed without self-training to match k labels with {rounds} rounds (per seed, interpolated):")
    for (k, n_pool), group in table[table["rounds"] == rounds].groupby(["k", "pool"]):
        ratios = []
        for seed, target in zip(group["seed"], group["test_accuracy"], strict=True):
            plain = table[(table["seed"] == seed) & (table["pool"] == n_pool) & (table["rounds"] == 0)]
            ratios.append(al.savings(list(zip(plain["k"], plain["test_accuracy"], strict=True)), k, target))
        shown = ", ".join("beyond the largest k" if r is None else f"{r:.2f}x" for r in ratios)
        known = [r for r in ratios if r is not None]
        mean = f"mean {np.mean(known):.2f}x" if len(known) == len(ratios) else "not reached on every seed"
        print(f"  k={k}, pool {n_pool}: {shown} ({mean})")


def embedded(texts: list[str]) -> np.ndarray:
    """The base encoder's embeddings (as bench/finetune.py's frozen baseline computes them), cached by text."""
    import hashlib

    key = hashlib.sha1("\n".join([ft.DEFAULT_BASE, *texts]).encode()).hexdigest()[:16]
    path = DOMAIN_CACHE / f"emb-{key}.npy"
    if not path.exists():
        DOMAIN_CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, ft._encoder().encode(texts))
    return np.load(path)


def domains(args: argparse.Namespace) -> int:
    """Self-training's frozen views on a first training of other datasets (see the module docstring)."""
    from tuneloop.retrain.evaluate import classification_metrics
    from tuneloop.retrain.selftrain import fit_views

    results: list[dict[str, Any]] = []
    for name in args.domains.split(","):
        pool, test = ft.dataset(name)
        labels = sorted(pool["label"].astype(str).unique())
        x_test, y_test = embedded(test["text"].tolist()), test["label"].astype(str).tolist()

        def score(probs: np.ndarray, y_test: list[str] = y_test, labels: list[str] = labels) -> dict[str, float]:
            m = classification_metrics(y_test, [labels[k] for k in probs.argmax(1)], labels)
            return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

        for seed in [int(s) for s in args.seeds.split(",")]:
            train = ft.training_sample(name, int(args.ks.split(",")[0]), seed)
            texts, y, x = train["text"].tolist(), train["label"].astype(str).tolist(), embedded(train["text"].tolist())
            for n_pool in [int(n) for n in args.pools.split(",")]:
                unlabelled = ft.unlabelled_sample(name, train, n_pool, seed)
                if unlabelled.empty:  # e.g. the drug reviews at 1,000 rows: all 600 are training rows
                    continue
                pool_texts, x_pool = unlabelled["text"].tolist(), embedded(unlabelled["text"].tolist())
                frozen, tfidf = fit_views(texts, y, x, labels, seed)(test["text"].tolist(), x_test)
                best = max(score(frozen)["macro_f1"], score(tfidf)["macro_f1"])
                for rounds in [int(r) for r in args.rounds.split(",")]:
                    predict, facts = views_after(rounds, args, (texts, y, x), pool_texts, x_pool,
                                                 unlabelled["label"].astype(str).to_numpy(), labels, seed)
                    row: dict[str, Any] = {"dataset": name, "seed": seed, "pool": n_pool, "rounds": rounds,
                                           "best_baseline_f1": best, **facts}
                    frozen, tfidf = predict(test["text"].tolist(), x_test)
                    row.update(score(0.5 * frozen + 0.5 * tfidf))
                    results.append(row)
                    print(json.dumps(row), flush=True)
    table = pd.DataFrame(results)
    table["margin"] = table["macro_f1"] - table["best_baseline_f1"]
    print(f"\n{args.ks.split(',')[0]} labelled rows; the frozen views' even blend, test macro-F1, and its margin "
          f"over the best simple baseline on the same rows (points):")
    summary = table.groupby(["dataset", "pool", "rounds"]).agg(
        accuracy=("accuracy", "mean"), macro_f1=("macro_f1", "mean"), margin=("margin", "mean"),
        margin_min=("margin", "min"), picked=("picked", "mean"), pseudo_acc=("pseudo_acc", "mean"),
        seeds=("seed", "count"))
    summary[["margin", "margin_min"]] *= 100
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
