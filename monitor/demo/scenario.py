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

import subprocess
import threading
import time
from typing import Any

import httpx
import pandas as pd

from tuneloop.monitor.config import Settings
from tuneloop.monitor.demo.data import demo_stream
from tuneloop.monitor.demo.models import cached_oracle, cached_v1, evaluate_on_shift, train_oracle
from tuneloop.monitor.demo.plan import DemoPlan, demo_settings
from tuneloop.monitor.demo.report import (
    Sent,
    Timeline,
    accuracy,
    loop_report,
    print_report,
    ratio_to_oracle,
    write_outputs,
)


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


def prepare_data_dir(settings: Settings) -> None:
    """Start each run from a clean loop; keep the trained-v1 cache between runs."""
    import shutil

    root = settings.data_dir
    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        if child.name == "cache":
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def start_server(settings: Settings, store: Any) -> tuple[Any, threading.Thread]:
    import uvicorn

    from tuneloop.monitor.api.app import create_app

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
    last run saw every label (the policy retries only on labels a run has not seen).

    A run counts as active while its row says queued or running too: a retry is listed before the
    server's runner picks it up, and ending the demo in that gap would drop the retry's verdict."""
    runs = api.get("/v1/retrain/runs").json()
    if runs.get("active_run") or any(r.get("status") in ("queued", "running") for r in runs.get("items", [])):
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
        logged = store.count_predictions("default")
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
