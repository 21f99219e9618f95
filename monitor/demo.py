"""`tuneloop demo`: the whole loop on a real drifting tweet stream, through the public API.

1. Fine-tune v1 on labelled tweets of the starting topic (cached) and make it champion.
2. Start the server (collector, serving, drift checks, retrain policy) and, unless headless, the
   dashboard; print the URLs and tokens.
3. Replay a production stream through ``POST /v1/predict``: the starting topic, then a shift.
4. A simulated annotator takes items from ``GET /v1/label-queue`` and answers with the true
   labels at a set rate and budget, as an operator would in the dashboard.
5. Drift checks raise an alert; the retrain policy fires at growing label counts until the gate
   promotes a challenger (a rejected run is retried once new labels arrive).
6. A loop-quality report and a timeline (shift -> alert -> labels -> retrain -> gate verdict ->
   promotion -> recovery): accuracy before the shift, after it, after the promotion, labels
   spent, seconds to alert and to promotion, and the ratio to an oracle (the same trainer from
   v1 given every training label of the shifted topics; trained once and cached, like v1).
7. Unless headless, the server and the dashboard stay up until Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from tuneloop.monitor.config import Settings
from tuneloop.monitor.demo_data import LABELS, demo_stream, split_topics

log = logging.getLogger(__name__)


@dataclass
class DemoPlan:
    """The scenario's knobs (CLI options map onto these; ``fast()`` shrinks it for tests)."""

    start_topic: str = "airline"
    shift_topics: list[str] | None = None  # None: every other topic
    n_train: int = 800  # labelled tweets of the starting topic for v1
    v1_epochs: int = 3
    n_before: int = 600  # stream rows before the shift
    n_after: int = 2400  # stream rows after it (the stream ends early once the loop has closed)
    after_promotion: int = 600  # rows still streamed after a promotion, to measure recovery
    rate: float = 40.0  # texts per second sent to /v1/predict
    request_batch: int = 8
    label_rate: float = 6.0  # labels per second by the simulated annotator
    label_budget: int = 300
    label_strategy: str = "uncertainty"
    first_retrain_share: float = 2 / 3  # the first retrain waits for this share of the label budget
    retry_share: float = 1 / 6  # after a rejection, the next run waits for this share more
    oracle: bool = True
    oracle_max: int = 0  # 0 = every training label of the shifted topics
    n_test: int = 1500  # held-out rows of the shifted topics the versions and the oracle are scored on
    seed: int = 0  # splits (and so v1 and the oracle) and the stream
    stream_seed: int | None = None  # another stream and annotator order over the same splits
    max_minutes: float = 30.0  # a safety net: the stream ends as soon as the loop has closed
    dashboard: bool = True

    @classmethod
    def fast(cls) -> DemoPlan:
        return cls(n_train=240, v1_epochs=2, n_before=200, n_after=1200, after_promotion=200, rate=80.0,
                   request_batch=16, label_rate=20.0, label_budget=240, oracle_max=800, n_test=500,
                   max_minutes=25.0)


def demo_settings(settings: Settings, plan: DemoPlan) -> Settings:
    """Shorter intervals than production defaults, so the loop closes within minutes."""
    s = settings.model_copy(deep=True)
    s.drift.interval_seconds = 10
    s.drift.window_size = 200
    s.drift.open_after = 2
    s.drift.close_after = 3
    s.drift.min_labels = 40
    s.retrain.check_interval_seconds = 5
    s.retrain.on_drift_min_labels = max(40, round(plan.label_budget * plan.first_retrain_share))
    s.retrain.min_new_labels = 10 * plan.label_budget
    s.retrain.retry_new_labels = max(10, round(plan.label_budget * plan.retry_share))
    s.retrain.idle_label_seconds = 15  # the budget ran out: the labels the last run did not see are used
    s.retrain.cooldown_seconds = 0  # retries wait for new labels instead
    # The gate's holdout is the random slice of labelling. The demo's shift is large (v1 is about 0.35 on
    # the new topics, a retrain about 0.6), so a 20-point target needs only ~37 slice rows, and 40 % of a
    # small budget on random traffic reaches them by the first retrain.
    s.retrain.holdout_fraction = 0.4
    s.retrain.target_gain = 0.2
    s.retrain.min_holdout = 30
    s.retrain.auto_promote = True
    s.label_queue.strategy = plan.label_strategy  # type: ignore[assignment]
    return s


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


class Annotator(threading.Thread):
    """Consumes the label queue through the API with the true labels, at a rate and budget."""

    def __init__(self, api: httpx.Client, sent: Sent, plan: DemoPlan, timeline: Timeline) -> None:
        super().__init__(name="demo-annotator", daemon=True)
        self.api, self.sent, self.plan, self.timeline = api, sent, plan, timeline
        self.stop_event = threading.Event()
        self.active = threading.Event()  # labels only once the operator has something to react to

    def run(self) -> None:
        interval = 1.0 / self.plan.label_rate
        while not self.stop_event.is_set() and self.timeline.labels_spent < self.plan.label_budget:
            if not self.active.wait(0.5):
                continue
            truth = self.sent.truth()
            try:
                page = self.api.get("/v1/label-queue",
                                    params={"strategy": self.plan.label_strategy, "limit": 10}).json()
            except httpx.HTTPError:
                time.sleep(1)
                continue
            items = [i for i in page.get("items", []) if i["prediction_id"] in truth]
            if not items:
                time.sleep(1)
                continue
            for item in items:
                if self.stop_event.is_set() or self.timeline.labels_spent >= self.plan.label_budget:
                    break
                r = self.api.post("/v1/feedback", json={"records": [{
                    "prediction_id": item["prediction_id"], "label": truth[item["prediction_id"]],
                    "source": "human", "annotator": "demo-annotator"}]})
                if r.status_code < 300:
                    self.timeline.labels_spent += 1
                    if self.timeline.labels_spent == 1:
                        self.timeline.mark(f"LABELS: the annotator starts on the {self.plan.label_strategy} queue")
                    elif self.timeline.labels_spent == self.plan.label_budget:
                        self.timeline.mark(f"LABELS: budget of {self.plan.label_budget} spent")
                time.sleep(interval)


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


def start_dashboard(settings: Settings, token: str) -> subprocess.Popen[bytes] | None:
    from tuneloop.monitor.cli import dashboard_command

    try:
        cmd, env = dashboard_command(settings, token)
    except Exception:
        log.warning("dashboard unavailable; continuing headless", exc_info=True)
        return None
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_outputs(out_dir: Path, report: dict[str, Any], sent: Sent, timeline: Timeline) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "loop-report.json"
    json_path.write_text(json.dumps({**report, "timeline_detail": asdict(timeline)}, indent=2, default=str))
    png = plot_report(sent, timeline, out_dir / "loop-report.png")
    return {"json": json_path, "png": png}


# -- the scenario ----------------------------------------------------------------------------------


def prepare_data_dir(settings: Settings) -> None:
    """Start each run from a clean loop; keep the trained-v1 cache between runs."""
    import shutil

    root = settings.data_dir
    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        if child.name == "cache":
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def v1_training_data(plan: DemoPlan) -> pd.DataFrame:
    train = split_topics(seed=plan.seed)[plan.start_topic]["train"]
    return train.sample(n=min(plan.n_train, len(train)), random_state=plan.seed)[["text", "label"]]


def v1_cache(settings: Settings, plan: DemoPlan) -> Path:
    """Where v1 for this (data, settings) is cached."""
    import hashlib

    data = v1_training_data(plan)
    key = hashlib.sha256(json.dumps({
        "texts": data["text"].tolist(), "labels": data["label"].tolist(), "epochs": plan.v1_epochs,
        "model": settings.model.model_dump(mode="json"),
    }).encode()).hexdigest()[:12]
    return settings.data_dir / "cache" / f"v1-{key}"


def cached_v1(settings: Settings, plan: DemoPlan, say: Any) -> Path:
    """Train v1 once per (data, settings) and keep it under ``<data_dir>/cache``."""
    import shutil

    from tuneloop.monitor.registry import train_version

    data = v1_training_data(plan)
    cache = v1_cache(settings, plan)
    if (cache / "v1" / "COMPLETE").is_file():
        say(f"v1: using the cached model ({cache})")
    else:
        shutil.rmtree(cache, ignore_errors=True)
        cache_settings = settings.model_copy(deep=True)
        cache_settings.paths.data_dir = cache
        cache_settings.model.epochs = plan.v1_epochs
        t0 = time.monotonic()
        say(f"v1: fine-tuning on {len(data)} labelled '{plan.start_topic}' tweets (cached for next time)…")
        (cache / "models").mkdir(parents=True, exist_ok=True)
        trained = train_version(cache_settings, data, list(LABELS), version="v1", progress=True, log=say)
        shutil.move(str(trained.path), str(cache / "v1"))
        say(f"v1: trained in {time.monotonic() - t0:.0f}s, validation accuracy "
            f"{trained.metrics.get('val_accuracy', float('nan')):.3f}")
    target = settings.models_dir / "v1"
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copytree(cache / "v1", target)
    return target


def start_server(settings: Settings, store: Any) -> tuple[Any, threading.Thread]:
    import uvicorn

    from tuneloop.monitor.app import create_app

    config = uvicorn.Config(create_app(settings, store=store), host=settings.server.host, port=settings.server.port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tuneloop-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 300  # loading the champion can take minutes on a busy machine
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the tuneloop server did not start")
        time.sleep(0.05)
    return server, thread


class Watcher(threading.Thread):
    """Polls alerts, retrain runs and the champion; fills the timeline; prints progress."""

    def __init__(self, api: httpx.Client, timeline: Timeline, sent: Sent, annotator: Annotator, say: Any) -> None:
        super().__init__(name="demo-watcher", daemon=True)
        self.api, self.timeline, self.sent, self.annotator, self.say = api, timeline, sent, annotator, say
        self.stop_event = threading.Event()
        self.phase = "before shift"
        self.runs_seen: dict[Any, str] = {}
        self.alerts_seen: set[Any] = set()

    def poll(self) -> None:
        tl = self.timeline
        alerts = self.api.get("/v1/alerts", params={"status": "open"}).json().get("items", [])
        for alert in alerts:
            if alert["id"] in self.alerts_seen:
                continue
            self.alerts_seen.add(alert["id"])
            if tl.shift_at is None:
                tl.alerts_before_shift += 1
                self.note(f"alert on unshifted traffic: {alert['message']}")
            elif tl.alert_at is None:
                tl.alert_at = time.monotonic()
                self.note(f"ALERT: {alert['message']}")
                self.annotator.active.set()
        runs = self.api.get("/v1/retrain/runs").json()
        for run in sorted(runs.get("items", runs if isinstance(runs, list) else []), key=lambda r: r.get("id", 0)):
            rid, status = run.get("id"), run.get("status")
            if self.runs_seen.get(rid) == status:
                continue
            self.runs_seen[rid] = status
            if rid not in tl.labels_at_run:
                tl.labels_at_run[rid] = tl.labels_spent
                tl.retrain_at = tl.retrain_at or time.monotonic()
                self.note(f"RETRAIN: run {rid} starts with {tl.labels_spent} labels given — {run.get('trigger', '')}")
            if status in ("promoted", "passed", "rejected", "failed", "cancelled"):
                reasons = "; ".join(run.get("reasons") or [])
                verdict = {"promoted": "passed, promoted", "passed": "passed, waits for an admin"}.get(status, status)
                if status == "promoted":
                    tl.labels_in_promoted_run = (run.get("metrics") or {}).get("n_new")
                self.note(f"GATE: run {rid} {verdict}" + (f" — {reasons}" if reasons else ""))
        models = self.api.get("/v1/models").json()
        items = models.get("items", models.get("versions", [])) if isinstance(models, dict) else models
        champion = next((m["version"] for m in items if m.get("status") == "champion"), None)
        if champion and champion != "v1" and tl.promoted_version is None:
            tl.promoted_at = time.monotonic()
            tl.promoted_version = champion
            tl.labels_at_promotion = tl.labels_spent
            self.note(f"PROMOTED: {champion} is the new champion (hot-swapped)")

    def note(self, what: str) -> None:
        self.timeline.mark(what)
        self.say(what)

    def run(self) -> None:
        last_line = 0.0
        while not self.stop_event.wait(1.0):
            try:
                self.poll()
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            if time.monotonic() - last_line > 10:
                last_line = time.monotonic()
                self.say(f"[{self.phase}] sent {len(self.sent.rows)} · labels {self.timeline.labels_spent} · "
                         f"alert {'yes' if self.timeline.alert_at else 'no'} · "
                         f"champion {self.timeline.promoted_version or 'v1'}")


def _send(api: httpx.Client, batch: pd.DataFrame, phase: str, sent: Sent) -> dict[str, Any]:
    t0 = time.monotonic()
    for attempt in range(5):
        r = api.post("/v1/predict", json={"texts": batch["text"].tolist()})
        if r.status_code == 200:
            break
        time.sleep(0.5 * (attempt + 1))
    r.raise_for_status()
    answer = r.json()
    sent.add(batch, answer, phase, t0)
    return answer


def _loop_can_still_close(api: httpx.Client, plan: DemoPlan, timeline: Timeline) -> bool:
    """False once no promotion can come: no run is active, the labelling budget is spent and the
    last run saw every label (the policy retries only on labels a run has not seen)."""
    runs = api.get("/v1/retrain/runs").json()
    if runs.get("active_run"):
        return True
    if timeline.labels_spent < plan.label_budget:
        return True
    return max(timeline.labels_at_run.values(), default=0) < timeline.labels_spent


def replay(api: httpx.Client, stream: pd.DataFrame, plan: DemoPlan, sent: Sent, timeline: Timeline,
           watcher: Watcher, deadline: float) -> None:
    """Send the stream through /v1/predict at ``plan.rate``.

    The last ``plan.after_promotion`` shifted rows are held back and sent once a new champion
    serves, so recovery is measured on traffic nobody labelled or trained on. When the rest of
    the stream runs out first, the replay waits for the retrain that is under way.
    """
    interval = plan.request_batch / plan.rate
    reserve = stream.tail(plan.after_promotion)
    live = stream.iloc[: len(stream) - len(reserve)]
    for start in range(0, len(live), plan.request_batch):
        t0 = time.monotonic()
        batch = live.iloc[start: start + plan.request_batch]
        phase = batch["phase"].iloc[0]
        if phase == "after" and timeline.shift_at is None:
            timeline.shift_at = t0
            watcher.phase = "after shift"
            watcher.note(f"SHIFT: traffic moves from '{plan.start_topic}' to other topics")
        _send(api, batch, phase, sent)
        if timeline.promoted_version or time.monotonic() > deadline:
            break
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    if not timeline.promoted_version:
        watcher.say("waiting for the retrain under way…")
        while not timeline.promoted_version and time.monotonic() < deadline:
            time.sleep(2)
            if not _loop_can_still_close(api, plan, timeline):
                watcher.poll()  # the run may have just ended with a promotion
                if timeline.promoted_version:
                    break
                watcher.note("no promotion: the last retrain did not pass the gate and every label is used")
                return
    if not timeline.promoted_version:
        watcher.say("time limit reached before a promotion")
        return
    watcher.phase = "after promotion"
    for start in range(0, len(reserve), plan.request_batch):
        t0 = time.monotonic()
        _send(api, reserve.iloc[start: start + plan.request_batch], "after", sent)
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    recovered = accuracy([r for r in sent.rows if r["phase"] == "after" and r["version"] == timeline.promoted_version])
    before = accuracy([r for r in sent.rows if r["phase"] == "after" and r["version"] != timeline.promoted_version])
    if recovered is not None and before is not None:
        watcher.note(f"RECOVERY: served accuracy on held-back shifted traffic {before:.3f} -> {recovered:.3f}")


def shifted_test(plan: DemoPlan) -> pd.DataFrame:
    """Held-out test rows of the shifted topics (never streamed, labelled or trained on)."""
    splits = split_topics(seed=plan.seed)
    test = pd.concat([splits[t]["test"] for t in shifted_topics(plan)]).sample(frac=1.0, random_state=plan.seed)
    return test.head(plan.n_test)[["text", "label"]]


def shifted_topics(plan: DemoPlan) -> list[str]:
    topics = split_topics(seed=plan.seed)
    return [t for t in topics if t != plan.start_topic and (not plan.shift_topics or t in plan.shift_topics)]


def evaluate_on_shift(settings: Settings, plan: DemoPlan, versions: dict[str, Path]) -> dict[str, Any]:
    """Accuracy on the shifted topics' test split for each version (v1, the promoted one)."""
    import hashlib

    from tuneloop.retrain.evaluate import evaluate
    from tuneloop.retrain.versions import load_version

    test = shifted_test(plan)
    test_key = hashlib.sha256("\n".join(test["text"]).encode()).hexdigest()[:12]
    out: dict[str, Any] = {}
    for name, path in versions.items():
        cached = v1_cache(settings, plan) / f"shifted-test-{test_key}.json" if name == "v1" else None
        if cached is not None and cached.is_file():  # v1 is cached, so is its score on the fixed test rows
            out[name] = json.loads(cached.read_text())
            continue
        m = evaluate(load_version(path, threads=settings.model.threads), test)
        out[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": len(test)}
        if cached is not None:
            cached.write_text(json.dumps(out[name]))
    return out


ORACLE_EXAMPLES = 12_000
"""The oracle's epochs are sized to its data: about this many training examples seen in all (at
least one epoch, at most ``retrain.epochs``), as a retrain on a few hundred labels sees a few
thousand. Early stopping is the trainer's, as for every retrain."""


def oracle_data(settings: Settings, plan: DemoPlan) -> tuple[pd.DataFrame, int]:
    """Every training label of the shifted topics plus the replay a retrain would add: a stratified
    sample of v1's training rows, ``replay_ratio`` per new row, at most ``replay_max``.
    Returns (rows, how many of them are shifted-topic labels)."""
    from tuneloop.retrain.dataset import stratified_sample

    splits = split_topics(seed=plan.seed)
    shifted = pd.concat([splits[t]["train"] for t in shifted_topics(plan)])[["text", "label"]]
    if plan.oracle_max:
        shifted = shifted.sample(n=min(plan.oracle_max, len(shifted)), random_state=plan.seed)
    r = settings.retrain
    older = v1_training_data(plan)
    replay = stratified_sample(older, min(round(r.replay_ratio * len(shifted)), r.replay_max, len(older)), plan.seed)
    return pd.concat([shifted, replay[["text", "label"]]], ignore_index=True), len(shifted)


def oracle_cache(settings: Settings, plan: DemoPlan) -> tuple[Path, pd.DataFrame, int, int]:
    """(cache directory, training rows, shifted-topic labels among them, epochs) of the oracle."""
    import hashlib

    data, n_labels = oracle_data(settings, plan)
    epochs = max(1, min(settings.retrain.epochs, round(ORACLE_EXAMPLES / max(1, len(data)))))
    key = hashlib.sha256(json.dumps({
        "texts": data["text"].tolist(), "labels": data["label"].tolist(), "epochs": epochs,
        "v1": v1_cache(settings, plan).name, "test": shifted_test(plan)["text"].tolist(),
        "model": settings.model.model_dump(mode="json"),
    }).encode()).hexdigest()[:12]
    return settings.data_dir / "cache" / f"oracle-{key}", data, n_labels, epochs


def cached_oracle(settings: Settings, plan: DemoPlan) -> dict[str, Any] | None:
    """The oracle's test figures when an earlier run trained it, else None."""
    path = oracle_cache(settings, plan)[0] / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train_oracle(settings: Settings, plan: DemoPlan, v1_path: Path, say: Any,
                 stop_event: threading.Event | None = None) -> dict[str, Any] | None:
    """Train the oracle from v1 (the same trainer and early stopping), evaluate and cache it once."""
    from tuneloop.retrain.evaluate import evaluate
    from tuneloop.retrain.trainer import train

    cache, data, n_labels, epochs = oracle_cache(settings, plan)
    say(f"oracle: training once from v1 on {len(data)} rows (every shifted-topic training label plus "
        f"replay), {epochs} epoch(s); cached for later runs…")
    t0 = time.monotonic()
    result = train(data, None, settings.model, init_from=v1_path, epochs=epochs, progress=False,
                   stop_event=stop_event)
    if result.metrics.get("stopped") == "stop_event":
        return None
    test = shifted_test(plan)
    m = evaluate(result.classifier, test)
    figures = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": len(test),
               "train_labels": n_labels, "train_rows": len(data),
               "epochs": epochs, "train_seconds": round(time.monotonic() - t0, 1)}
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "result.json").write_text(json.dumps(figures, indent=2))
    say(f"oracle: trained in {figures['train_seconds']:.0f} s, test accuracy on the shifted topics "
        f"{figures['accuracy']:.3f}")
    return figures


def run_demo(settings: Settings, plan: DemoPlan, say: Any = print) -> dict[str, Any]:
    """Run the scenario end to end and return the loop-quality report.

    Unless ``plan.dashboard`` is off (headless), the server and the dashboard stay up after the
    report until Ctrl-C; an oracle not cached yet trains meanwhile, off the loop's critical path.
    """
    from tuneloop.monitor.auth import create_token
    from tuneloop.monitor.registry import promote, register_dir
    from tuneloop.monitor.storage import Store

    settings = demo_settings(settings, plan)
    prepare_data_dir(settings)
    v1_path = cached_v1(settings, plan, say)
    store = Store(settings.db_path)
    register_dir(store, "default", settings.models_dir, "v1")
    promote(store, "default", "v1", actor="demo", reason="initial model")
    tokens = {role: create_token(store, role, f"demo-{role}") for role in ("ingest", "label", "admin")}
    server, server_thread = start_server(settings, store)
    base_url = f"http://{settings.server.host}:{settings.server.port}"
    say(f"server:    {base_url}   (API docs {base_url}/docs)")
    dash = None
    if plan.dashboard:
        from tuneloop.dashboard.launch import dashboard_env
        from tuneloop.dashboard.launch import start_dashboard as launch

        dash = launch(settings.dashboard.host, settings.dashboard.port, dashboard_env(base_url, tokens["admin"]),
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        say(f"dashboard: http://{settings.dashboard.host}:{settings.dashboard.port}")
    for role, token in tokens.items():
        say(f"  {role:6s} token: {token}")

    stream_seed = plan.seed if plan.stream_seed is None else plan.stream_seed
    stream = demo_stream(start_topic=plan.start_topic, shift_topics=plan.shift_topics, n_before=plan.n_before,
                         n_after=plan.n_after + plan.after_promotion, seed=stream_seed, split_seed=plan.seed)
    sent, timeline = Sent(), Timeline()
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    api = httpx.Client(base_url=base_url, headers=headers, timeout=60)
    annotator = Annotator(api, sent, plan, timeline)
    watcher = Watcher(api, timeline, sent, annotator, say)
    annotator.start()
    watcher.start()
    interrupted = train_oracle_now = False
    try:
        try:
            replay(api, stream, plan, sent, timeline, watcher, deadline=time.monotonic() + plan.max_minutes * 60)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: writing the report for what ran so far")
        finally:
            annotator.stop_event.set()
            watcher.stop_event.set()
            watcher.join(timeout=5)
        logged = len(store.query("SELECT id FROM predictions WHERE project = 'default'"))
        versions = {"v1": settings.models_dir / "v1"}
        if timeline.promoted_version:
            versions["promoted"] = settings.models_dir / timeline.promoted_version
        evaluation = evaluate_on_shift(settings, plan, versions)
        oracle = cached_oracle(settings, plan) if plan.oracle else None
        if oracle:
            evaluation["oracle"] = oracle
        report = loop_report(sent, timeline, evaluation)
        report["predictions_logged"] = logged
        out_dir = settings.data_dir / "report"
        paths = write_outputs(out_dir, report, sent, timeline)
        print_report(report)
        say("timeline (seconds from the shift):")
        for line in timeline.lines():
            say("  " + line)
        say(f"report: {paths['json']}  plot: {paths['png']}")

        def add_oracle(figures: dict[str, Any] | None) -> None:
            if not figures:
                return
            report["test_split"]["oracle"] = figures
            report["ratio_to_oracle"] = ratio_to_oracle(report["test_split"])
            write_outputs(out_dir, report, sent, timeline)
            say(f"ratio promoted / oracle: {report['ratio_to_oracle']} (report updated: {paths['json']})")

        train_oracle_now = plan.oracle and not oracle and not interrupted
        if plan.dashboard and not interrupted:
            stop_oracle = threading.Event()
            if train_oracle_now:  # the user looks at the dashboard meanwhile
                threading.Thread(target=lambda: add_oracle(train_oracle(settings, plan, v1_path, say, stop_oracle)),
                                 name="demo-oracle", daemon=True).start()
            say(f"the server ({base_url}) and the dashboard (http://{settings.dashboard.host}:"
                f"{settings.dashboard.port}) stay up to look around: press Ctrl-C to stop")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                stop_oracle.set()
                say("stopping")
            return report
    finally:
        server.should_exit = True
        server_thread.join(timeout=30)
        if dash is not None:
            from tuneloop.dashboard.launch import stop

            stop([dash])
        store.close()
    if train_oracle_now:  # headless: after the loop and with the server stopped, so nothing competes
        add_oracle(train_oracle(settings, plan, v1_path, say))
    return report


__all__ = ["DemoPlan", "demo_settings", "loop_report", "run_demo"]
