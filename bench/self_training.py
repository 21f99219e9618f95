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

    python bench/self_training.py [--seeds 0,1,2] [--k 300] [--pools 800,1500,3000] [--rounds 0,1,3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import active_learning as al  # noqa: E402
import retrain_recipes as rr  # noqa: E402


def blend_accuracy(predict: Any, test: pd.DataFrame, x_test: np.ndarray, labels: list[str]) -> float:
    frozen, tfidf = predict(test["text"].tolist(), x_test)
    return rr.accuracy(0.5 * frozen + 0.5 * tfidf, labels, test["label"].to_numpy())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--k", type=int, default=300, help="labelled stream rows")
    p.add_argument("--pools", default="800,1500,3000", help="unlabelled stream rows offered")
    p.add_argument("--rounds", default="0,1,3")
    p.add_argument("--min-confidence", type=float, default=0.7)
    p.add_argument("--ratio", type=float, default=5.0)
    args = p.parse_args()

    from tuneloop.monitor.demo.data import split_topics
    from tuneloop.monitor.demo.models import shifted_test, shifted_topics
    from tuneloop.retrain.selftrain import SelfTraining, agreed_labels, fit_views
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
    for seed in [int(s) for s in args.seeds.split(",")]:
        order = np.random.default_rng(seed).permutation(len(stream))
        texts, y, x = rows(al.training_rows(settings, stream.iloc[order[:args.k]], older, seed))
        for n_pool in [int(n) for n in args.pools.split(",")]:
            unlabelled = order[args.k:args.k + n_pool]
            pool_texts = stream["text"].iloc[unlabelled].tolist()
            for rounds in [int(r) for r in args.rounds.split(",")]:
                row: dict[str, Any] = {"seed": seed, "pool": n_pool, "rounds": rounds, "picked": 0, "pseudo_acc": None}
                extra_texts: list[str] = []
                extra_y: list[str] = []
                extra_x = np.empty((0, x.shape[1]), dtype=x.dtype)
                if rounds:
                    plan_ = SelfTraining(pool_texts, rounds, args.min_confidence, args.ratio)
                    picked, label_idx, _conf, facts = agreed_labels(texts, y, x, pool_texts, x_stream[unlabelled],
                                                                    labels, plan_, seed)
                    extra_texts, extra_y = [pool_texts[i] for i in picked], [labels[k] for k in label_idx]
                    extra_x = x_stream[unlabelled][picked]
                    truth = stream["label"].iloc[unlabelled].to_numpy()[picked]
                    row.update(picked=facts["picked"], pseudo_acc=float((np.asarray(extra_y) == truth).mean()))
                predict = fit_views(texts + extra_texts, y + extra_y, np.vstack([x, extra_x]), labels, seed)
                row["test_accuracy"] = blend_accuracy(predict, test, x_test, labels)
                results.append(row)
                print(json.dumps(row), flush=True)
    table = pd.DataFrame(results)
    base = table[table["rounds"] == 0].set_index(["seed", "pool"])["test_accuracy"]
    table["gain"] = table["test_accuracy"].to_numpy() - base.loc[list(zip(table["seed"], table["pool"],
                                                                          strict=True))].to_numpy()
    summary = table.groupby(["pool", "rounds"]).agg(
        test_accuracy=("test_accuracy", "mean"), sd=("test_accuracy", "std"), gain=("gain", "mean"),
        gain_min=("gain", "min"), picked=("picked", "mean"), pseudo_acc=("pseudo_acc", "mean"), seeds=("seed", "count"))
    print(f"\n{args.k} random labels plus replay; test accuracy of the frozen views' even blend "
          f"(ratio: to the fine-tuned oracle's recorded 0.713):")
    summary["ratio"] = summary["test_accuracy"] / 0.713
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
