"""A long soak with the CI soak's harness (tests/test_soak.py): memory and latency over many minutes.

A tiny champion is trained here (seconds), then a real ``tuneloop serve`` gets predict + ingest +
feedback + dashboard reads for ``--seconds`` while drift checks run every few seconds and retrains
run one after another. The baseline is the run's own first window after warm-up: the script prints
the end-of-run p99 latency and RSS as ratios to it (goal: RSS ratio < 1.10, no errors).

    .venv/bin/python bench/soak.py [--seconds 300]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_soak import run_soak  # noqa: E402 - the harness lives with the test


def tiny_champion(root: Path) -> Path:
    from tuneloop.monitor.config import ModelSettings
    from tuneloop.retrain import tiny
    from tuneloop.retrain.trainer import train
    from tuneloop.retrain.versions import write_version

    base = tiny.make_tiny_base(root / "base", tiny.POSITIVE_WORDS + tiny.NEGATIVE_WORDS + tiny.NEUTRAL_WORDS)
    settings = ModelSettings(base=str(base), epochs=6, learning_rate=3e-3, batch_size=16, max_length=32)
    r = train(tiny.keyword_sentiment(240), ["negative", "neutral", "positive"], settings, progress=False)
    return write_version(root / "models", "v1", r.classifier, r.metrics, r.manifest)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--warmup", type=float, default=15)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuneloop-soak-") as tmp:
        version = tiny_champion(Path(tmp) / "champion")
        report = run_soak(Path(tmp) / "soak", version, args.seconds, warmup=args.warmup, retrain_every=20)
    print(f"requests after warm-up: {report.requests} in {report.seconds:.0f} s; errors {len(report.errors)}; "
          f"drift checks {report.drift_checks}; retrains {report.retrains}")
    for e in report.errors[:10]:
        print("  error:", e)
    print(f"server RSS:             {report.rss_start_mb:.0f} MB -> {report.rss_end_mb:.0f} MB "
          f"(ratio {report.rss_end_mb / report.rss_start_mb:.3f})")
    for endpoint, start in report.p99_start_ms.items():
        end = report.p99_end_ms[endpoint]
        ratio = end / start if start and not math.isnan(start) else float("nan")
        print(f"p99 {endpoint.strip():<22} {start:7.0f} ms -> {end:7.0f} ms (ratio {ratio:.2f})")
    ok = not report.errors and report.rss_growth < 0.10
    print("RESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
