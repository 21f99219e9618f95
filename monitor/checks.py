"""Running drift checks against the store: pick the windows, run the checks, record, alert.

The statistics live in :mod:`tuneloop.monitor.drift`; this module only decides *which* rows are
compared and records every result the same way (one ``drift_checks`` row per metric, sharing
the run's id, plus an Evidently HTML report file for the dashboard).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneloop.monitor.alerts import AlertChange, WebhookNotifier, update_alerts
from tuneloop.monitor.config import Settings
from tuneloop.monitor.projects import labels_for, project_names, settings_for
from tuneloop.monitor.storage import DEFAULT_PROJECT, Store, is_missing, utcnow
from tuneloop.retrain.reference import not_trained_on

log = logging.getLogger(__name__)


class NotEnoughData(Exception):
    """A window or the reference is too small to compare."""


@dataclass
class CheckRun:
    check_id: int
    project: str
    reference: str
    window_start: datetime | None
    window_end: datetime | None
    results: list[dict[str, Any]]
    report_path: str | None
    alerts: list[AlertChange] = field(default_factory=list)
    skipped_without_embedding: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "check_id": self.check_id, "project": self.project, "reference": self.reference,
            "window_start": self.window_start, "window_end": self.window_end, "results": self.results,
            "report_path": self.report_path, "skipped_without_embedding": self.skipped_without_embedding,
            "alerts": [a.as_json() for a in self.alerts],
        }


def champion_version(store: Store, project: str) -> str | None:
    return store.versions.champion_name(project)


PRE_PROMOTION_ROWS = 5000
"""Most recent traffic rows before a promotion taken as the input checks' reference."""
PRE_PROMOTION_MIN_ROWS = 200
"""Fewer pre-promotion rows than this: the input checks fall back on the version's reference rows."""
MIN_ROWS = 20
"""Fewest rows on each side of a check run."""


@dataclass(frozen=True)
class Reference:
    """What the checks compare against.

    ``inputs`` feeds the input checks (embedding, text descriptors: independent of the model) and
    ``outputs`` the model-output checks, whose rows are ``version``'s predictions (the drift module
    keeps only the rows it was not trained on). ``inputs_source`` says where the input rows came from.
    """

    name: str
    inputs: pd.DataFrame
    outputs: pd.DataFrame
    version: str | None = None
    inputs_source: str = "reference rows"


def reference_frames(store: Store, settings: Settings, project: str = DEFAULT_PROJECT) -> Reference:
    """The reference of the checks.

    ``training``: the champion's reference rows (its predictions on its training, validation and
    holdout rows, or rows imported with ``tuneloop reference import``); for the input checks, the
    traffic served just before the champion's promotion when there is enough of it (it is what
    traffic looked like when the version went live), else the reference rows the champion was not
    trained on (held-out rows of the random evaluation slice, re-scored traffic): its training rows
    are label-queue picks and replayed rows, which do not look like traffic, so traffic would look
    drifted next to them. Only with fewer than :data:`MIN_ROWS` of those do the input checks take
    every reference row (``inputs_source`` says so). Without reference rows, the project's first
    ``window_size`` predictions. ``pinned``: predictions between ``pinned_start`` and ``pinned_end``.
    """
    drift = settings.drift
    if drift.reference == "pinned":
        if not (drift.pinned_start and drift.pinned_end):
            raise NotEnoughData("drift.reference = 'pinned' needs drift.pinned_start and drift.pinned_end")
        start, end = datetime.fromisoformat(drift.pinned_start), datetime.fromisoformat(drift.pinned_end)
        pinned = store.window(project, since=start, until=end)
        return Reference(f"pinned:{start.isoformat()}..{end.isoformat()}", pinned, pinned)
    champion = champion_version(store, project)
    for name in filter(None, [champion, "imported"]):
        df = store.references.rows(project, name)
        if df.empty:
            continue
        if name != champion:
            return Reference(name, df, df)
        traffic = pre_promotion_traffic(store, project, name)
        if len(traffic) >= PRE_PROMOTION_MIN_ROWS:
            return Reference(name, traffic, df, name, f"{len(traffic)} traffic rows before {name} was promoted")
        held_out = not_trained_on(df)
        if len(held_out) == len(df):
            return Reference(name, df, df, name)
        if len(held_out) >= MIN_ROWS:
            return Reference(name, held_out, df, name, f"{len(held_out)} reference rows {name} was not trained on")
        return Reference(name, df, df, name, f"all {len(df)} reference rows, {len(df) - len(held_out)} training "
                                             f"rows included: {name} has {len(held_out)} held-out rows")
    first = store.predictions.first_traffic(project, drift.window_size)
    return Reference("first-traffic", first, first)


def pre_promotion_traffic(store: Store, project: str, version: str, limit: int = PRE_PROMOTION_ROWS) -> pd.DataFrame:
    """The last ``limit`` embedded predictions logged before ``version`` was promoted, in time order."""
    return store.predictions.before_promotion(project, version, limit)


def reference_frame(store: Store, settings: Settings, project: str = DEFAULT_PROJECT) -> tuple[str, pd.DataFrame]:
    """The reference's name and its model-output rows (see :func:`reference_frames`)."""
    ref = reference_frames(store, settings, project)
    return ref.name, ref.outputs


def current_frame(store: Store, settings: Settings, project: str = DEFAULT_PROJECT,
                  now: datetime | None = None) -> pd.DataFrame:
    drift = settings.drift
    if drift.window_kind == "time":
        end = now or utcnow()
        return store.window(project, since=end - timedelta(minutes=drift.window_minutes), until=end)
    return store.window(project, last=drift.window_size)


def _drop_missing_embeddings(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    if "embedding" not in df.columns:
        return df, 0
    # A NULL list arrives as None, NaN or pd.NA depending on the pandas conversion.
    has = df["embedding"].map(lambda e: not is_missing(e))
    return df[has].reset_index(drop=True), int((~has).sum())


def run_drift_checks(
    store: Store,
    settings: Settings,
    project: str = DEFAULT_PROJECT,
    notifier: WebhookNotifier | None = None,
    render: bool = True,
) -> CheckRun:
    """Compare the current window with the reference, record the results, update alerts."""
    from tuneloop.monitor import drift

    settings = settings_for(store, settings, project)  # the project's drift overrides; UnknownProject
    ref = reference_frames(store, settings, project)
    reference_name = ref.name
    current = current_frame(store, settings, project)
    current, skipped = _drop_missing_embeddings(current)
    reference, _ = _drop_missing_embeddings(ref.inputs)
    minimum = MIN_ROWS
    if len(reference) < minimum or len(current) < minimum:
        raise NotEnoughData(
            f"not enough rows to compare: reference {len(reference)}, current {len(current)} (need {minimum} each"
            + (f"; {skipped} current rows still wait for their embedding" if skipped else "") + ")"
        )
    if "id" in reference.columns and "id" in current.columns:  # traffic used as reference is not judged again
        current = current[~current["id"].isin(set(reference["id"].dropna()))].reset_index(drop=True)
        if len(current) < minimum:
            raise NotEnoughData(f"no traffic beyond the {reference_name} reference yet")
    results = drift.run_checks(reference, current, settings.drift, labels_for(store, settings, project),
                               version=ref.version, output_reference=ref.outputs)
    if ref.inputs_source != "reference rows":
        inputs = {c.name for c in drift.DEFAULT_CHECKS if c.scope == "input"}
        results = [replace(r, details={**r.details, "reference_inputs": ref.inputs_source}) if r.metric in inputs
                   else r for r in results]
    window_start = current["ts"].min() if "ts" in current.columns else None
    window_end = current["ts"].max() if "ts" in current.columns else None
    now = utcnow()
    check_id = store.checks.next_id()
    report_path: Path | None = None
    if render:
        report_path = settings.reports_dir / project / f"check-{check_id}.html"
        report_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            drift.render_report(ref.outputs, current, results, report_path)
        except Exception:
            log.exception("rendering the Evidently report failed; the check results are still recorded")
            report_path = None
    rows = [r.as_json() if hasattr(r, "as_json") else dict(r.__dict__) for r in results]
    if skipped:  # say on every recorded result that some current rows were left out
        rows = [{**r, "details": {**(r.get("details") or {}), "rows_without_embedding": skipped}} for r in rows]
    store.checks.record([
        [check_id, project, now, _naive(window_start), _naive(window_end), reference_name, r["metric"],
         _finite(r["value"]), _finite(r["threshold"]), bool(r["drifted"]),
         json.dumps(r.get("details") or {}, default=str),
         str(report_path.relative_to(settings.reports_dir)) if report_path else None]
        for r in rows
    ])
    changes = update_alerts(store, project, [r["metric"] for r in rows], settings.drift)
    if notifier is not None and changes:
        notifier.notify(changes)
    return CheckRun(check_id, project, reference_name, _naive(window_start), _naive(window_end), rows,
                    str(report_path) if report_path else None, changes, skipped)


def check_failure_alert(store: Store, project: str, error: Exception | None) -> AlertChange | None:
    """Open the project's ``check_failed`` alert for ``error`` or, with ``None``, close it."""
    open_id = store.alerts.open_id(project, "check_failed")
    if error is None:
        if open_id is None:
            return None
        store.alerts.close(open_id)
        return AlertChange(open_id, project, "check_failed", "closed", "drift checks run again")
    if open_id is not None:
        return None
    message = f"the drift check failed: {type(error).__name__}: {error}"[:1000]
    alert_id = store.alerts.open(project, "check_failed", "critical", message, {"error": type(error).__name__})
    return AlertChange(alert_id, project, "check_failed", "opened", message)


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _naive(ts: Any) -> datetime | None:
    if ts is None or (isinstance(ts, float) and np.isnan(ts)) or pd.isna(ts):
        return None
    return pd.Timestamp(ts).to_pydatetime()


class DriftService:
    """Scheduled checks for every project; a check never overlaps itself (one lock per service)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.notifier = WebhookNotifier(store, settings.drift)
        self._lock = threading.Lock()

    def projects(self) -> list[str]:
        return project_names(self.store)

    def run(self, project: str = DEFAULT_PROJECT) -> CheckRun:
        with self._lock:
            return run_drift_checks(self.store, self.settings, project, self.notifier)

    def run_all(self) -> None:
        """Check every project; one project's failure is logged and alerted, the rest still run."""
        for project in self.projects():
            try:
                self.run(project)
            except NotEnoughData as e:
                log.info("drift check skipped for %s: %s", project, e)
            except Exception as e:
                log.exception("drift check failed for project %s", project)
                self._record_failure(project, e)
                continue
            self._record_failure(project, None)

    def _record_failure(self, project: str, error: Exception | None) -> None:
        """Open a ``check_failed`` alert for ``project`` (one at a time), or close it once a check works."""
        try:
            change = check_failure_alert(self.store, project, error)
        except Exception:  # the store itself may be what failed; the log above has the cause
            log.exception("could not record the failed drift check of %s", project)
            return
        if change is not None:
            self.notifier.notify([change])

    def stop(self) -> None:
        self.notifier.stop()
