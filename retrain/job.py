"""One retrain, as a child process: snapshot -> incremental LoRA training -> evaluation -> version dir.

    python -m tuneloop.retrain.job --snapshot DIR --champion VERSION_DIR --models-dir DIR \\
        --version NAME --settings JSON_FILE --progress FILE

The server spawns this so that training never blocks serving and a crash or a kill cannot take
the server (or the database, which this process never opens) with it. The job

1. reads the Parquet snapshot (:mod:`tuneloop.retrain.dataset`, hashes verified);
2. continues the champion's adapter and head on the snapshot's train part (``--champion``), or
   trains from the base when the project has no champion (external model);
3. scores the challenger *and* the champion on the same holdout and golden rows; without a
   champion the logged model's own predictions on the holdout are the baseline;
4. writes ``<models-dir>/<version>/`` atomically, with ``metrics.json`` holding both evaluations
   and ``reference.parquet`` (the training rows with the challenger's predictions and embeddings:
   the drift reference once it is champion).

Progress goes to ``--progress`` as JSON lines (``phase``, ``fraction``, ``message``, and ``epoch``,
``step``, ``loss``, ``samples_per_s`` while training); human log lines go to stderr. Exit code 0 on
success; otherwise non-zero with the reason as the last log line (and last progress event). SIGTERM
cancels: training stops after the current step and the job exits 3 with "cancelled".
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tuneloop.retrain.reference import REFERENCE_FILE, REFERENCE_MAX_ROWS, reference_rows, reference_sample

if TYPE_CHECKING:
    from tuneloop.retrain.selftrain import SelfTraining

EXIT_FAILED, EXIT_CANCELLED = 2, 3
_TRIAL_RE = re.compile(r"^search trial (\d+)/(\d+):")  # retrain/search.py's line as each trial starts
_EPOCH_RE = re.compile(
    r"epoch (\d+)/(\d+): train_loss (\S+) val_loss (\S+) val_accuracy (\S+) val_macro_f1 (\S+) \(([\d.]+) samples/s\)")


class Cancelled(Exception):
    pass


class Progress:
    """Appends JSON-line events to the progress file and mirrors a readable line on stderr."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.fraction = 0.0
        self.t0 = time.monotonic()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def event(self, phase: str, message: str = "", fraction: float | None = None, echo: bool = True,
              **fields: Any) -> None:
        if fraction is not None:
            self.fraction = max(self.fraction, min(1.0, fraction))
        row = {"ts": time.time(), "elapsed_s": round(time.monotonic() - self.t0, 2), "phase": phase,
               "fraction": round(self.fraction, 4), "message": message, **fields}
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, default=str) + "\n")
        if echo and message:
            print(f"[{phase}] {message}", file=sys.stderr, flush=True)


class StepFlag(threading.Event):
    """The trainer's stop flag; the trainer checks it once per batch, which doubles as a step tick.

    Reporting from here keeps per-step progress (and so a live progress bar for long epochs on
    the real base model) without changing the training loop.
    """

    def __init__(self, progress: Progress, steps_per_epoch: int, epochs: int, batch_size: int) -> None:
        super().__init__()
        self.progress, self.steps_per_epoch, self.epochs = progress, max(1, steps_per_epoch), epochs
        self.batch_size = batch_size
        self.step, self.t0, self.last = 0, time.monotonic(), 0.0
        self.trial, self.trials = 0, 1  # a search trains several times: each trial gets its share of the bar

    def start_trial(self, trial: int, trials: int) -> None:
        self.trial, self.trials = trial, max(1, trials)
        self.step, self.t0 = 0, time.monotonic()

    def fraction(self, done: float) -> float:
        """The job's progress when the current training is ``done`` (0..1) complete."""
        return 0.10 + 0.70 * (self.trial + min(1.0, done)) / self.trials

    def is_set(self) -> bool:
        stop = super().is_set()
        if not stop:
            now = time.monotonic()
            if self.step and now - self.last >= 1.0:  # at most one event a second
                self.last = now
                total = self.steps_per_epoch * self.epochs
                epoch = min(self.epochs, self.step // self.steps_per_epoch + 1)
                self.progress.event(
                    "train", f"training: epoch {epoch}/{self.epochs}, step {self.step}/{total}",
                    fraction=self.fraction(self.step / total), echo=False, epoch=epoch, step=self.step,
                    total_steps=total, samples_per_s=round(self.step * self.batch_size / (now - self.t0), 2))
            self.step += 1
        return stop


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the server dies: an orphaned job must not write a version later."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run(args: argparse.Namespace, stop: threading.Event, progress: Progress) -> Path:
    """The job proper; returns the version directory written."""
    from tuneloop.retrain.dataset import read_manifest, read_snapshot
    from tuneloop.retrain.evaluate import classification_metrics, evaluate, with_rows
    from tuneloop.retrain.search import search_train
    from tuneloop.retrain.settings import ModelSettings, RetrainSettings, SearchSettings, retrain_model_settings
    from tuneloop.retrain.trainer import effective_batch_size, train
    from tuneloop.retrain.versions import load_version, validate_version_name, write_version

    def check_cancel() -> None:
        if stop.is_set():
            raise Cancelled()

    cfg = json.loads(Path(args.settings).read_text(encoding="utf-8"))
    retrain_settings = RetrainSettings(**cfg.get("retrain", {}))
    model_settings = ModelSettings(**cfg.get("model", {}))
    if not cfg.get("first_training"):  # a retrain; a new model from a dataset trains as `tuneloop train` does
        model_settings = retrain_model_settings(model_settings, retrain_settings)
    search = SearchSettings(**cfg["search"]) if cfg.get("search") else None
    validate_version_name(args.version)
    models_dir = Path(args.models_dir)
    if (models_dir / args.version).exists():
        raise FileExistsError(f"version {args.version} already exists in {models_dir}")

    progress.event("load", f"reading snapshot {args.snapshot}", 0.02)
    snap = read_snapshot(args.snapshot)
    snap_manifest = read_manifest(args.snapshot)
    if len(snap.train) < 2:
        raise ValueError(f"the snapshot has {len(snap.train)} training rows; at least 2 are needed")
    progress.event("load", f"{len(snap.train)} training rows ({snap.n_new_train} new, {snap.n_replay} replay), "
                   f"{len(snap.holdout)} holdout, {0 if snap.golden is None else len(snap.golden)} golden", 0.05)
    check_cancel()

    # ---- train ---------------------------------------------------------------------------------
    champion_dir = Path(args.champion) if args.champion else None
    n_fit = len(snap.train) - max(1, round(len(snap.train) * model_settings.val_fraction))
    batch_size = effective_batch_size(model_settings.batch_size, n_fit)
    steps_per_epoch = math.ceil(n_fit / batch_size)
    epochs = model_settings.epochs or min(model_settings.max_epochs,
                                          math.ceil(model_settings.min_steps / steps_per_epoch))
    flag = StepFlag(progress, steps_per_epoch, epochs, batch_size)
    stop_bridge = threading.Thread(target=lambda: (stop.wait(), flag.set()), daemon=True)
    stop_bridge.start()

    def log(message: str) -> None:
        if t := _TRIAL_RE.match(message):
            flag.start_trial(int(t.group(1)) - 1, int(t.group(2)))
        m = _EPOCH_RE.search(message)
        if m:
            epoch, epochs = int(m.group(1)), int(m.group(2))
            progress.event("train", message, flag.fraction(epoch / epochs), epoch=epoch, step=flag.step,
                           loss=_num(m.group(3)), val_loss=_num(m.group(4)), val_accuracy=_num(m.group(5)),
                           samples_per_s=_num(m.group(7)))
        else:
            progress.event("train", message)

    labels = cfg.get("labels")
    progress.event("train", "continuing the champion " + champion_dir.name if champion_dir
                   else "training from the base (no champion)", 0.08)
    kw = {"init_from": champion_dir, "progress": False, "stop_event": flag, "refit_head": retrain_settings.refit_head,
          "self_training": _self_training(snap, args.unlabelled, retrain_settings, progress)}
    if search is not None:
        progress.event("train", f"searching: up to {search.trials} configurations within {search.minutes:g} minutes")
        result = search_train(snap.train[["text", "label"]], None if champion_dir else labels, model_settings,
                              search, log=log, **kw)
    else:
        result = train(snap.train[["text", "label"]], None if champion_dir else labels, model_settings, log=log, **kw)
    if result.metrics.get("stopped") == "stop_event" or stop.is_set():
        raise Cancelled()
    clf = result.classifier

    # ---- evaluate challenger and champion on the same rows ----------------------------------------
    progress.event("evaluate", f"scoring the challenger on {len(snap.holdout)} holdout rows", 0.82)
    ref_train, _ = reference_rows(clf, snap.train, "train")
    check_cancel()
    ref_holdout, hold_pred = reference_rows(clf, snap.holdout, "holdout") if len(snap.holdout) else (None, [])
    has_golden = snap.golden is not None and len(snap.golden) > 0
    challenger = {  # per-row outcomes on both sets: the gate compares the models row by row
        "holdout": with_rows(classification_metrics(snap.holdout["label"].astype(str).tolist(), hold_pred,
                                                    clf.labels), snap.holdout, hold_pred),
        "golden": evaluate(clf, snap.golden, rows=True) if has_golden else None,
    }
    check_cancel()
    champion: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    if champion_dir is not None:
        progress.event("evaluate", f"scoring the champion {champion_dir.name} on the same rows", 0.88)
        old = load_version(champion_dir, threads=model_settings.threads, device=model_settings.device)
        champion = {
            "version": champion_dir.name,
            "holdout": evaluate(old, snap.holdout, rows=True) if len(snap.holdout)
            else with_rows(classification_metrics([], [], old.labels), snap.holdout, []),
            "golden": evaluate(old, snap.golden, rows=True) if has_golden else None,
        }
        del old
    elif "predicted_label" in snap.holdout.columns and snap.holdout["predicted_label"].notna().all() \
            and len(snap.holdout):
        logged = snap.holdout["predicted_label"].astype(str).tolist()
        baseline = {"source": "logged predictions", "holdout": with_rows(classification_metrics(
            snap.holdout["label"].astype(str).tolist(), logged, clf.labels), snap.holdout, logged), "golden": None}
    check_cancel()
    hold_acc = challenger["holdout"]["accuracy"]
    ref = champion or baseline
    ref_acc = None if ref is None else ref["holdout"]["accuracy"]
    progress.event("evaluate", f"holdout accuracy: challenger {_fmt(hold_acc)}, "
                   f"{'champion' if champion else 'baseline'} {_fmt(ref_acc)}", 0.93)

    # ---- write the version (atomic: the reference goes in before the rename) -----------------------
    metrics = {
        **result.metrics,
        "holdout": challenger["holdout"], "golden": challenger["golden"],
        "champion": champion, "baseline": baseline,
        "history": result.history,
        "snapshot": {"sha256": snap_manifest["sha256"], "n_train": len(snap.train), "n_new_train": snap.n_new_train,
                     "n_replay": snap.n_replay, "n_holdout": len(snap.holdout),
                     "n_golden": 0 if snap.golden is None else len(snap.golden), "path": str(args.snapshot)},
        "retrain": {"epochs": model_settings.epochs, "replay_ratio": retrain_settings.replay_ratio,
                    "holdout_fraction": retrain_settings.holdout_fraction, "min_gain": retrain_settings.min_gain,
                    "alpha": retrain_settings.alpha},
    }
    manifest = {**result.manifest, "snapshot_sha256": snap_manifest["sha256"], "meta": snap.meta,
                "n_new_train": snap.n_new_train, "n_replay": snap.n_replay}
    reference = pd.concat([r for r in (ref_train, ref_holdout) if r is not None], ignore_index=True)
    if len(reference) > REFERENCE_MAX_ROWS:  # the drift checks sample far fewer; keep the cost bounded
        reference = reference.iloc[reference_sample(reference["split"], REFERENCE_MAX_ROWS)].reset_index(drop=True)
    check_cancel()
    progress.event("write", f"writing version {args.version}", 0.95)
    target = write_version(models_dir, args.version, clf, metrics, manifest,
                           parent=champion_dir.name if champion_dir else None,
                           ids=snap.train["id"].astype(str).tolist(), extra_files={REFERENCE_FILE: reference})
    return target


def _self_training(snap: Any, pool_path: str, settings: Any, progress: Progress) -> SelfTraining | None:
    """The unlabelled pool and knobs for :mod:`tuneloop.retrain.selftrain`, or None without one. The pool is
    the snapshot's own unlabelled texts (a dataset's rows without a label, which the operator asked to
    train on) or else, with ``retrain.self_training``, the recent traffic at ``pool_path``. Texts of the
    holdout, golden set and training rows are left out."""
    from tuneloop.retrain.selftrain import SelfTraining, usable_pool

    if snap.unlabelled is not None and len(snap.unlabelled):
        offered, what = snap.unlabelled, "unlabelled texts of the dataset"
    elif settings.self_training and pool_path:
        offered, what = pd.read_parquet(pool_path), "unlabelled recent texts"
    else:
        return None
    pool = usable_pool(offered, snap.holdout, snap.golden, snap.train)
    progress.event("train", f"self-training: {len(pool)} {what} offered for pseudo-labels")
    return SelfTraining.from_settings(pool["text"].astype(str).tolist(), settings)


def _num(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuneloop.retrain.job", description=__doc__.splitlines()[0])
    p.add_argument("--snapshot", required=True, help="snapshot directory (dataset.write_snapshot)")
    p.add_argument("--champion", default="", help="champion version directory ('' = train from the base)")
    p.add_argument("--models-dir", required=True)
    p.add_argument("--version", required=True, help="name of the version to write")
    p.add_argument("--settings", required=True, help="JSON file: {model: {...}, retrain: {...}, labels: [...]}")
    p.add_argument("--progress", default="", help="JSON-lines progress file")
    p.add_argument("--unlabelled", default="", help="Parquet file (id, text) of unlabelled recent traffic "
                   "for self-training (retrain.self_training)")
    args = p.parse_args(argv)

    _die_with_parent()
    parent = os.getppid()
    progress = Progress(Path(args.progress) if args.progress else None)
    stop = threading.Event()

    def on_term(signum: int, _frame: Any) -> None:
        if os.getppid() != parent:  # the server died: nobody waits for a clean cancel, and no step may finish
            os._exit(EXIT_CANCELLED)
        stop.set()
        print(f"received signal {signum}: cancelling after the current step", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    progress.event("start", f"retrain job pid {os.getpid()} -> version {args.version}", 0.0)
    try:
        target = run(args, stop, progress)
    except Cancelled:
        progress.event("cancelled", "cancelled")
        print("cancelled", file=sys.stderr, flush=True)
        return EXIT_CANCELLED
    except Exception as e:  # the reason must be the last line, readable without the traceback
        traceback.print_exc(file=sys.stderr)
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        progress.event("failed", reason)
        print(f"failed: {reason}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    progress.event("done", f"version {target.name} written to {target}", 1.0, version=target.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
