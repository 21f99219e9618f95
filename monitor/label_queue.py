"""The label queue: which unlabelled predictions a human should label next.

Labels are the scarce input of the loop, so the queue puts first the rows that teach the model
most. Candidates are a bounded pool of the most recent unlabelled predictions (``POOL_SIZE``), so
a page costs the same at 1 000 or 1 000 000 rows. Strategies:

* ``uncertainty`` — smallest margin between the two most likely classes first (entropy breaks ties);
* ``novelty``     — farthest from the reference data first: 1 - the highest cosine similarity of
  the row's embedding to a fixed-size sample of the reference embeddings;
* ``mix``         — rank-normalised uncertainty blended with a little novelty
  (``MIX_NOVELTY_WEIGHT``), picked greedily with a diversity penalty (maximal marginal relevance):
  each pick's score is lowered by its highest similarity to what the page already holds, and
  near-duplicates (cosine > ``DUPLICATE_COSINE``) never share a page;
* ``cluster``     — covers the drifted region: the pool's more novel half (farthest from the reference)
  in ``limit`` k-means clusters, each giving its most uncertain row (uncertainty within novelty
  clusters, after cluster-margin selection), the clusters' picks by margin;
* ``random``      — a seeded shuffle (the baseline the others must beat).

Every strategy drops exact duplicate texts from a page (retweets would otherwise fill it).

Evaluation slice: ``random_share`` of each page (``retrain.holdout_fraction``) comes from the
evaluation slice (:mod:`tuneloop.retrain.evaluation_slice`) in a fixed random order, marked
``slice: "random"``; strategies never pick slice rows (``slice: "queue"`` for theirs). The labelled
slice rows are a uniform sample of traffic: the gate's holdout, and the yardstick of
:func:`labels_saved`.
:func:`rank_pool` is the pure ranking (used by the benchmark); :func:`label_queue` reads the pool
from the store.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from tuneloop.monitor.storage import DEFAULT_PROJECT, Store, is_missing
from tuneloop.retrain.evaluation_slice import in_slice, random_order, random_positions

Strategy = Literal["uncertainty", "novelty", "mix", "cluster", "random"]
STRATEGIES: tuple[str, ...] = ("uncertainty", "novelty", "mix", "cluster", "random")
POOL_SIZE = 5000
REFERENCE_SAMPLE = 1000
DUPLICATE_COSINE = 0.95
DIVERSITY_WEIGHT = 0.5
"""How much a candidate's similarity to the page so far lowers its mix score."""
MIX_NOVELTY_WEIGHT = 0.1
"""Share of novelty in the mix score (the rest is uncertainty). Small on purpose: in
``bench/active_learning.py`` novelty alone trails random (far-out rows are often odd ones), while
uncertainty with a diverse page is the best ordering measured; novelty still breaks near-ties."""
CANDIDATE_FACTOR = 5
"""The mix page is picked from the best ``CANDIDATE_FACTOR x limit`` rows by blended score."""
CLUSTER_NOVEL_SHARE = 0.5
"""Share of the pool, the most novel first, that the cluster strategy clusters and picks from."""

_NOT_WORD = re.compile(r"[^a-z0-9#@ ]+")
_URL = re.compile(r"https?://\S*")


def text_key(text: str) -> str:
    """Lower-cased text without URLs and punctuation: equal keys are duplicates."""
    key = " ".join(_NOT_WORD.sub(" ", _URL.sub(" ", str(text).lower())).split())
    return key or str(text)


def prob_matrix(values: Sequence[Any]) -> np.ndarray:
    """Probabilities per row as a matrix [n, k] (NaN rows where missing or unreadable).

    Rows come as JSON text (``{"label": p}`` or ``[p, ...]``), dicts, lists or arrays. JSON text is
    parsed in one call for the whole page, not row by row: this is the hot path of the queue.
    """
    n = len(values)
    parsed: list[Any] = [None] * n
    texts = [(i, v) for i, v in enumerate(values) if isinstance(v, str)]
    if texts:
        try:
            decoded = json.loads("[" + ",".join(v for _, v in texts) + "]")
        except ValueError:  # one bad row: fall back to row by row
            decoded = []
            for _, v in texts:
                try:
                    decoded.append(json.loads(v))
                except ValueError:
                    decoded.append(None)
        for (i, _), d in zip(texts, decoded, strict=True):
            parsed[i] = d
    for i, v in enumerate(values):
        if not isinstance(v, str) and not is_missing(v):
            parsed[i] = v
    dict_rows = [i for i, v in enumerate(parsed) if isinstance(v, dict)]
    other_rows = [i for i, v in enumerate(parsed) if v is not None and not isinstance(v, dict)]
    width = 0
    if dict_rows:
        frame = pd.DataFrame.from_records([parsed[i] for i in dict_rows])
        width = frame.shape[1]
    lists = {}
    for i in other_rows:
        try:
            arr = np.asarray(parsed[i], dtype=np.float64).ravel()
        except (TypeError, ValueError):
            continue
        lists[i] = arr
        width = max(width, arr.size)
    out = np.full((n, max(width, 2)), np.nan)
    if dict_rows:
        block = frame.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        out[dict_rows, : block.shape[1]] = np.nan_to_num(block, nan=0.0)
        out[np.array(dict_rows)[np.isnan(block).all(axis=1)]] = np.nan
    for i, arr in lists.items():
        out[i, : arr.size] = arr
        out[i, arr.size:] = 0.0
    bad = ~np.isfinite(out).all(axis=1) | ((~np.isnan(out)).sum(axis=1) < 2)
    out[bad] = np.nan
    return out


def uncertainty(pool: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(margin, entropy) per row. Margin = top1 - top2 probability; without probabilities it falls
    back to the stored ``margin`` column, then to ``2 * confidence - 1`` (exact for two classes)."""
    n = len(pool)
    margin = np.ones(n)
    entropy = np.zeros(n)
    if n == 0:
        return margin, entropy
    probs = prob_matrix(pool["probs"].tolist() if "probs" in pool.columns else [None] * n)
    has = ~np.isnan(probs).any(axis=1)
    if has.any():
        p = probs[has]
        top = -np.sort(-p, axis=1)
        margin[has] = top[:, 0] - top[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy[has] = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    stored = pd.to_numeric(pool["margin"], errors="coerce").to_numpy(np.float64) if "margin" in pool.columns \
        else np.full(n, np.nan)
    conf = pd.to_numeric(pool["confidence"], errors="coerce").to_numpy(np.float64) if "confidence" in pool.columns \
        else np.full(n, np.nan)
    use_stored = ~has & ~np.isnan(stored)
    margin[use_stored] = stored[use_stored]
    use_conf = ~has & np.isnan(stored) & ~np.isnan(conf)
    margin[use_conf] = np.maximum(0.0, 2 * conf[use_conf] - 1)
    return margin, entropy


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def embedding_matrix(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors [n, d] with zeros where missing, mask of rows that have one)."""
    has = np.array([not is_missing(v) and len(v) > 0 for v in values], dtype=bool)
    if not has.any():
        return np.zeros((len(values), 1), np.float32), has
    if has.all() and len({len(v) for v in values}) == 1:  # the usual case: one stack, no loop
        return _unit(np.stack([np.asarray(v, np.float32) for v in values])), has
    dim = len(next(v for v, h in zip(values, has, strict=True) if h))
    out = np.zeros((len(values), dim), np.float32)
    for i in np.flatnonzero(has):
        if len(values[i]) == dim:
            out[i] = np.asarray(values[i], np.float32)
        else:
            has[i] = False
    return _unit(out), has


def novelty(emb: np.ndarray, has: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """1 - max cosine similarity to the reference rows (0 for rows without an embedding)."""
    out = np.zeros(len(emb))
    if reference is None or len(reference) == 0 or not has.any() or reference.shape[1] != emb.shape[1]:
        return out
    ref = _unit(np.asarray(reference, np.float32))
    sims = emb[has] @ ref.T
    out[has] = 1.0 - sims.max(axis=1)
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Rank-normalise to [0, 1] (ties share their mean rank): scales of both signals stop mattering."""
    if len(x) <= 1:
        return np.ones(len(x))
    return (pd.Series(x).rank(method="average").to_numpy() - 1) / (len(x) - 1)


def rank_pool(pool: pd.DataFrame, strategy: str, limit: int, reference: np.ndarray | None = None,
              seed: int = 0) -> pd.DataFrame:
    """The ``limit`` rows of ``pool`` to label first, best first, with a ``score`` column.

    ``pool`` needs ``text`` and, per strategy, ``probs``/``margin``/``confidence`` (uncertainty, mix,
    cluster) and ``embedding`` (novelty, mix, cluster). ``reference``: reference embeddings [m, d] for
    novelty.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    pool = pool.reset_index(drop=True)
    n = len(pool)
    if n == 0 or limit <= 0:
        return pool.assign(score=pd.Series(dtype=float)).iloc[:0]
    keys = pool["text"].map(text_key).to_numpy()

    if strategy == "random":
        rng = np.random.default_rng(seed)
        score = rng.random(n)
        order = np.argsort(-score, kind="stable")
    elif strategy == "uncertainty":
        margin, entropy = uncertainty(pool)
        score = 1.0 - margin
        order = _by_margin(margin, entropy)
    else:
        emb, has = embedding_matrix(pool["embedding"].tolist() if "embedding" in pool.columns else [None] * n)
        nov = novelty(emb, has, reference)
        if strategy == "novelty":
            score = nov
            order = np.argsort(-nov, kind="stable")
        elif strategy == "cluster":
            margin, entropy = uncertainty(pool)
            score = 1.0 - margin
            order = _cluster_order(margin, entropy, emb, has, nov, limit, seed)
        else:
            margin, entropy = uncertainty(pool)
            w = MIX_NOVELTY_WEIGHT
            score = (1 - w) * _ranks(-np.round(margin, 9) + 1e-6 * entropy) + w * _ranks(nov)
            return _with_score(pool, _diverse(score, emb, has, keys, limit), score)
    picked, seen = [], set()
    for i in order:
        if keys[i] in seen:
            continue
        seen.add(keys[i])
        picked.append(int(i))
        if len(picked) >= limit:
            break
    return _with_score(pool, picked, score)


def _by_margin(margin: np.ndarray, entropy: np.ndarray) -> np.ndarray:
    """The uncertainty order: margin ascending, then entropy descending; rounding makes float noise
    (0.5-0.4 vs 0.4-0.3) a tie."""
    return np.lexsort((-np.round(entropy, 9), np.round(margin, 9)))


def _cluster_order(margin: np.ndarray, entropy: np.ndarray, emb: np.ndarray, has: np.ndarray, nov: np.ndarray,
                   limit: int, seed: int) -> np.ndarray:
    """Row order of the cluster strategy: the most novel ``CLUSTER_NOVEL_SHARE`` of the rows with an
    embedding in ``limit`` k-means clusters; first every cluster's most uncertain row (by margin), then
    the rest by margin. Uncertainty alone can fill a page with one confusing region of the new traffic;
    one row per cluster spreads the page over the whole drifted region."""
    from sklearn.cluster import KMeans

    by_margin = _by_margin(margin, entropy)
    novel = np.flatnonzero(has)
    novel = novel[np.argsort(-nov[novel], kind="stable")][: max(limit, int(len(novel) * CLUSTER_NOVEL_SHARE))]
    k = min(limit, len(novel))
    if k < 2:
        return by_margin
    clusters = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(emb[novel])
    rank = np.empty(len(margin), dtype=int)
    rank[by_margin] = np.arange(len(margin))
    heads = [min(novel[clusters == c], key=lambda i: rank[i]) for c in range(k) if (clusters == c).any()]
    heads = sorted(heads, key=lambda i: rank[i])
    first = set(heads)
    return np.array(heads + [int(i) for i in by_margin if int(i) not in first])


def _diverse(score: np.ndarray, emb: np.ndarray, has: np.ndarray, keys: np.ndarray, limit: int) -> list[int]:
    """Greedy maximal marginal relevance over the best candidates (no near-duplicates on a page)."""
    candidates = np.argsort(-score, kind="stable")[: max(limit * CANDIDATE_FACTOR, 2 * limit)]
    max_sim = np.zeros(len(candidates))  # highest similarity of each candidate to the picks so far
    alive = np.ones(len(candidates), dtype=bool)
    cand_emb, cand_has = emb[candidates], has[candidates]
    picked: list[int] = []
    seen: set[str] = set()
    while len(picked) < limit and alive.any():
        adjusted = np.where(alive, score[candidates] - DIVERSITY_WEIGHT * max_sim, -np.inf)
        j = int(np.argmax(adjusted))
        alive[j] = False
        i = int(candidates[j])
        if keys[i] in seen:
            continue
        seen.add(keys[i])
        picked.append(i)
        if cand_has[j]:
            sims = cand_emb @ cand_emb[j]
            sims[~cand_has] = 0.0
            max_sim = np.maximum(max_sim, sims)
            alive &= ~(sims > DUPLICATE_COSINE)
    return picked


def _with_score(pool: pd.DataFrame, picked: list[int], score: np.ndarray) -> pd.DataFrame:
    out = pool.iloc[picked].copy()
    out["score"] = score[picked]
    return out.reset_index(drop=True)


# ---- from the store -------------------------------------------------------------------------


def candidate_pool(store: Store, project: str = DEFAULT_PROJECT, size: int = POOL_SIZE,
                   with_embedding: bool = True) -> pd.DataFrame:
    """The ``size`` most recent predictions that have no feedback (not even pending).

    Reads only a window of the newest rows: the ``window``-th newest arrival sequence number is
    found on one narrow column, and the filter ``ingest_seq >= it`` lets DuckDB skip every older
    row group, so the cost does not grow with the table. The window doubles while labelled rows
    leave fewer than ``size`` candidates in it.
    """
    total = store.count_predictions(project)
    window = 2 * size
    while True:
        floor = 0
        if window < total:
            floor = store.predictions.nth_newest_seq(project, window)
        pool = store.predictions.unlabelled_since_seq(project, floor, size, with_embedding)
        if len(pool) >= size or floor == 0:
            return pool
        window *= 4


_reference_cache: dict[tuple[str, str, str, int, int], tuple[float, np.ndarray | None]] = {}
REFERENCE_CACHE_SECONDS = 300.0
_reference_lock = threading.Lock()
REFERENCE_CACHE_MAX = 32
"""Entries kept at most (one per store, project, champion, size, seed): the oldest go first."""


def _cache_reference(key: tuple[str, str, str, int, int], found: np.ndarray | None) -> None:
    """Store an entry, dropping expired ones and then the oldest beyond ``REFERENCE_CACHE_MAX``."""
    now = time.monotonic()
    with _reference_lock:
        for old in [k for k, (t, _) in _reference_cache.items() if now - t >= REFERENCE_CACHE_SECONDS]:
            del _reference_cache[old]
        _reference_cache.pop(key, None)
        _reference_cache[key] = (now, found)
        while len(_reference_cache) > REFERENCE_CACHE_MAX:
            del _reference_cache[next(iter(_reference_cache))]


def reference_embeddings(store: Store, project: str = DEFAULT_PROJECT, size: int = REFERENCE_SAMPLE,
                         seed: int = 0) -> np.ndarray | None:
    """A fixed-size seeded sample of the reference embeddings: the champion's reference rows, else the
    imported reference, else the project's first predictions. Cached briefly per champion."""
    champion = store.versions.champion_name(project)
    key = (str(store.path), project, champion or "", size, seed)
    hit = _reference_cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < REFERENCE_CACHE_SECONDS:
        return hit[1]
    found = None
    for name in filter(None, [champion, "imported"]):
        df = store.references.embedding_sample(project, name, size, seed)
        if len(df):
            found = np.stack([np.asarray(e, np.float32) for e in df["embedding"]])
            break
    if found is None:
        df = store.predictions.first_embeddings(project, size)
        found = np.stack([np.asarray(e, np.float32) for e in df["embedding"]]) if len(df) else None
        if found is None or len(found) < size:  # the first traffic is still arriving: do not cache it
            return found
    _cache_reference(key, found)
    return found


def queue_size(store: Store, project: str = DEFAULT_PROJECT) -> int:
    """How many predictions of the project still have no label (two counts, no join)."""
    return store.predictions.count_unlabelled(project)


def _probs_dict(value: Any) -> dict[str, float] | None:
    if is_missing(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else None


def _with_random_slice(pool: pd.DataFrame, ranked_rest: Any, limit: int, share: float, seed: int
                       ) -> pd.DataFrame:
    """The page: strategy picks with ``share`` of the positions given to evaluation-slice rows in random order."""
    members = in_slice(pool["id"], share)
    slice_rows = pool[members].reset_index(drop=True)
    slice_rows = slice_rows.iloc[random_order(slice_rows["id"], seed)].assign(score=np.nan, slice="random")
    picks = ranked_rest(pool[~members].reset_index(drop=True), limit).assign(slice="queue")
    spots = set(random_positions(limit, share))
    page, q, r = [], 0, 0
    for i in range(limit):  # a side that runs out leaves its positions to the other
        take_random = (i in spots and r < len(slice_rows)) or q >= len(picks)
        if take_random and r < len(slice_rows):
            page.append(slice_rows.iloc[r])
            r += 1
        elif q < len(picks):
            page.append(picks.iloc[q])
            q += 1
    return pd.DataFrame(page).reset_index(drop=True) if page else picks.iloc[:0]


def label_queue(store: Store, project: str = DEFAULT_PROJECT, strategy: str = "mix", limit: int = 20,
                seed: int = 0, pool_size: int = POOL_SIZE, random_share: float = 0.0) -> list[dict[str, Any]]:
    """The next ``limit`` predictions to label, best first:
    ``{prediction_id, text, label, confidence, probs, score, ts, model_version, slice}``.

    ``random_share`` > 0: that share of the page is uniformly random traffic of the evaluation slice
    (``slice: "random"``, ``score`` None), spread evenly over the page.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    needs_embedding = strategy in ("novelty", "mix", "cluster")
    pool = candidate_pool(store, project, pool_size, with_embedding=needs_embedding)
    reference = reference_embeddings(store, project, seed=seed) if needs_embedding and len(pool) else None
    if random_share > 0 and len(pool):
        ranked = _with_random_slice(pool, lambda rest, k: rank_pool(rest, strategy, k, reference, seed),
                                    limit, random_share, seed)
    else:
        ranked = rank_pool(pool, strategy, limit, reference, seed).assign(slice="queue")
    items = []
    for r in ranked.to_dict("records"):
        conf = r.get("confidence")
        items.append({
            "prediction_id": r["id"], "text": r["text"], "label": r["label"],
            "confidence": None if conf is None or pd.isna(conf) else float(conf),
            "probs": _probs_dict(r.get("probs")),
            "score": None if pd.isna(r["score"]) else round(float(r["score"]), 6),
            "ts": None if pd.isna(r.get("ts")) else pd.Timestamp(r["ts"]).isoformat(),
            "model_version": r.get("model_version"), "slice": r["slice"],
        })
    return items


MIN_SLICE_ROWS = 30
"""Fewer labelled rows on either side: the labels-saved figure is reported as not yet measurable."""


def labels_saved(store: Store, project: str = DEFAULT_PROJECT, share: float = 0.2, alpha: float = 0.05
                 ) -> dict[str, Any]:
    """How much faster the queue finds the served model's mistakes than random labelling does.

    Compares the share of labelled rows the serving model got wrong among queue picks and among the
    random evaluation slice (each with a Wilson interval). Random labelling needs ``queue / random``
    times as many labels to find as many errors to learn from, so the queue saves
    ``1 - random / queue`` of the labels. Below ``MIN_SLICE_ROWS`` on either side: not measurable yet.
    """
    from scipy.stats import binomtest

    fb = store.feedback.latest_human(project)
    random_rows = in_slice(fb["prediction_id"], share)
    wrong = (fb["label"] != fb["predicted_label"]).to_numpy()
    sides = {}
    for name, mask in (("queue", ~random_rows), ("random", random_rows)):
        n, k = int(mask.sum()), int(wrong[mask].sum())
        ci = binomtest(k, n).proportion_ci(1 - alpha, method="wilson") if n else None
        sides[name] = {"n": n, "errors": k, "error_rate": k / n if n else None,
                       "interval": [float(ci.low), float(ci.high)] if ci else None}
    q, r = sides["queue"], sides["random"]
    out: dict[str, Any] = {**sides, "measurable": min(q["n"], r["n"]) >= MIN_SLICE_ROWS and bool(q["errors"]),
                           "saved": None}
    if out["measurable"]:
        out["saved"] = 1 - r["error_rate"] / q["error_rate"]
        out["message"] = (f"the served model was wrong on {q['error_rate']:.0%} of {q['n']} queue picks vs "
                          f"{r['error_rate']:.0%} of {r['n']} random rows: random labelling would need "
                          f"{q['error_rate'] / max(r['error_rate'], 1e-9):.1f}x the labels to find as many mistakes "
                          f"(the queue saves {out['saved']:.0%})")
    else:
        out["message"] = (f"not yet measurable: {q['n']} labelled queue picks and {r['n']} labelled random rows "
                          f"(needs {MIN_SLICE_ROWS} of each)")
    return out
