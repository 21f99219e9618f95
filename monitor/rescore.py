"""Re-scoring recent traffic into a new champion's reference, in the background after its promotion.

A version's reference starts as its held-out rows: few, and often label-queue picks rather than a
sample of traffic. Once it is promoted, :class:`ReferenceRescorer` (a scheduled job of the server,
off the request path) takes the traffic logged before the promotion that the version was not trained
on, scores it with the version as served, and appends it to the version's reference rows with
``split = "rescored"``. The model-output checks then compare the version's own outputs on real
traffic with its outputs on new traffic (like with like, see
:func:`tuneloop.monitor.drift.output_sides`). Until that has happened they use the held-out rows as
before; every result says which rows it used (``reference_rows_by_source``).

*Drift is never re-scored into the reference.* Traffic that had already drifted before the promotion
would make that drift the reference, and a window of it afterwards would look normal. So a row is
re-scored only when a recorded drift check covered it and all input checks of that window (embedding,
text descriptors: they do not depend on the model) passed, and no window whose input checks flagged
covers it. Traffic no check looked at is left out too: nobody can vouch for it. Rows the version
was trained on (``ids.txt`` of its directory) or whose text the reference already holds are skipped.

*Bounded and late.* It starts :data:`RESCORE_GRACE_SECONDS` after the promotion at the earliest. At
most ``rows`` rows (the newest eligible), scored in chunks of ``chunk`` texts through
the served model's own queue, pausing as long as each chunk took (the re-scoring takes at most half
of the model's time), and stopping after ``seconds``; what was scored by then is kept. A version
is re-scored once: its reference then holds rescored rows (restarts see them); when nothing was
eligible it is not tried again in this process.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tuneloop.monitor import registry
from tuneloop.monitor.drift import DEFAULT_CHECKS
from tuneloop.monitor.projects import project_names
from tuneloop.monitor.storage import Store, utcnow
from tuneloop.retrain.reference import RESCORED_SPLIT, reference_rows
from tuneloop.retrain.versions import IDS_FILE

if TYPE_CHECKING:
    from tuneloop.monitor.serving import ModelServer, ServeResult, Serving

log = logging.getLogger(__name__)

RESCORE_ROWS = 2000
"""Most pre-promotion traffic rows re-scored per promotion (the checks sample 2 000 per side)."""
RESCORE_SECONDS = 120.0
"""Longest a re-scoring may take; the rows scored by then are kept."""
RESCORE_CHUNK = 32
"""Texts per request to the served model: small, so live requests queue behind at most one chunk."""
RESCORE_INTERVAL_SECONDS = 10.0
"""How often the server looks for a champion whose reference has not been re-scored yet."""
RESCORE_GRACE_SECONDS = 20.0
"""Re-scoring starts this long after a promotion at the earliest: the new model's first moments go to
live traffic (cold caches), and a promotion that goes wrong is rolled back then, unscored."""
CHECK_WINDOW_SLACK = timedelta(minutes=10)
"""Checks recorded this long before the oldest candidate row are still read (clients set row times)."""

INPUT_CHECKS = frozenset(c.name for c in DEFAULT_CHECKS if c.scope == "input")


@dataclass
class RescoreResult:
    """What one re-scoring did: rows added and, per reason, candidate rows left out."""

    project: str
    version: str
    rescored: int
    candidates: int
    left_out: dict[str, int] = field(default_factory=dict)
    complete: bool = True
    """False when time ran out or the champion changed before every eligible row was scored."""
    reference_rows: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_windows(store: Store, project: str, since: Any) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    """(clean, flagged) time windows of the drift checks recorded since ``since``, judged by input checks only.

    Clean: at least one input check ran on the window and none drifted. Flagged: some input check drifted.
    """
    recorded = store.checks.recent(project, 1_000_000, since=since)
    runs: dict[Any, dict[str, Any]] = {}
    for r in recorded:
        if r["metric"] not in INPUT_CHECKS or r["window_start"] is None or r["window_end"] is None:
            continue
        run = runs.setdefault(r["id"], {"window": (r["window_start"], r["window_end"]), "drifted": False})
        run["drifted"] |= bool(r["drifted"])
    clean = [run["window"] for run in runs.values() if not run["drifted"]]
    flagged = [run["window"] for run in runs.values() if run["drifted"]]
    return clean, flagged


def _covered(ts: pd.Series, windows: list[tuple[Any, Any]]) -> np.ndarray:
    inside = np.zeros(len(ts), dtype=bool)
    for start, end in windows:
        inside |= ((ts >= pd.Timestamp(start)) & (ts <= pd.Timestamp(end))).to_numpy()
    return inside


def trained_ids(path: str | Path) -> set[str]:
    """Ids of the rows a version was trained on (its ``ids.txt``; empty when it has none)."""
    ids = Path(path) / IDS_FILE
    return set(ids.read_text(encoding="utf-8").split()) if ids.is_file() else set()


def eligible_traffic(store: Store, project: str, version: dict[str, Any],
                     limit: int = RESCORE_ROWS) -> tuple[pd.DataFrame, int, dict[str, int]]:
    """The pre-promotion traffic that may join ``version``'s reference, the candidates, and who was left out why.

    Candidates: the last ``limit`` embedded predictions logged before the promotion. Left out: rows
    the version was trained on, texts the reference already holds, rows no clean check window
    covered, rows a flagged window covered (see the module's docstring for why).
    """
    traffic = store.predictions.before_promotion(project, version["version"], limit)
    if traffic.empty:
        return traffic, 0, {}
    ts = pd.to_datetime(traffic["ts"])
    clean, flagged = check_windows(store, project, ts.min().to_pydatetime() - CHECK_WINDOW_SLACK)
    known = set(store.references.rows(project, version["version"])["text"].astype(str))
    reasons = {
        "trained_on": traffic["id"].astype(str).isin(trained_ids(version["path"])).to_numpy(),
        "already_in_reference": traffic["text"].astype(str).isin(known).to_numpy(),
        "in_a_flagged_window": _covered(ts, flagged),
        "not_in_a_checked_window": ~_covered(ts, clean),
    }
    keep = np.ones(len(traffic), dtype=bool)
    left_out: dict[str, int] = {}
    for reason, out in reasons.items():  # each row counted under the first reason that applies
        left_out[reason] = int((keep & out).sum())
        keep &= ~out
    eligible = traffic[keep].drop_duplicates("text").reset_index(drop=True)
    left_out["duplicate_text"] = int(keep.sum()) - len(eligible)
    return eligible, len(traffic), left_out


def _seconds_since(ts: Any) -> float:
    """Seconds from ``ts`` (naive UTC or aware) to now; infinite when there is no time."""
    if ts is None:
        return float("inf")
    ts = pd.Timestamp(ts)
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    return (pd.Timestamp(utcnow()) - ts).total_seconds()


class _ServedVersion:
    """The served model as a classifier (``labels``, ``predict``) that refuses to answer from another version."""

    def __init__(self, server: ModelServer, version: str) -> None:
        self.server = server
        self.version = version
        self.labels: list[str] = []

    def predict(self, texts: list[str]) -> ServeResult:
        result = self.server.predict(texts, timeout=RESCORE_SECONDS, log=False)  # not traffic: never logged
        if result.version != self.version:
            raise VersionChanged(f"serving moved from {self.version} to {result.version}")
        self.labels = list(result.label_names)
        return result


class VersionChanged(RuntimeError):
    """The champion was swapped while its reference was being re-scored."""


def rescore(store: Store, server: ModelServer, project: str, version: dict[str, Any], rows: int = RESCORE_ROWS,
            seconds: float = RESCORE_SECONDS, chunk: int = RESCORE_CHUNK) -> RescoreResult:
    """Score the eligible pre-promotion traffic with the served ``version`` and add it to its reference."""
    from tuneloop.monitor.serving import ServeQueueFull, ServerStopping

    name = version["version"]
    eligible, candidates, left_out = eligible_traffic(store, project, version, rows)
    model = _ServedVersion(server, name)
    deadline = time.monotonic() + seconds
    parts: list[pd.DataFrame] = []
    done, complete = 0, True
    while done < len(eligible):
        if time.monotonic() >= deadline:
            complete = False
            break
        started = time.monotonic()
        try:
            part, _ = reference_rows(model, eligible.iloc[done:done + chunk], RESCORED_SPLIT)
        except ServeQueueFull:  # live requests come first: wait for the queue to drain
            time.sleep(0.5)
            continue
        except (VersionChanged, ServerStopping) as e:
            log.info("re-scoring the %s reference of %s stopped: %s", name, project, e)
            complete = False
            break
        parts.append(part)
        done += len(part)
        time.sleep(min(time.monotonic() - started, max(deadline - time.monotonic(), 0.0)))
    result = RescoreResult(project, name, sum(map(len, parts)), candidates, left_out, complete)
    if parts:
        result.reference_rows = registry.add_reference_rows(store, project, name, pd.concat(parts, ignore_index=True))
    log.info("re-scored %d pre-promotion rows into the reference of %s/%s (%d candidates, left out %s%s)",
             result.rescored, project, name, candidates, left_out, "" if complete else "; cut short")
    return result


class ReferenceRescorer:
    """The scheduled job: re-score each champion's reference once after its promotion (see the module)."""

    def __init__(self, store: Store, serving: Serving, rows: int = RESCORE_ROWS,
                 seconds: float = RESCORE_SECONDS, grace: float = RESCORE_GRACE_SECONDS) -> None:
        self.store = store
        self.serving = serving
        self.rows = rows
        self.seconds = seconds
        self.grace = grace
        self.results: list[RescoreResult] = []
        self._tried: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def run_all(self) -> None:
        """Every project whose champion is served and not re-scored yet; one failure does not stop the rest."""
        with self._lock:
            for project in project_names(self.store):
                try:
                    self.run(project)
                except Exception:
                    log.exception("re-scoring the reference of project %s failed", project)

    def run(self, project: str) -> RescoreResult | None:
        """Re-score ``project``'s champion if it is due and served; None when there is nothing to do."""
        champion = registry.champion(self.store, project)
        server = self.serving.get(project)
        if champion is None or server is None or server.version != champion["version"]:
            return None  # not served yet (or a swap is under way): the next run looks again
        key = (project, champion["version"], str(champion.get("promoted_at")))
        if key in self._tried:
            return None
        if _seconds_since(champion.get("promoted_at")) < self.grace:
            return None
        splits = self.store.references.rows(project, champion["version"])["split"].astype(str)
        if splits.empty or (splits == RESCORED_SPLIT).any():
            self._tried.add(key)  # no reference to extend (imported or none), or done before a restart
            return None
        result = rescore(self.store, server, project, champion, self.rows, self.seconds)
        if result.complete or result.rescored:
            self._tried.add(key)
        self.results.append(result)
        return result
