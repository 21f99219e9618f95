"""The demo's models: v1 (trained once and cached), the oracle, and their scores on the shifted topics."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop.monitor.config import Settings
from tuneloop.monitor.demo.data import LABELS, split_topics
from tuneloop.monitor.demo.plan import DemoPlan


def v1_training_data(plan: DemoPlan) -> pd.DataFrame:
    train = split_topics(seed=plan.seed)[plan.start_topic]["train"]
    return train.sample(n=min(plan.n_train, len(train)), random_state=plan.seed)[["text", "label"]]


def v1_cache(settings: Settings, plan: DemoPlan) -> Path:
    """Where v1 for this (data, settings) is cached."""
    import hashlib

    data = v1_training_data(plan)
    key = hashlib.sha256(json.dumps({
        "texts": data["text"].tolist(), "labels": data["label"].tolist(), "epochs": plan.v1_epochs,
        "model": settings.model.model_dump(mode="json"),
    }).encode()).hexdigest()[:12]
    return settings.data_dir / "cache" / f"v1-{key}"


def cached_v1(settings: Settings, plan: DemoPlan, say: Any) -> Path:
    """Train v1 once per (data, settings) and keep it under ``<data_dir>/cache``."""
    import shutil

    from tuneloop.retrain.build import train_version

    data = v1_training_data(plan)
    cache = v1_cache(settings, plan)
    if (cache / "v1" / "COMPLETE").is_file():
        say(f"v1: using the cached model ({cache})")
    else:
        shutil.rmtree(cache, ignore_errors=True)
        cache_settings = settings.model_copy(deep=True)
        cache_settings.paths.data_dir = cache
        cache_settings.model.epochs = plan.v1_epochs
        t0 = time.monotonic()
        say(f"v1: fine-tuning on {len(data)} labelled '{plan.start_topic}' tweets (cached for next time)…")
        (cache / "models").mkdir(parents=True, exist_ok=True)
        trained = train_version(cache_settings.models_dir, cache_settings.model, data, list(LABELS), version="v1",
                                progress=True, log=say)
        shutil.move(str(trained.path), str(cache / "v1"))
        say(f"v1: trained in {time.monotonic() - t0:.0f}s, validation accuracy "
            f"{trained.metrics.get('val_accuracy', float('nan')):.3f}")
    target = settings.models_dir / "v1"
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copytree(cache / "v1", target)
    return target


def shifted_test(plan: DemoPlan) -> pd.DataFrame:
    """Held-out test rows of the shifted topics (never streamed, labelled or trained on)."""
    splits = split_topics(seed=plan.seed)
    test = pd.concat([splits[t]["test"] for t in shifted_topics(plan)]).sample(frac=1.0, random_state=plan.seed)
    return test.head(plan.n_test)[["text", "label"]]


def shifted_topics(plan: DemoPlan) -> list[str]:
    topics = split_topics(seed=plan.seed)
    return [t for t in topics if t != plan.start_topic and (not plan.shift_topics or t in plan.shift_topics)]


def evaluate_on_shift(settings: Settings, plan: DemoPlan, versions: dict[str, Path]) -> dict[str, Any]:
    """Accuracy on the shifted topics' test split for each version (v1, the promoted one)."""
    import hashlib

    from tuneloop.retrain.evaluate import evaluate
    from tuneloop.retrain.versions import load_version

    test = shifted_test(plan)
    test_key = hashlib.sha256("\n".join(test["text"]).encode()).hexdigest()[:12]
    out: dict[str, Any] = {}
    for name, path in versions.items():
        cached = v1_cache(settings, plan) / f"shifted-test-{test_key}.json" if name == "v1" else None
        if cached is not None and cached.is_file():  # v1 is cached, so is its score on the fixed test rows
            out[name] = json.loads(cached.read_text())
            continue
        m = evaluate(load_version(path, threads=settings.model.threads), test)
        out[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": len(test)}
        if cached is not None:
            cached.write_text(json.dumps(out[name]))
    return out


ORACLE_EXAMPLES = 12_000
"""The oracle's epochs are sized to its data: about this many training examples seen in all (at
least one epoch, at most ``retrain.epochs``), as a retrain on a few hundred labels sees a few
thousand. Early stopping is the trainer's, as for every retrain."""


def oracle_data(settings: Settings, plan: DemoPlan) -> tuple[pd.DataFrame, int]:
    """Every training label of the shifted topics plus the replay a retrain would add: a stratified
    sample of v1's training rows, ``replay_ratio`` per new row, at most ``replay_max``.
    Returns (rows, how many of them are shifted-topic labels)."""
    from tuneloop.retrain.dataset import stratified_sample

    splits = split_topics(seed=plan.seed)
    shifted = pd.concat([splits[t]["train"] for t in shifted_topics(plan)])[["text", "label"]]
    if plan.oracle_max:
        shifted = shifted.sample(n=min(plan.oracle_max, len(shifted)), random_state=plan.seed)
    r = settings.retrain
    older = v1_training_data(plan)
    replay = stratified_sample(older, min(round(r.replay_ratio * len(shifted)), r.replay_max, len(older)), plan.seed)
    return pd.concat([shifted, replay[["text", "label"]]], ignore_index=True), len(shifted)


def oracle_cache(settings: Settings, plan: DemoPlan) -> tuple[Path, pd.DataFrame, int, int]:
    """(cache directory, training rows, shifted-topic labels among them, epochs) of the oracle."""
    import hashlib

    data, n_labels = oracle_data(settings, plan)
    epochs = max(1, min(settings.retrain.epochs, round(ORACLE_EXAMPLES / max(1, len(data)))))
    key = hashlib.sha256(json.dumps({
        "texts": data["text"].tolist(), "labels": data["label"].tolist(), "epochs": epochs,
        "v1": v1_cache(settings, plan).name, "test": shifted_test(plan)["text"].tolist(),
        "model": settings.model.model_dump(mode="json"),
    }).encode()).hexdigest()[:12]
    return settings.data_dir / "cache" / f"oracle-{key}", data, n_labels, epochs


def cached_oracle(settings: Settings, plan: DemoPlan) -> dict[str, Any] | None:
    """The oracle's test figures when an earlier run trained it, else None."""
    path = oracle_cache(settings, plan)[0] / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train_oracle(settings: Settings, plan: DemoPlan, v1_path: Path, say: Any,
                 stop_event: threading.Event | None = None) -> dict[str, Any] | None:
    """Train the oracle from v1 (the same trainer and early stopping), evaluate and cache it once."""
    from tuneloop.retrain.evaluate import evaluate
    from tuneloop.retrain.trainer import train

    cache, data, n_labels, epochs = oracle_cache(settings, plan)
    say(f"oracle: training once from v1 on {len(data)} rows (every shifted-topic training label plus "
        f"replay), {epochs} epoch(s); cached for later runs…")
    t0 = time.monotonic()
    result = train(data, None, settings.model, init_from=v1_path, epochs=epochs, progress=False,
                   stop_event=stop_event)
    if result.metrics.get("stopped") == "stop_event":
        return None
    test = shifted_test(plan)
    m = evaluate(result.classifier, test)
    figures = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": len(test),
               "train_labels": n_labels, "train_rows": len(data),
               "epochs": epochs, "train_seconds": round(time.monotonic() - t0, 1)}
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "result.json").write_text(json.dumps(figures, indent=2))
    say(f"oracle: trained in {figures['train_seconds']:.0f} s, test accuracy on the shifted topics "
        f"{figures['accuracy']:.3f}")
    return figures
