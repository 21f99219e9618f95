"""Data-quality report for a labelled text dataset: what to fix before fine-tuning on it.

Fine-tuning learns from few rows, so each bad row costs. The report looks at

* class balance (rows per class, imbalance ratio, classes too small to learn);
* text lengths (empty, too short, too long, over the model's token limit: those get truncated);
* exact and near-duplicate texts, and duplicates that carry different labels;
* charset oddities (replacement characters, mojibake, control characters, a foreign script);
* suspected label errors, by confident learning (cleanlab) on out-of-fold predicted
  probabilities of a cross-validated logistic regression on the frozen encoder's embeddings,
  blended with a TF-IDF character n-gram model: a few seconds for thousands of rows, no fine-tune.
  They come in two tiers: "likely" (the top of cleanlab's list, as many rows as it expects real errors in it),
  whose fixes are suggested, and "possible" (the rest), shown but changed only when chosen.

Every finding names its rows by ``row_id`` (the dataset's stable row number) and may carry a
suggested fix per row (``drop``, or ``relabel`` to a label), which the operator can accept. A
suspected label error is suggested as ``drop``, with the model's label in ``label`` for whoever
relabels it instead: dropping recovered far more of the accuracy lost to noise than relabelling
in bulk (bench/label_noise.py), since the list also holds hard rows whose label was right.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MIN_CHARS = 3
"""Texts shorter than this (after trimming) carry almost nothing to learn from."""
MAX_CHARS = 5000
"""Texts longer than this are probably documents or pasted logs, not one example."""
MIN_ROWS_PER_CLASS = 10
"""Below this a class cannot be learnt or evaluated (a 20 % holdout holds 2 of them)."""
IMBALANCE_RATIO = 5.0
"""Largest class / smallest class above this: the rare class needs more examples."""
NEAR_DUPLICATE_COSINE = 0.97
"""Embedding cosine at or above this (and not an exact duplicate): the same text, reworded or retweeted."""
FOLDS = 10
"""Folds of the embeddings' out-of-fold model: each fit sees 90 % of the rows, so its probabilities are
nearer the full-data model's (likely tier at 20 % flipped, seeds 10-12: precision 0.614, against 0.606 with 5)."""
TEXT_FOLDS = 5
"""Folds (at most) of the character n-gram model: its fits cost most, and 10 folds gained it nothing measurable."""
MAX_LISTED = 10_000
"""At most this many row ids per finding in the report (the count is always the full one)."""
C_GRID = (0.3, 1.0, 10.0)
"""Regularisation strengths of the out-of-fold logistic regressions (embeddings, character n-grams); the
one with the lowest cross-validated log-loss is used. Encoders differ: real sentence embeddings of noisy tweets want
0.3-1, a small or random encoder 10 (measured in bench/label_noise.py and tests/test_quality.py)."""
C_SAMPLE = 2000
"""Rows (at most) used to choose C: the choice is stable well before that, and it bounds the cost."""
CHAR_NGRAMS = (3, 4)
"""Character n-grams (within words) of the TF-IDF model blended into the embeddings' probabilities:
they catch words, their stems and misspellings. On noisy tweets they fit the given labels better than
word unigrams and bigrams and made the likely tier more precise (bench/label_noise.py, seeds 10-12 at
20 %: 0.58 -> 0.61); 2-4 and 2-5 grams did no better and cost up to twice as much."""
CHAR_FEATURES = 10_000
"""The most frequent n-grams kept: rarer ones add little to a linear model of a few thousand rows,
and fewer coefficients make each fit about 2.5x faster (measured on 10,000 tweets)."""
TOL = 1e-3
"""Stopping tolerance of the out-of-fold fits: about half the iterations of scikit-learn's 1e-4 at no
measured loss in the suspects' precision; the fits are most of the label check's time."""
CHAR_SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Candidate weights of the character model in the blend; the lowest log-loss on the given labels wins
(tweets: 0.3-0.5; up to 1 when the embeddings carry nothing of the labels)."""

OPT_IN_CHECKS = ("possible_label_error",)
"""Findings whose fixes are offered in the finding only, not in ``suggested_fixes`` (not acted on by default)."""

EmbedFn = Callable[[list[str]], np.ndarray]

_MOJIBAKE = re.compile("Ã[\u0080-\u00bf]|â€|Â[\u00a0-\u00bf]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")


@dataclass
class Finding:
    """One kind of problem and the rows that have it."""

    check: str
    severity: str  # "error": fix before training; "warning": worth a look; "info": a fact
    message: str
    rows: list[int] = field(default_factory=list)
    count: int = 0
    fixes: list[dict[str, Any]] = field(default_factory=list)  # {"row_id", "action", "label"?, "why"}
    details: dict[str, Any] = field(default_factory=dict)


def normalise_text(text: str) -> str:
    """Case-folded, NFKC, whitespace collapsed: texts equal under this are exact duplicates."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _finding(check: str, severity: str, message: str, rows: Sequence[int], fixes: list[dict[str, Any]] | None = None,
             **details: Any) -> Finding:
    rows = [int(r) for r in rows]
    return Finding(check, severity, message, rows[:MAX_LISTED], len(rows), (fixes or [])[:MAX_LISTED], details)


# ---- the checks ------------------------------------------------------------------------------------


def class_balance(labels: pd.Series, label_set: Sequence[str]) -> tuple[dict[str, int], list[Finding]]:
    counts = {lab: int((labels == lab).sum()) for lab in label_set}
    out: list[Finding] = []
    missing = [lab for lab, n in counts.items() if n == 0]
    if missing:
        out.append(_finding("class_missing", "error", f"no rows for label(s) {missing}", []))
    small = {lab: n for lab, n in counts.items() if 0 < n < MIN_ROWS_PER_CLASS}
    if small:
        out.append(_finding("class_too_small", "warning",
                            f"label(s) with fewer than {MIN_ROWS_PER_CLASS} rows: {small}", [], counts=small))
    present = [n for n in counts.values() if n > 0]
    ratio = max(present) / min(present) if present else 0.0
    if ratio > IMBALANCE_RATIO:
        big, rare = max(counts, key=counts.get), min((k for k in counts if counts[k]), key=counts.get)
        out.append(_finding("imbalance", "warning",
                            f"{big!r} has {ratio:.1f}x the rows of {rare!r}: the model will favour it; add "
                            f"{rare!r} examples if you can", [], ratio=round(ratio, 2)))
    return counts, out


def lengths(row_ids: np.ndarray, texts: list[str], token_counts: np.ndarray | None, max_tokens: int | None,
            ) -> list[Finding]:
    stripped = np.array([len(t.strip()) for t in texts])
    out = []
    empty = row_ids[stripped == 0]
    if len(empty):
        out.append(_finding("empty_text", "error", f"{len(empty)} empty text(s)", empty,
                            [{"row_id": int(r), "action": "drop", "why": "empty text"} for r in empty]))
    short = row_ids[(stripped > 0) & (stripped < MIN_CHARS)]
    if len(short):
        out.append(_finding("too_short", "warning", f"{len(short)} text(s) shorter than {MIN_CHARS} characters",
                            short, [{"row_id": int(r), "action": "drop", "why": "too short"} for r in short]))
    long = row_ids[stripped > MAX_CHARS]
    if len(long):
        out.append(_finding("too_long", "warning", f"{len(long)} text(s) longer than {MAX_CHARS} characters", long))
    if token_counts is not None and max_tokens:
        over = row_ids[token_counts > max_tokens]
        if len(over):
            out.append(_finding("over_max_length", "info",
                                f"{len(over)} text(s) over the model's {max_tokens} tokens: only their start is read",
                                over, max_tokens=max_tokens))
    return out


def exact_duplicates(row_ids: np.ndarray, texts: list[str], labels: np.ndarray) -> list[Finding]:
    keys = pd.Series([normalise_text(t) for t in texts])
    keys = keys[keys != ""]
    groups = [g for g in keys.groupby(keys).groups.values() if len(g) > 1]
    dup_rows, conflict_rows, fixes, conflicts = [], [], [], []
    for g in groups:
        idx = np.asarray(sorted(g))
        labs = labels[idx]
        if len(set(labs)) > 1:
            conflict_rows += row_ids[idx].tolist()
            conflicts.append({"rows": row_ids[idx].tolist(), "labels": labs.tolist()})
        else:  # same text, same label: keep the first copy
            dup_rows += row_ids[idx[1:]].tolist()
            fixes += [{"row_id": int(r), "action": "drop", "why": f"exact duplicate of row {int(row_ids[idx[0]])}"}
                      for r in row_ids[idx[1:]]]
    out = []
    if dup_rows:
        out.append(_finding("exact_duplicate", "warning",
                            f"{len(dup_rows)} extra cop(ies) of texts that appear more than once (same label)",
                            dup_rows, fixes))
    if conflict_rows:
        out.append(_finding("conflicting_duplicate", "error",
                            f"{len(conflicts)} text(s) appear with different labels ({len(conflict_rows)} rows): "
                            "decide which label is right", conflict_rows, groups=conflicts[:MAX_LISTED]))
    return out


def near_duplicates(row_ids: np.ndarray, texts: list[str], labels: np.ndarray, emb: np.ndarray,
                    threshold: float = NEAR_DUPLICATE_COSINE, chunk: int = 2048) -> list[Finding]:
    """Pairs of different texts whose (L2-normalised) embeddings have cosine >= ``threshold``."""
    keys = np.array([normalise_text(t) for t in texts], dtype=object)
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    pairs: list[tuple[int, int]] = []
    for s in range(0, len(e), chunk):
        sim = e[s:s + chunk] @ e.T
        ii, jj = np.nonzero(sim >= threshold)
        ii = ii + s
        keep = (jj > ii) & (keys[ii] != keys[jj])
        pairs += list(zip(ii[keep].tolist(), jj[keep].tolist(), strict=True))
    if not pairs:
        return []
    rows = sorted({int(row_ids[k]) for p in pairs for k in p})
    conflicting = [(int(row_ids[i]), int(row_ids[j])) for i, j in pairs if labels[i] != labels[j]]
    return [_finding("near_duplicate", "warning" if conflicting else "info",
                     f"{len(pairs)} pair(s) of near-identical texts"
                     + (f", {len(conflicting)} of them with different labels" if conflicting else ""),
                     rows, pairs=[(int(row_ids[i]), int(row_ids[j])) for i, j in pairs[:MAX_LISTED]],
                     conflicting_pairs=conflicting[:MAX_LISTED])]


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else "UNKNOWN"


def charset(row_ids: np.ndarray, texts: list[str]) -> list[Finding]:
    replacement = [r for r, t in zip(row_ids, texts, strict=True) if "\ufffd" in t]
    mojibake = [r for r, t in zip(row_ids, texts, strict=True) if _MOJIBAKE.search(t)]
    control = [r for r, t in zip(row_ids, texts, strict=True) if _CONTROL.search(t)]
    # Main script of each text (by letters); texts whose script differs from the dataset's usual one.
    scripts = []
    for t in texts:
        letters = [_script(c) for c in t if c.isalpha()]
        scripts.append(pd.Series(letters).mode().iloc[0] if letters else "")
    common = pd.Series([s for s in scripts if s]).mode()
    usual = common.iloc[0] if len(common) else ""
    foreign = [r for r, s in zip(row_ids, scripts, strict=True) if s and usual and s != usual]
    out = []
    if replacement:
        out.append(_finding("replacement_char", "warning",
                            f"{len(replacement)} text(s) contain U+FFFD: characters were lost in a wrong decoding",
                            replacement))
    if mojibake:
        out.append(_finding("mojibake", "warning",
                            f"{len(mojibake)} text(s) look double-encoded (UTF-8 read as Latin-1, e.g. 'Ã©')",
                            mojibake))
    if control:
        out.append(_finding("control_chars", "info", f"{len(control)} text(s) contain control characters", control))
    if foreign:
        out.append(_finding("other_script", "info",
                            f"{len(foreign)} text(s) are mostly in another script than the usual {usual.title()}",
                            foreign, usual_script=usual))
    return out


def choose_c(emb: Any, y: np.ndarray, seed: int = 0) -> float:
    """The C of ``C_GRID`` with the lowest 3-fold log-loss on at most ``C_SAMPLE`` rows of ``emb``
    (embeddings, or the sparse n-gram matrix: on 300 keyword texts the n-gram model wants 10, on tweets 0.3-1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if len(y) > C_SAMPLE:
        keep = np.random.default_rng(seed).choice(len(y), C_SAMPLE, replace=False)
        emb, y = emb[keep], y[keep]
    k = int(min(3, np.bincount(y)[np.bincount(y) > 0].min()))
    if k < 2:
        return 1.0
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    scores = {c: cross_val_score(LogisticRegression(max_iter=1000, C=c, tol=TOL), emb, y, cv=cv,
                                 scoring="neg_log_loss").mean() for c in C_GRID}
    return max(scores, key=scores.get)


def out_of_fold_probs(emb: Any, y: np.ndarray, n_classes: int, folds: int = FOLDS, seed: int = 0,
                      c: float | None = None) -> np.ndarray:
    """Predicted probabilities of each row from a logistic regression that never saw that row.

    No class weighting: re-weighted classes skew the probabilities that confident learning thresholds
    (measured: less precise suspect lists, bench/label_noise.py).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(y), n_classes))
    k = int(min(folds, np.bincount(y, minlength=n_classes)[np.bincount(y, minlength=n_classes) > 0].min()))
    if k < 2:
        raise ValueError("every label needs at least 2 rows for cross-validated label checks")
    c = choose_c(emb, y, seed) if c is None else c
    for train_idx, test_idx in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        clf = LogisticRegression(max_iter=1000, C=c, tol=TOL)
        clf.fit(emb[train_idx], y[train_idx])
        p = np.zeros((len(test_idx), n_classes))
        p[:, clf.classes_] = clf.predict_proba(emb[test_idx])
        probs[test_idx] = p
    return probs


def _log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1)).mean())


def blend_with_text(probs: np.ndarray, texts: Sequence[str], y: np.ndarray, folds: int = TEXT_FOLDS,
                    seed: int = 0) -> tuple[np.ndarray, float]:
    """``probs`` mixed with out-of-fold probabilities of a TF-IDF character n-gram logistic regression.

    Character n-grams catch what a small sentence encoder blurs (names, negations, domain terms,
    misspellings). The share of the text model (one of ``CHAR_SHARES``) is the one with the lowest
    log-loss against the given labels: no clean labels are needed, and a useless text model gets share 0.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        grams = TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, min_df=2, max_features=CHAR_FEATURES,
                                sublinear_tf=True).fit_transform(texts)
    except ValueError:  # no n-gram occurs twice
        return probs, 0.0
    text_probs = out_of_fold_probs(grams, y, probs.shape[1], folds, seed)
    mixes = {w: (1 - w) * probs + w * text_probs for w in CHAR_SHARES}
    share = min(mixes, key=lambda w: _log_loss(mixes[w], y))
    return mixes[share], share


def mislabel_probability(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per row, the estimated probability that its given label is wrong (Bayes, class-conditional noise).

    cleanlab's confident joint gives the noise matrix N[i, j] = P(given i | true j); the out-of-fold
    probabilities estimate P(given | x), so the clean posterior is P(true | x) = N^-1 P(given | x) and
    P(given label right | x) = N[y, y] P(true = y | x) / P(given = y | x).
    """
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    rows = np.arange(len(y))
    try:
        noise = estimate_py_and_noise_matrices_from_probabilities(y, probs)[1]
        clean = np.linalg.solve(noise, probs.T).T
    except (np.linalg.LinAlgError, ValueError):  # a degenerate noise estimate: no calibrated answer
        return 1 - probs[rows, y]
    clean = np.clip(clean, 1e-6, None)
    clean /= clean.sum(axis=1, keepdims=True)
    right = noise[y, y] * clean[rows, y] / np.maximum((clean @ noise.T)[rows, y], 1e-12)
    return np.clip(1 - right, 0.0, 1.0)


def label_errors(row_ids: np.ndarray, labels: np.ndarray, label_set: Sequence[str], emb: np.ndarray,
                 folds: int = FOLDS, seed: int = 0, texts: Sequence[str] | None = None,
                 ) -> tuple[list[Finding], np.ndarray | None]:
    """Rows whose given label the out-of-fold model confidently disagrees with (cleanlab), most suspect first,
    in two tiers: ``label_error`` ("likely", with fixes acted on by default) and ``possible_label_error``.

    cleanlab lists as many rows as it estimates label errors, but that list also holds hard rows whose
    label was right. Its expected number of real errors is the sum of each listed row's
    :func:`mislabel_probability`; the "likely" tier is that many rows from the top of the list (ranked
    by self-confidence), the rest is "possible": shown, not acted on unless chosen.
    ``texts`` (row-aligned) add a character n-gram model to the embeddings' (:func:`blend_with_text`).
    """
    from cleanlab.filter import find_label_issues
    from threadpoolctl import threadpool_limits

    index = {lab: i for i, lab in enumerate(label_set)}
    y = np.array([index[lab] for lab in labels])
    present = np.unique(y)
    if len(present) < 2 or np.bincount(y)[present].min() < 2:
        return [], None
    # cleanlab wants classes 0..k-1 all present: map the present ones onto that range.
    remap = {c: i for i, c in enumerate(present)}
    yy = np.array([remap[c] for c in y])
    # One BLAS thread: these fits are many small matrix-vector products, which a second thread only
    # slows down, by far on a busy machine (measured 30x on a loaded 2-core host).
    with threadpool_limits(1):
        probs = out_of_fold_probs(emb, yy, len(present), folds, seed)
        text_share = 0.0
        if texts is not None:
            probs, text_share = blend_with_text(probs, texts, yy, min(folds, TEXT_FOLDS), seed)
        issues = find_label_issues(yy, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
        wrong = mislabel_probability(yy, probs)
    full = np.zeros((len(y), len(label_set)))
    full[:, present] = probs
    if not len(issues):
        return [], full
    fixes = []
    for i in issues:
        suggested = label_set[present[int(probs[i].argmax())]]
        fixes.append({"row_id": int(row_ids[i]), "action": "drop", "label": suggested,
                      "given": str(labels[i]), "confidence": round(float(probs[i].max()), 3),
                      "mislabel_probability": round(float(wrong[i]), 3),
                      "why": f"labelled {labels[i]!r}, the cross-validated model says {suggested!r} "
                             f"({probs[i].max():.0%})"})
    n_likely = int(round(float(wrong[issues].sum())))
    method = (f"confident learning (cleanlab) on {folds}-fold out-of-fold logistic regression over frozen-encoder "
              "embeddings" + (f" blended with a TF-IDF character n-gram model ({text_share:.0%})"
                              if text_share else ""))
    rows = [int(row_ids[i]) for i in issues]
    share = n_likely / len(y)
    out = []
    if n_likely:
        out.append(_finding("label_error", "error" if share > 0.02 else "warning",
                            f"{n_likely} row(s) ({share:.1%}) look mislabelled: drop them, or relabel those "
                            "you checked", rows[:n_likely], fixes[:n_likely], method=method, tier="likely",
                            expected_errors=round(float(wrong[issues[:n_likely]].sum()), 1)))
    if len(issues) > n_likely:
        rest = issues[n_likely:]
        out.append(_finding("possible_label_error", "info",
                            f"{len(rest)} more row(s) may be mislabelled (about "
                            f"{float(wrong[rest].mean()):.0%} of them are expected to be): check them before you "
                            "drop or relabel any", rows[n_likely:], fixes[n_likely:], method=method, tier="possible",
                            expected_errors=round(float(wrong[rest].sum()), 1)))
    return out, full


# ---- the report ------------------------------------------------------------------------------------


def embed_distinct(embed: EmbedFn, texts: list[str]) -> np.ndarray:
    """Embeddings of ``texts``, each distinct text encoded once, shortest first (little padding per batch)."""
    distinct, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    order = np.argsort([len(t) for t in distinct], kind="stable")
    emb = np.asarray(embed([str(t) for t in distinct[order]]), dtype=np.float32)
    out = np.empty_like(emb)
    out[order] = emb
    return out[inverse.reshape(-1)]


def quality_report(
    df: pd.DataFrame,
    labels: Sequence[str] | None = None,
    embed: EmbedFn | None = None,
    tokenizer: Any = None,
    max_tokens: int | None = None,
    folds: int = FOLDS,
    seed: int = 0,
) -> dict[str, Any]:
    """Run every check on ``df`` (columns ``text``, ``label``, optional ``row_id``; default 1..n).

    ``embed`` maps texts to embeddings (the frozen encoder); without it the near-duplicate and
    label-error checks are skipped and the report says so. ``tokenizer`` + ``max_tokens`` enable the
    over-length check. Returns a JSON-ready dict: ``n_rows``, ``labels``, ``class_counts``,
    ``findings`` (worst first), ``suggested_fixes`` (one per row, label errors and drops merged),
    ``seconds`` per check.
    """
    t_all = time.perf_counter()
    texts = df["text"].astype(str).tolist()
    given = df["label"].astype(str).to_numpy()
    row_ids = df["row_id"].to_numpy() if "row_id" in df.columns else np.arange(1, len(df) + 1)
    label_set = list(labels) if labels else sorted(set(given))
    seconds: dict[str, float] = {}
    findings: list[Finding] = []

    t = time.perf_counter()
    counts, found = class_balance(pd.Series(given), label_set)
    findings += found
    token_counts = None
    if tokenizer is not None:
        token_counts = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]])
    findings += lengths(row_ids, texts, token_counts, max_tokens)
    findings += exact_duplicates(row_ids, texts, given)
    findings += charset(row_ids, texts)
    seconds["text_checks"] = time.perf_counter() - t

    skipped = []
    if embed is not None and len(texts) >= 2:
        t = time.perf_counter()
        emb = embed_distinct(embed, texts)
        seconds["embed"] = time.perf_counter() - t
        t = time.perf_counter()
        findings += near_duplicates(row_ids, texts, given, emb)
        seconds["near_duplicates"] = time.perf_counter() - t
        t = time.perf_counter()
        found, _ = label_errors(row_ids, given, label_set, emb, folds, seed, texts=texts)
        findings += found
        seconds["label_errors"] = time.perf_counter() - t
    else:
        skipped = ["near_duplicate", "label_error"]

    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: (order[f.severity], -f.count))
    fixes: dict[int, dict[str, Any]] = {}
    for f in findings:  # drops (empty, duplicates) win over relabels of the same row
        for fix in f.fixes if f.check not in OPT_IN_CHECKS else []:
            if fix["row_id"] not in fixes or fix["action"] == "drop":
                fixes[fix["row_id"]] = {**fix, "check": f.check}
    seconds["total"] = time.perf_counter() - t_all
    return {
        "n_rows": len(df), "labels": label_set, "class_counts": counts,
        "findings": [asdict(f) for f in findings], "skipped": skipped,
        "suggested_fixes": sorted(fixes.values(), key=lambda x: x["row_id"]),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report as short plain lines (CLI, logs)."""
    lines = [f"{report['n_rows']} rows; per class: "
             + ", ".join(f"{k} {v}" for k, v in report["class_counts"].items())]
    for f in report["findings"]:
        rows = ", ".join(str(r) for r in f["rows"][:10]) + (" ..." if f["count"] > 10 else "")
        lines.append(f"[{f['severity']}] {f['message']}" + (f" (rows {rows})" if f["rows"] else ""))
    if not report["findings"]:
        lines.append("no problems found")
    if report["skipped"]:
        lines.append(f"skipped (no encoder): {', '.join(report['skipped'])}")
    lines.append(f"{len(report['suggested_fixes'])} suggested fix(es); took {report['seconds']['total']:.1f} s")
    return lines
