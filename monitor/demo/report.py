"""What the demo measured: the replay's answers, the timeline of the loop, and the loop-quality report."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class Sent:
    """What the replay sent and what the server answered, for the report."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, batch: pd.DataFrame, answer: dict[str, Any], phase: str, t: float) -> None:
        with self.lock:
            for (_, row), pred in zip(batch.iterrows(), answer["predictions"], strict=True):
                self.rows.append({"id": pred["id"], "true": row["label"], "pred": pred["label"],
                                  "topic": row["topic"], "phase": phase, "version": answer["model_version"],
                                  "t": t})

    def truth(self) -> dict[str, str]:
        with self.lock:
            return {r["id"]: r["true"] for r in self.rows}


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    shift_at: float | None = None
    alert_at: float | None = None
    alerts_before_shift: int = 0  # alerts opened on unshifted traffic (false alarms)
    retrain_at: float | None = None
    promoted_at: float | None = None
    promoted_version: str | None = None
    labels_spent: int = 0
    labels_at_promotion: int | None = None
    labels_in_promoted_run: int | None = None  # new labels the promoted version's run used (train + holdout)
    labels_at_run: dict[int, int] = field(default_factory=dict)  # labels given when each run was first seen
    events: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what happened)

    def since(self, t: float | None) -> float | None:
        return None if t is None or self.shift_at is None else round(t - self.shift_at, 1)

    def mark(self, what: str, t: float | None = None) -> None:
        self.events.append((time.monotonic() if t is None else t, what))

    def lines(self) -> list[str]:
        """The story of the run, in seconds from the shift (negative: before it)."""
        zero = self.shift_at if self.shift_at is not None else self.started
        return [f"{t - zero:+8.1f} s  {what}" for t, what in sorted(self.events, key=lambda e: e[0])]


def accuracy(rows: list[dict[str, Any]]) -> float | None:
    return None if not rows else float(np.mean([r["true"] == r["pred"] for r in rows]))


def loop_report(sent: Sent, timeline: Timeline, evaluation: dict[str, Any]) -> dict[str, Any]:
    rows = sent.rows
    before = [r for r in rows if r["phase"] == "before"]
    shifted = [r for r in rows if r["phase"] == "after"]
    v1_shifted = [r for r in shifted if timeline.promoted_version is None or r["version"] != timeline.promoted_version]
    promoted = [r for r in shifted if timeline.promoted_version and r["version"] == timeline.promoted_version]
    report = {
        "predictions_sent": len(rows),
        "served_accuracy": {
            "before_shift": accuracy(before),
            "after_shift": accuracy(v1_shifted),
            "after_promotion": accuracy(promoted),
        },
        "labels_spent": timeline.labels_spent,
        "labels_at_promotion": timeline.labels_at_promotion,
        "labels_in_promoted_run": timeline.labels_in_promoted_run,
        "alerts_before_shift": timeline.alerts_before_shift,
        "seconds_from_shift": {
            "to_alert": timeline.since(timeline.alert_at),
            "to_retrain": timeline.since(timeline.retrain_at),
            "to_promotion": timeline.since(timeline.promoted_at),
        },
        "promoted_version": timeline.promoted_version,
        "test_split": evaluation,
        "timeline": timeline.lines(),
    }
    report["ratio_to_oracle"] = ratio_to_oracle(evaluation)
    return report


def ratio_to_oracle(evaluation: dict[str, Any]) -> float | None:
    oracle = evaluation.get("oracle", {}).get("accuracy")
    challenger = evaluation.get("promoted", {}).get("accuracy")
    return None if not (oracle and challenger) else round(challenger / oracle, 4)


def plot_report(sent: Sent, timeline: Timeline, path: Path, window: int = 100) -> Path:
    """Accuracy of served predictions over time (rolling), with shift/alert/promotion markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(sent.rows)
    fig, ax = plt.subplots(figsize=(10, 4))
    if not df.empty:
        df["correct"] = (df["true"] == df["pred"]).astype(float)
        df["t_rel"] = df["t"] - timeline.started
        ax.plot(df["t_rel"], df["correct"].rolling(window, min_periods=10).mean(), label=f"accuracy (rolling {window})")
    for t, name, color in [(timeline.shift_at, "shift", "grey"), (timeline.alert_at, "alert", "orange"),
                           (timeline.promoted_at, "promotion", "green")]:
        if t is not None:
            ax.axvline(t - timeline.started, color=color, linestyle="--", label=name)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("served accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("tuneloop demo: accuracy on live traffic")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tuneloop loop-quality report")
    table.add_column("measure")
    table.add_column("value", justify="right")

    def fmt(v: Any) -> str:
        return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    for k, v in report["served_accuracy"].items():
        table.add_row(f"served accuracy {k.replace('_', ' ')}", fmt(v))
    for name, ev in report["test_split"].items():
        table.add_row(f"test accuracy on shifted topics: {name}", fmt(ev.get("accuracy")))
    table.add_row("ratio promoted / oracle", fmt(report["ratio_to_oracle"]))
    table.add_row("labels spent", fmt(report["labels_spent"]))
    for k, v in report["seconds_from_shift"].items():
        table.add_row(f"seconds from shift {k.replace('_', ' ')}", fmt(v))
    sent_logged = f"{report['predictions_sent']} / {fmt(report.get('predictions_logged'))}"
    table.add_row("predictions sent / logged", sent_logged)
    Console().print(table)


def write_outputs(out_dir: Path, report: dict[str, Any], sent: Sent, timeline: Timeline) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "loop-report.json"
    json_path.write_text(json.dumps({**report, "timeline_detail": asdict(timeline)}, indent=2, default=str))
    png = plot_report(sent, timeline, out_dir / "loop-report.png")
    return {"json": json_path, "png": png}
