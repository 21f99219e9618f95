"""The retrain loop on the server side: policy -> snapshot -> child job -> register -> gate -> promote.

:class:`RetrainService` (``Runtime.retrain``) runs at most one retrain at a time, across
replicas: any replica queues a run, the leader launches it (:mod:`tuneloop.monitor.run_queue`).
A run is a ``retrain_runs`` row that moves ``queued -> running`` and ends in one of

* ``promoted``  — the gate passed and the challenger now serves (``retrain.auto_promote``);
* ``passed``    — the gate passed; the challenger waits for an admin's promote;
* ``rejected``  — the gate failed; the version is registered as rejected with the gate's reasons;
* ``failed``    — the job failed, timed out or the server restarted mid-run (nothing else changed);
* ``cancelled`` — an admin cancelled it;
* ``deferred``  — refused before it started: the holdout (fresh labels of the evaluation slice) is too
  small to detect ``retrain.target_gain``; the reasons say how many more labels it needs. The
  project's latest deferred row is updated in place rather than repeated on every policy check.

Training happens in a child process (``python -m tuneloop.retrain.job``) that reads a Parquet
snapshot exported here and writes a version directory; it never opens the database, so a crash
or kill of the job cannot damage it, and serving keeps answering from the champion throughout.

Policies (checked every ``retrain.check_interval_seconds``): a drift alert is open and at least
``on_drift_min_labels`` new labels exist; or at least ``min_new_labels`` new labels exist; or the
``retrain.cron`` schedule fires. "New" means feedback given after the champion's training data
was exported. After a run that did not promote, the policy retrains at growing label counts:
the next run waits for ``retry_new_labels`` labels the last one has not seen (or for a pause in
labelling, ``idle_label_seconds``), so every label is used and no run repeats the last one's
evidence. Policy runs respect ``cooldown_seconds`` after the last run; a manual run may skip it.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.monitor import launchers, mlflow_tracking, registry
from tuneloop.monitor.alerts import open_alert_count
from tuneloop.monitor.run_files import last_progress, run_dir, tail_lines
from tuneloop.monitor.run_queue import OWNER_GONE_SECONDS, replica_name
from tuneloop.monitor.storage import DEFAULT_PROJECT, Store, utcnow
from tuneloop.monitor.training_data import HoldoutPlan, count_new_labels, export_frames, feedback_cutoff, holdout_plan
from tuneloop.retrain import gate

if TYPE_CHECKING:
    from tuneloop.monitor.config import Settings
    from tuneloop.monitor.serving import Serving

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FINAL = ("promoted", "passed", "rejected", "failed", "cancelled", "deferred")
MIN_NEW_LABELS = 2
"""Fewer new labels than this: there is nothing to train on, a trigger is refused."""
OLDER_CAP_FACTOR = 10
"""At most this many times ``replay_max`` older rows are read for the replay sample."""
KILL_GRACE_SECONDS = 20.0
PREPARED = "prepared"
"""Run subdirectory holding the rows of a dataset run queued on a replica that does not lead."""


def dataset_module() -> Any:
    """The dataset module, imported on first use: it pulls in torch and scikit-learn."""
    from tuneloop.retrain import dataset

    return dataset


class RetrainError(Exception):
    """A trigger that cannot start a run; ``status`` is the HTTP status the API answers with."""

    status = 409


class RetrainBusy(RetrainError):
    def __init__(self, run_id: int, project: str) -> None:
        self.run_id = run_id
        super().__init__(f"retrain run {run_id} (project {project}) is already running; one run at a time")


class NothingToTrain(RetrainError):
    pass


class HoldoutTooSmall(RetrainError):
    """The holdout could not detect the target gain: training now would end in an uninformative gate."""

    def __init__(self, run_id: int, message: str) -> None:
        self.run_id = run_id
        super().__init__(message)


class CoolingDown(RetrainError):
    def __init__(self, seconds_left: float) -> None:
        self.seconds_left = seconds_left
        super().__init__(f"the last retrain finished recently: cooling down for {seconds_left:.0f} more "
                         "seconds (a manual trigger with now=true skips the cooldown)")


class BaseUnusable(RetrainError):
    """``model.base`` is missing or not a supported encoder: a run from the base could only fail."""


class RunNotFound(LookupError):
    pass


@dataclass
class _Active:
    run_id: int
    project: str
    job: launchers.Job | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    why: str = "cancelled"
    thread: threading.Thread | None = None
    snapshot: Any = None  # a prepared Snapshot (training from an uploaded dataset): from the base, no gate


# ---- the service -------------------------------------------------------------------------------


class RetrainService:
    """Triggers, runs, watches and finishes retrains for one server (see the module docstring)."""

    def __init__(self, store: Store, settings: Settings, serving: Serving | None = None) -> None:
        self.store = store
        self.settings = settings
        self.serving = serving
        """Hot-swaps a promoted challenger in; None (no server running) only updates the registry."""
        self._lock = threading.Lock()
        self._active: _Active | None = None
        self._closing = False
        self.owner = replica_name()
        """Recorded on the runs this process runs (with a heartbeat), so another replica can tell it is gone."""
        self.leads: Callable[[], bool] = lambda: True
        """Whether this process launches runs; a replica that does not only queues them for the leader."""

    # -- queries ---------------------------------------------------------------------------------
    def _labels(self, project: str) -> list[str]:
        from tuneloop.monitor.projects import labels_for

        return labels_for(self.store, self.settings, project)

    def active_run(self) -> int | None:
        """The queued or running run: this process's, else one queued or run by another replica."""
        a = self._active
        if a is not None:
            return a.run_id
        ids = self.store.runs.ids_with_status(list(ACTIVE))
        return min(ids) if ids else None

    def list_runs(self, project: str | None = DEFAULT_PROJECT, limit: int = 50) -> list[dict[str, Any]]:
        return self.store.runs.list(project, limit)

    def get_run(self, run_id: int, log_lines: int = 50) -> dict[str, Any]:
        """The run row plus its latest progress event and the last ``log_lines`` lines of its log."""
        run = self.store.runs.get(run_id)
        if run is None:
            raise RunNotFound(f"no retrain run {run_id}")
        root = self.settings.runs_dir.resolve()
        directory = run_dir(root, run_id).resolve()
        inside = directory.is_relative_to(root)
        run["progress"] = last_progress(directory / "progress.jsonl") if inside else None
        run["log_tail"] = tail_lines(directory / "job.log", log_lines) if inside else []
        active = self._active
        run["pid"] = active.job.pid if active and active.run_id == run_id and active.job else None
        return run

    def cooldown_left(self, project: str) -> float:
        last = self.store.runs.last_finished_at(project)
        if last is None:
            return 0.0
        left = self.settings.retrain.cooldown_seconds - (utcnow() - last).total_seconds()
        return max(0.0, left)

    # -- lifecycle -------------------------------------------------------------------------------
    def recover(self, sole: bool = True) -> int:
        """Mark interrupted runs failed; return how many. ``sole`` (one process owns the store): every
        queued or running run was left by a previous process. Otherwise only runs whose replica stopped
        beating more than :data:`OWNER_GONE_SECONDS` ago; unclaimed queued runs wait for the leader."""
        if sole:
            ids = self.store.runs.ids_with_status(list(ACTIVE))
            for run_id in ids:
                self._finish(run_id, "failed", ["server restarted while the run was in progress"])
        else:
            orphans = self.store.runs.orphaned(utcnow() - timedelta(seconds=OWNER_GONE_SECONDS))
            ids = [run_id for run_id, _ in orphans]
            for run_id, owner in orphans:
                self._finish(run_id, "failed", [f"the replica running it ({owner or 'unknown'}) stopped "
                                                f"reporting for more than {OWNER_GONE_SECONDS:.0f} s"])
        if ids:
            log.warning("marked %d interrupted retrain run(s) failed", len(ids))
        return len(ids)

    def stop(self) -> None:
        """Server shutdown: cancel a running job and wait for it briefly."""
        self._closing = True
        active = self._active
        if active is not None:
            self._cancel_active(active, "server shutting down")
            if active.thread is not None:
                active.thread.join(timeout=KILL_GRACE_SECONDS + 5)

    # -- trigger ---------------------------------------------------------------------------------
    def trigger(self, project: str = DEFAULT_PROJECT, reason: str = "manual", actor: str = "",
                *, respect_cooldown: bool = False, snapshot: Any = None) -> int:
        """Start a run and return its id. :class:`RetrainBusy` while one runs (any project),
        :class:`CoolingDown` (only with ``respect_cooldown``), :class:`NothingToTrain` without new labels,
        :class:`HoldoutTooSmall` (recorded as a ``deferred`` run) while the holdout cannot detect the target gain.

        ``snapshot`` (a prepared :class:`tuneloop.retrain.dataset.Snapshot`) trains a new model from the
        base on exactly those rows instead of the project's feedback; the run ends ``passed`` without
        the gate, and an admin promotes it after reading its evaluation.
        """
        labels = self._labels(project)
        if snapshot is not None or registry.champion(self.store, project) is None:
            self._check_base()
        with self._lock:
            if self._closing:
                raise RetrainError("the server is shutting down")
            if self._active is not None:
                raise RetrainBusy(self._active.run_id, self._active.project)
            if respect_cooldown and (left := self.cooldown_left(project)) > 0:
                raise CoolingDown(left)
            n_new = len(snapshot.train) if snapshot is not None else count_new_labels(self.store, project,
                                                                                      labels=labels)
            if n_new < MIN_NEW_LABELS:
                raise NothingToTrain(f"project {project} has {n_new} new label(s) since the champion was trained; "
                                     f"a retrain needs at least {MIN_NEW_LABELS}")
            trigger = f"{reason}" + (f" (by {actor})" if actor else "")
            if snapshot is None:  # a dataset run is evaluated for an admin, not gated against a champion
                plan = holdout_plan(self.store, project, self.settings, labels)
                if not plan.enough:
                    message = plan.message(self.settings.retrain.target_gain, self.settings.retrain.power)
                    raise HoldoutTooSmall(self._defer(project, trigger, message, plan), message)
            leading = self.leads()

            def paths(run_id: int) -> tuple[str, str]:  # before the queued row is visible to the leader
                if snapshot is not None and not leading:  # the leader trains on exactly these rows, read from here
                    dataset_module().write_snapshot(snapshot, run_dir(self.settings.runs_dir, run_id) / PREPARED)
                return self._run_paths(run_id)

            run_id, active_project, queued = self.store.runs.queue_if_idle(project, trigger[:500], paths)
            if not queued:
                raise RetrainBusy(run_id, active_project)
            if leading:
                self._launch(run_id, project, snapshot)
                return run_id
        log.info("retrain run %d queued for project %s (the leader runs it): %s", run_id, project, trigger)
        return run_id

    def _launch(self, run_id: int, project: str, snapshot: Any = None) -> bool:
        """Claim a queued run for this process and start it (the caller holds ``_lock``); False when
        another replica claimed it first."""
        if not self.store.runs.claim(run_id, self.owner):
            return False
        active = _Active(run_id, project, snapshot=snapshot)
        active.thread = threading.Thread(target=self._run, args=(active,), name=f"retrain-{run_id}", daemon=True)
        self._active = active
        log.info("retrain run %d started for project %s", run_id, project)
        active.thread.start()
        return True

    def pick_up(self) -> int | None:
        """The leader's runner: start the oldest queued run no replica has claimed (one at a time)."""
        with self._lock:
            if self._closing or self._active is not None:
                return None
            for run_id, project in self.store.runs.unclaimed():
                prepared = run_dir(self.settings.runs_dir, run_id) / PREPARED
                snapshot = dataset_module().read_snapshot(prepared) if prepared.is_dir() else None
                if self._launch(run_id, project, snapshot):
                    return run_id
        return None

    def _check_base(self) -> None:
        """Refuse a run from the base when the configured base cannot be loaded (one line, before any job)."""
        from tuneloop.retrain.architectures import UnsupportedBase
        from tuneloop.retrain.encoder import check_base

        try:
            check_base(self.settings.model.base)
        except (UnsupportedBase, FileNotFoundError) as e:
            raise BaseUnusable(f"model.base: {e}") from None

    def _defer(self, project: str, trigger: str, message: str, plan: HoldoutPlan) -> int:
        """Record the refusal as a ``deferred`` run: the project's latest run if already deferred, else new."""
        last = self.store.runs.latest(project)
        now = utcnow()
        metrics = {"holdout_plan": plan.as_json()}
        if last is not None and last[1] == "deferred":
            self._set(last[0], finished=now, trigger=trigger[:500], reasons=[message], metrics=metrics)
            return last[0]
        return self.store.runs.add_deferred(project, trigger[:500], [message], metrics, now)

    def cancel(self, run_id: int, actor: str = "") -> dict[str, Any]:
        """Cancel a queued or running run (SIGTERM to the job, kill after a grace period)."""
        run = self.get_run(run_id, log_lines=0)
        active = self._active
        reason = f"cancelled by {actor}" if actor else "cancelled"
        if run["status"] == "queued" and self.store.runs.cancel_unclaimed(run_id, reason):
            return self.get_run(run_id, log_lines=0)
        if run["status"] in ACTIVE and (active is None or active.run_id != run_id):
            raise RetrainError(f"retrain run {run_id} runs on replica {run.get('owner')}; cancel it there")
        if run["status"] not in ACTIVE or active is None or active.run_id != run_id:
            raise RetrainError(f"retrain run {run_id} is {run['status']}; only a queued or running run can be "
                               "cancelled")
        self._cancel_active(active, reason)
        return self.get_run(run_id, log_lines=0)

    def _cancel_active(self, active: _Active, why: str) -> None:
        active.why = why
        active.cancel.set()
        if active.job is not None:
            active.job.cancel()

    def wait(self, run_id: int, timeout: float = 300.0, poll: float = 0.2) -> dict[str, Any]:
        """Block until the run reaches a final status (tests, the offline CLI)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id, log_lines=0)
            if run["status"] in FINAL or time.monotonic() > deadline:
                return run
            time.sleep(poll)

    # -- the run ---------------------------------------------------------------------------------
    def _run_paths(self, run_id: int) -> tuple[str, str]:
        """(log file, snapshot dir) of a run, recorded on its row."""
        directory = run_dir(self.settings.runs_dir, run_id)
        return str(directory / "job.log"), str(directory / "snapshot")

    def _set(self, run_id: int, **values: Any) -> None:
        self.store.runs.update(run_id, **values)

    def _finish(self, run_id: int, status: str, reasons: list[str], **values: Any) -> None:
        self._set(run_id, status=status, finished=utcnow(), reasons=reasons, **values)

    def _run(self, active: _Active) -> None:
        run_id, project = active.run_id, active.project
        try:
            self._execute(active)
        except Exception as e:  # never leave a run 'running' behind
            log.exception("retrain run %d failed", run_id)
            self._finish(run_id, "failed", [f"{type(e).__name__}: {e}"])
        finally:
            with self._lock:
                self._active = None
            log.info("retrain run %d for project %s finished", run_id, project)

    def _execute(self, active: _Active) -> None:
        # Imported here: the dataset module pulls in torch and scikit-learn, which the server does not
        # need until a run starts (start-up, and so recovery after a crash, stays fast).
        from tuneloop.retrain import dataset

        run_id, project = active.run_id, active.project
        s = self.settings
        directory = run_dir(s.runs_dir, run_id)
        directory.mkdir(parents=True, exist_ok=True)
        labels = self._labels(project)

        # 1. snapshot: exported now, so feedback arriving later counts as new for the next run
        exported_at = utcnow()
        cutoff = feedback_cutoff(self.store, project)
        if active.snapshot is not None:
            snap, champion = active.snapshot, None
            snap.meta.update(run_id=run_id, feedback_until=exported_at.isoformat())
        else:
            new, older = export_frames(self.store, project, cutoff, labels,
                                       max(OLDER_CAP_FACTOR * s.retrain.replay_max, 10_000), seed=run_id,
                                       until=exported_at, exclude_suspected=s.retrain.exclude_suspected_labels)
            snap = dataset.assemble_snapshot(
                new, older, s.retrain, seed=run_id,
                meta={"project": project, "run_id": run_id, "feedback_until": exported_at.isoformat(),
                      "previous_cutoff": cutoff.isoformat() if cutoff else None},
                used_holdout=registry.used_holdout_ids(self.store, project))
            champion = registry.champion(self.store, project)
        dataset.write_snapshot(snap, directory / "snapshot")
        unlabelled = self._write_unlabelled_pool(project, directory) if active.snapshot is None else None
        first = active.snapshot is not None  # a new model from a dataset: trained as `tuneloop train` trains
        search = first and (bool(snap.meta.get("search")) or s.search.enabled)
        (directory / "settings.json").write_text(json.dumps({
            "model": s.model.model_dump(mode="json"), "retrain": s.retrain.model_dump(mode="json"),
            "labels": labels, "project": project, "first_training": first,
            "search": s.search.model_dump(mode="json") if search else None,
        }, indent=2), encoding="utf-8")
        version = self._new_version_name()
        self._set(run_id, status="running", n_examples=len(snap.train), version=version,
                  metrics={"n_new": snap.n_new, "n_train": len(snap.train), "n_replay": snap.n_replay,
                           "n_holdout": len(snap.holdout)})
        if active.cancel.is_set():
            self._finish(run_id, "cancelled", [active.why], version=None)
            return

        # 2. the child job, here or on a cluster (retrain.launcher); absolute paths: a Ray job starts elsewhere
        here = directory.resolve()
        cmd = [sys.executable, "-m", "tuneloop.retrain.job", "--snapshot", str(here / "snapshot"),
               "--champion", str(Path(champion["path"]).resolve()) if champion else "",
               "--models-dir", str(s.models_dir.resolve()), "--version", version,
               "--settings", str(here / "settings.json"), "--progress", str(here / "progress.jsonl")]
        if unlabelled is not None:
            cmd += ["--unlabelled", str(unlabelled.resolve())]
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        try:
            active.job = launchers.launcher_for(s.retrain, KILL_GRACE_SECONDS).start(cmd, env, directory / "job.log")
        except launchers.LaunchError as e:
            self._finish(run_id, "failed", [str(e)], version=None)
            return
        if active.cancel.is_set():  # cancelled between the check above and the start
            active.job.cancel()
        end = active.job.wait(s.retrain.timeout_seconds, KILL_GRACE_SECONDS)
        if end.timed_out or end.code != 0:
            self._cleanup_partial(version, active.job.pid)
            if end.timed_out:
                self._finish(run_id, "failed", [f"timeout: the job ran longer than {s.retrain.timeout_seconds} s "
                                                "and was stopped"], version=None)
            elif active.cancel.is_set():
                self._finish(run_id, "cancelled", [active.why], version=None)
            else:
                self._finish(run_id, "failed", [end.reason or self._failure_reason(directory, end.code)],
                             version=None)
            return

        # 3. register, gate, promote
        row = registry.register_dir(self.store, project, s.models_dir, version, status="challenger",
                                    data_snapshot=str(directory / "snapshot"))
        metrics = row.get("metrics") or {}
        reference = metrics.get("champion") or metrics.get("baseline")
        decision = gate.decide(metrics, reference, s.retrain)
        summary = {
            "n_new": snap.n_new, "n_train": len(snap.train), "n_replay": snap.n_replay,
            "n_holdout": len(snap.holdout), "n_golden": 0 if snap.golden is None else len(snap.golden),
            "challenger": _headline(metrics), "champion": _headline(reference) if reference else None,
            "champion_version": champion["version"] if champion else None,
            "val_accuracy": metrics.get("val_accuracy"), "train_seconds": metrics.get("train_seconds"),
            "gate": decision.as_json(),
        }
        tracked = mlflow_tracking.record_version(s.mlflow, project, row, decision.as_json())
        if tracked is not None:
            summary["mlflow"] = tracked
        if active.snapshot is not None:
            self._finish(run_id, "passed", ["trained from a dataset: read its evaluation, then promote"],
                         metrics=summary)
        elif not decision.promote:
            registry.reject(self.store, project, version, decision.reasons)
            self._finish(run_id, "rejected", decision.reasons, metrics=summary)
        elif s.retrain.auto_promote:
            from tuneloop.monitor.serving import activate

            promoted = activate(self.store, self.serving, project, version, actor=f"retrain run {run_id}",
                                reason=decision.summary, track=False)
            if tracked is not None and "error" not in tracked:
                tracked["champion"] = mlflow_tracking.champion_changed(s.mlflow, project, promoted)
            self._finish(run_id, "promoted", decision.reasons, metrics=summary)
        else:
            self._finish(run_id, "passed", decision.reasons, metrics=summary)

    def _write_unlabelled_pool(self, project: str, directory: Path) -> Path | None:
        """With ``retrain.self_training``: the newest unlabelled predictions outside the evaluation slice
        (a slice row may be labelled later and test a gate decision, so no run trains on it)."""
        from tuneloop.monitor.label_queue import candidate_pool
        from tuneloop.retrain.evaluation_slice import in_slice
        from tuneloop.retrain.selftrain import UNLABELLED_FILE

        r = self.settings.retrain
        if not r.self_training:
            return None
        pool = candidate_pool(self.store, project, r.pseudo_pool, with_embedding=False)
        pool = pool[~in_slice(pool["id"].astype(str), r.holdout_fraction)] if len(pool) else pool
        path = directory / UNLABELLED_FILE
        pool[["id", "text"]].astype(str).to_parquet(path, index=False)
        return path

    def _new_version_name(self) -> str:
        from tuneloop.retrain.versions import new_version_name

        taken = self.store.versions.all_names()
        name = new_version_name(self.settings.models_dir)
        while name in taken:
            name = f"v{int(name[1:]) + 1}"
        return name

    def _cleanup_partial(self, version: str, pid: int | None) -> None:
        """A failed job leaves nothing: its temp dir, or its finished version dir when it was killed
        between the atomic rename and its exit (this run named the version, so nothing else owns it).
        ``pid`` None: the job ran elsewhere (Ray), so every temp dir of the version is its."""
        import shutil

        for p in self.settings.models_dir.glob(f".tmp-{version}-{'*' if pid is None else pid}-*"):
            shutil.rmtree(p, ignore_errors=True)
        if version not in self.store.versions.all_names():
            shutil.rmtree(self.settings.models_dir / version, ignore_errors=True)

    @staticmethod
    def _failure_reason(directory: Path, rc: int) -> str:
        event = last_progress(directory / "progress.jsonl")
        if event and event.get("phase") == "failed" and event.get("message"):
            return str(event["message"])
        lines = [ln for ln in tail_lines(directory / "job.log", 20) if ln.strip()]
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = str(-rc)
            return f"the job was killed by {name} (exit {rc})" + (f"; last log line: {lines[-1]}" if lines else "")
        return lines[-1] if lines else f"the job exited with code {rc} and wrote no log"

    # -- policy ----------------------------------------------------------------------------------
    def policy_reason(self, project: str) -> str | None:
        """Why the policy wants a retrain of ``project`` now (None: it does not).

        A first run needs enough new labels (with a drift alert open, or many without). A run
        that did not promote is followed by another only on new evidence: ``retry_new_labels``
        labels it has not seen, or, once labelling pauses for ``idle_label_seconds``, whatever it
        has not seen, so labels given before a budget ran out are never left unused.
        """
        r = self.settings.retrain
        labels = self._labels(project)
        n_new = count_new_labels(self.store, project, labels=labels)
        if n_new >= r.min_new_labels:
            why = f"policy: {n_new} new labels (>= {r.min_new_labels})"
        elif n_new >= r.on_drift_min_labels and (alerts := open_alert_count(self.store, project)):
            why = f"policy: {alerts} open drift alert(s) and {n_new} new labels (>= {r.on_drift_min_labels})"
        else:
            return None
        last = self.last_run_since_champion(project)
        if last is None:
            return why
        unseen = count_new_labels(self.store, project, cutoff=last["started"], labels=labels)
        if unseen >= r.retry_new_labels:
            return f"{why}; {unseen} of them given after run {last['id']} ({last['status']}) started"
        idle = self.seconds_since_last_label(project)
        if r.idle_label_seconds and unseen >= MIN_NEW_LABELS and idle is not None and idle >= r.idle_label_seconds:
            return (f"{why}; {unseen} of them given after run {last['id']} ({last['status']}) started, "
                    f"and labelling has paused for {idle:.0f} s")
        return None

    def last_run_since_champion(self, project: str) -> dict[str, Any] | None:
        """The latest finished run started after the champion's training data was exported."""
        cutoff = feedback_cutoff(self.store, project)
        return self.store.runs.last_finished_since(project, cutoff or datetime.min, list(ACTIVE))

    def seconds_since_last_label(self, project: str) -> float | None:
        last = self.store.feedback.last_label_ts(project)
        return None if last is None else (utcnow() - last).total_seconds()

    def check_policies(self) -> int | None:
        """Scheduler job: start at most one run for the first project whose policy fires."""
        if not self.settings.retrain.enabled or self._active is not None:
            return None
        from tuneloop.monitor.projects import project_names

        for project in project_names(self.store):
            if self.cooldown_left(project) > 0:
                continue
            why = self.policy_reason(project)
            if why:
                try:
                    return self.trigger(project, why, "scheduler", respect_cooldown=True)
                except RetrainError as e:
                    log.info("policy retrain of %s not started: %s", project, e)
                    return None
        return None

    def run_scheduled(self) -> list[int]:
        """Cron job: retrain every project with enough new labels for a meaningful holdout."""
        started = []
        from tuneloop.monitor.projects import project_names

        for project in project_names(self.store):
            plan = holdout_plan(self.store, project, self.settings, self._labels(project))
            if not plan.enough:
                log.info("scheduled retrain of %s skipped: %s", project,
                         plan.message(self.settings.retrain.target_gain, self.settings.retrain.power))
                continue
            try:
                started.append(self.trigger(project, f"schedule: cron {self.settings.retrain.cron}", "scheduler"))
            except RetrainError as e:
                log.info("scheduled retrain of %s not started: %s", project, e)
            break  # one at a time; the next project waits for the next tick
        return started


def _headline(metrics: dict[str, Any] | None) -> dict[str, Any]:
    m = metrics or {}
    hold, gold = m.get("holdout") or {}, m.get("golden") or {}
    return {"holdout_accuracy": hold.get("accuracy"), "holdout_macro_f1": hold.get("macro_f1"),
            "holdout_recall": hold.get("per_class_recall"), "golden_accuracy": gold.get("accuracy") if gold else None}

