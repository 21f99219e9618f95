"""Which retrain recipe turns a few hundred labels of shifted traffic into the most test accuracy?

The demo's retrain continues the champion v1 (LoRA on all-MiniLM-L6-v2, airline tweets) on the new
labels plus replay. This bench compares recipes on the same random picks and the same test rows, in
the setting of ``bench/active_learning.py --model lora`` (its pools, test rows, replay and cached
champion passes): per seed, the first k rows of a random order of 600 shifted-topic tweets are
labelled, each recipe trains on them plus the retrain's replay, and is scored on 400 shifted-topic
test tweets. Recipes:

* fine-tunes by the real trainer from v1: ``sturdy`` (the demo retrain's settings), and the same with
  changes (:data:`FINE_TUNES`); each also reports its encoder alone and TF-IDF alone on the test rows;
* no fine-tune: logistic regression on v1's (or the base encoder's) frozen embeddings of the same rows,
  alone and in the even blend with the TF-IDF model (seconds each).

Results are cached per (recipe, seed, k) in ``bench/out/al_lora/recipes/``.

    nice -n 15 python bench/retrain_recipes.py [--seeds 0,1] [--ks 160,320] [--recipes sturdy,refit] [--threads 1]
    nice -n 15 python bench/retrain_recipes.py --seeds 0,1,2 --ks 300,600,1000,2000 --pool 2000 --test 1500 \
        --recipes refit,refit_selftrain --limit refit_selftrain=300   # self-training's label savings
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
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import active_learning as al  # noqa: E402

OUT = al.LORA_OUT / "recipes"
FINE_TUNES: dict[str, dict[str, Any]] = {
    "sturdy": {},
    "refit": {"refit_head": True},
    "refit_lowlr": {"refit_head": True, "learning_rate": 3e-4, "head_learning_rate": 3e-3},
    "lowlr": {"learning_rate": 3e-4, "head_learning_rate": 3e-3},
    "refit_unweighted": {"refit_head": True, "class_weights": False},
    "refit_selftrain": {"refit_head": True, "self_training": True, "pseudo_balance": True},
    "refit_selftrain_unbalanced": {"refit_head": True, "self_training": True, "pseudo_balance": False},
}
TRAIN_ARGUMENTS = ("refit_head", "class_weights", "self_training")  # train() arguments, not model settings
RETRAIN_SETTINGS = ("pseudo_balance",)  # self-training's knobs, from the retrain settings


def accuracy(probs: np.ndarray, labels: list[str], y: np.ndarray) -> float:
    return float((np.asarray(labels)[probs.argmax(1)] == y).mean())


def fine_tune(settings, v1: Path, data: pd.DataFrame, test: pd.DataFrame, changes: dict[str, Any],  # type: ignore[no-untyped-def]
              unlabelled: list[str]) -> dict[str, Any]:
    """Served, encoder-alone and TF-IDF-alone test accuracy of v1 fine-tuned on ``data`` with ``changes``
    (``self_training``: with the retrain's self-training on the ``unlabelled`` texts)."""
    from tuneloop.retrain.selftrain import SelfTraining
    from tuneloop.retrain.trainer import train

    model = al.retrain_model_settings(settings).model_copy(
        update={k: v for k, v in changes.items() if k not in TRAIN_ARGUMENTS + RETRAIN_SETTINGS})
    arguments = {k: v for k, v in changes.items() if k in TRAIN_ARGUMENTS}
    if arguments.get("self_training"):
        r = settings.retrain.model_copy(update={k: v for k, v in changes.items() if k in RETRAIN_SETTINGS})
        arguments["self_training"] = SelfTraining.from_settings(unlabelled, r)
    t, cpu = time.perf_counter(), time.process_time()
    result = train(data, None, model, init_from=v1, progress=False, **arguments)
    clf, texts, y = result.classifier, test["text"].tolist(), test["label"].to_numpy()
    sparse, clf.sparse = clf.sparse, None
    encoder = clf.predict(texts).probs
    tfidf = sparse.predict_proba(texts)
    w = clf.settings.blend_tfidf
    return {"accuracy": accuracy((1 - w) * encoder + w * tfidf, clf.labels, y),
            "encoder": accuracy(encoder, clf.labels, y), "tfidf": accuracy(tfidf, clf.labels, y),
            "best_epoch": result.metrics["best_epoch"], "epochs_run": result.metrics["epochs_run"],
            "val_accuracy": result.metrics["val_accuracy"], "seconds": round(time.perf_counter() - t, 1),
            "pseudo_labels": (result.metrics.get("self_training") or {}).get("picked"),
            "cpu_seconds": round(time.process_time() - cpu, 1)}


def frozen_recipes(x_train: dict[str, np.ndarray], data: pd.DataFrame, x_test: dict[str, np.ndarray],
                   test: pd.DataFrame, labels: list[str], seed: int) -> dict[str, float]:
    """Logistic regression on frozen embeddings (v1's, the base's), alone and evenly blended with TF-IDF."""
    from tuneloop.retrain import baselines as bl

    y_train, y = data["label"].tolist(), test["label"].to_numpy()
    tfidf = bl.SparseModel.fit(data["text"].tolist(), y_train, labels, seed).predict_proba(test["text"].tolist())
    out = {"tfidf": accuracy(tfidf, labels, y)}
    for name, xs in x_train.items():
        coef, intercept = bl.frozen_logreg(xs, y_train, labels, seed)
        probs = softmax(x_test[name] @ coef.T + intercept, axis=1)
        out[f"lr_{name}"] = accuracy(probs, labels, y)
        out[f"lr_{name}+tfidf"] = accuracy(0.5 * probs + 0.5 * tfidf, labels, y)
        coef, intercept = bl.frozen_logreg(xs, y_train, labels, seed, balanced=False)  # for the rows' label mix
        out[f"lr_{name}_unweighted"] = accuracy(x_test[name] @ coef.T + intercept, labels, y)
    return out


def pooled(v1: Path, texts: list[str], cache: Path, adapter: bool) -> np.ndarray:
    """v1's pooled vectors (what its head reads; the base's with ``adapter`` off), cached by text."""
    from tuneloop.retrain.versions import load_version

    key = hashlib.sha1("\n".join([str(v1.resolve()), str(adapter), *texts]).encode()).hexdigest()[:16]
    path = cache / f"pooled-{key}.npy"
    if not path.exists():
        clf = load_version(v1, threads=1, trainable=True)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, clf.base_pooled(texts, adapter=adapter))
    return np.load(path)


def al_cached(settings, seed: int, k: int, pool: pd.DataFrame, test: pd.DataFrame) -> Path | None:  # type: ignore[no-untyped-def]
    """``active_learning.py --model lora``'s result for random picks at (seed, k) with the retrain's settings."""
    before = settings.model_copy(deep=True)
    before.retrain.refit_head = False  # the recipe without changes
    path = al.LORA_OUT / f"random-{seed}-{k}-{len(pool)}-{len(test)}-{al.training_key(before)}.json"
    return path if path.exists() else None


def random_order(v1: Path, pool: pd.DataFrame, seed: int) -> np.ndarray:
    """The label queue's random picks, exactly as ``active_learning.lora_main`` draws them."""
    from tuneloop.monitor.label_queue import rank_pool

    probs, emb = al.champion_pass(v1, pool["text"].tolist(), al.LORA_OUT)
    frame = pd.DataFrame({"row": np.arange(len(pool)), "text": pool["text"], "probs": list(probs),
                          "embedding": list(emb)})
    return rank_pool(frame, "random", len(pool), seed=seed)["row"].to_numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--ks", default="160,320")
    p.add_argument("--recipes", default="sturdy,refit", help=f"fine-tunes among {', '.join(FINE_TUNES)}")
    p.add_argument("--pool", type=int, default=600)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--data-dir", type=Path, default=al.OUT / "loop" / "data")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--unlabelled", type=int, default=1500, help="pool rows after the k picked, offered to "
                   "self-training recipes as unlabelled traffic")
    p.add_argument("--limit", action="append", default=[], metavar="RECIPE=K,K",
                   help="run RECIPE at these k only (a costly recipe beside a curve of a cheaper one)")
    args = p.parse_args()
    limits = {name: {int(k) for k in ks.split(",")} for name, ks in (x.split("=", 1) for x in args.limit)}
    seeds, ks = [int(s) for s in args.seeds.split(",")], [int(k) for k in args.ks.split(",")]
    recipes = [r for r in args.recipes.split(",") if r]
    al_args = argparse.Namespace(data_dir=args.data_dir, pool=args.pool, test=args.test, seeds=max(seeds) + 1)
    settings, _plan, v1, older, pools, test = al.lora_setting(al_args)
    settings.model.threads = args.threads
    OUT.mkdir(parents=True, exist_ok=True)
    from tuneloop.retrain.versions import load_version

    labels = load_version(v1, threads=1).labels
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        pool = pools[seed]
        order = random_order(v1, pool, seed)
        for k in ks:
            data = al.training_rows(settings, pool.iloc[order[:k]], older, seed)
            row: dict[str, Any] = {"seed": seed, "k": k}
            x_train = {a: pooled(v1, data["text"].tolist(), OUT, adapter=a == "v1") for a in ("v1", "base")}
            x_test = {a: pooled(v1, test["text"].tolist(), OUT, adapter=a == "v1") for a in ("v1", "base")}
            row.update(frozen_recipes(x_train, data, x_test, test, labels, seed))
            for name in recipes:
                if name in limits and k not in limits[name]:
                    continue
                changes = FINE_TUNES[name]
                tag = hashlib.sha1(json.dumps(changes, sort_keys=True).encode()).hexdigest()[:8]
                if changes.get("self_training"):
                    tag += f"-u{args.unlabelled}"
                path = OUT / f"{name}-{seed}-{k}-{len(pool)}-{len(test)}-{tag}.json"
                if not path.exists() and not changes and (earlier := al_cached(settings, seed, k, pool, test)):
                    path = earlier  # the same fine-tune, run by active_learning.py (served accuracy only)
                elif not path.exists():
                    unlabelled = pool["text"].iloc[order[k:k + args.unlabelled]].tolist()
                    res = fine_tune(settings, v1, data, test, changes, unlabelled)
                    path.write_text(json.dumps(res))
                    print(f"seed {seed} k={k} {name}: {res}", file=sys.stderr, flush=True)
                res = json.loads(path.read_text())
                row.update({name: res["accuracy"], f"{name}.encoder": res.get("encoder"),
                            f"{name}.epoch": res.get("best_epoch")})
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    print("\ntest accuracy on the shifted topics, per seed and k:")
    print(table.round(3).to_string(index=False))
    print("\nmean over seeds per k:")
    print(table.drop(columns="seed").groupby("k").mean().round(3).T.to_string())
    (OUT / "summary.json").write_text(json.dumps(rows, indent=2, default=float))
    for name in recipes:
        without = {k: v for k, v in FINE_TUNES[name].items() if k not in ("self_training", *RETRAIN_SETTINGS)}
        plain = next((r for r, c in FINE_TUNES.items() if c == without), None)
        if FINE_TUNES[name].get("self_training") and plain in recipes and len(ks) > 1:
            label_savings(table, name, plain)
    return 0


def label_savings(table: pd.DataFrame, name: str, plain: str) -> None:
    """Labels ``plain`` needs to reach what ``name`` (the same with self-training) reaches at each k."""
    print(f"\nlabels {plain} needs to match {name} (per seed, interpolated on {plain}'s curve):")
    for k, group in table.groupby("k"):
        ratios = []
        for seed, target in zip(group["seed"], group[name], strict=True):
            if pd.isna(target):
                continue
            own = table[table["seed"] == seed]
            ratios.append(al.savings(list(zip(own["k"], own[plain], strict=True)), k, target))
        if ratios:  # None: beyond the largest k measured
            print(f"  k={k}: {al.seed_interval(ratios)}")


if __name__ == "__main__":
    sys.exit(main())
