"""What "new" and "older" labelled data are for a retrain: new labels came after the champion's
training data was exported; older ones (plus the champion's own training rows) form the replay
buffer; the holdout plan says whether fresh evaluation-slice labels suffice for a gate decision."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from tuneloop.monitor import registry
from tuneloop.monitor.storage import Store
from tuneloop.retrain import gate


def feedback_cutoff(store: Store, project: str) -> datetime | None:
    """When the champion's training data was exported (feedback after it is new); None: no champion."""
    row = registry.champion(store, project)
    if row is None:
        return None
    meta = ((row.get("metrics") or {}).get("snapshot") or {}).get("meta") or {}
    if meta.get("feedback_until"):
        return datetime.fromisoformat(str(meta["feedback_until"]))
    return row["created_at"]


def count_new_labels(store: Store, project: str, cutoff: datetime | None = None,
                     labels: list[str] | None = None) -> int:
    """Predictions whose latest label was given after ``cutoff`` (default: the champion's)."""
    cutoff = cutoff if cutoff is not None else feedback_cutoff(store, project)
    return store.feedback.count_latest_after(project, cutoff or datetime.min, labels)


@dataclass(frozen=True)
class HoldoutPlan:
    """Fresh evaluation-slice labels available now vs what detecting ``target_gain`` needs."""

    available: int
    needed: int
    detectable_gain: float | None  # the smallest gain ``available`` rows detect (planning discordance)
    share: float

    @property
    def enough(self) -> bool:
        return self.available >= self.needed

    def as_json(self) -> dict[str, Any]:
        return {"available": self.available, "needed": self.needed, "detectable_gain": self.detectable_gain,
                "more_slice_labels": max(0, self.needed - self.available),
                "more_queue_labels": self.more_queue_labels}

    @property
    def more_queue_labels(self) -> int:
        return math.ceil(max(0, self.needed - self.available) / self.share)

    def message(self, target_gain: float, power: float) -> str:
        return (f"{gate.detectable_phrase(self.available, self.detectable_gain)} (fresh labels of the random "
                f"evaluation slice); detecting a gain of {100 * target_gain:.0f} pts at {power:.0%} power needs "
                f"{self.needed}: {self.needed - self.available} more random-slice labels, about "
                f"{self.more_queue_labels} more labels from the label queue ({self.share:.0%} of it is random)")


def holdout_plan(store: Store, project: str, settings: Any, labels: list[str]) -> HoldoutPlan:
    """How many new labelled rows of the evaluation slice, unused by earlier decisions, exist now."""
    from tuneloop.retrain.evaluation_slice import in_slice
    from tuneloop.retrain.paired import detectable_gain, rows_needed

    r = settings.retrain
    cutoff = feedback_cutoff(store, project)
    ids = store.feedback.ids_labelled_after(project, cutoff or datetime.min, labels)
    used = registry.used_holdout_ids(store, project)
    fresh = [i for i, member in zip(ids.astype(str), in_slice(ids, r.holdout_fraction), strict=True)
             if member and i not in used]
    needed = max(r.min_holdout, rows_needed(r.target_gain, r.planning_discordance, r.alpha, r.power))
    return HoldoutPlan(len(fresh), needed, detectable_gain(len(fresh), r.planning_discordance, r.alpha, r.power),
                       r.holdout_fraction)


def export_frames(store: Store, project: str, cutoff: datetime | None, labels: list[str],
                  older_cap: int, seed: int = 0, until: datetime | None = None,
                  exclude_suspected: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(new, older) labelled frames for :func:`tuneloop.retrain.dataset.assemble_snapshot`.

    new: one row per prediction whose latest label (human beats rule) came after ``cutoff`` and
    at most at ``until`` (the export's time, the next run's cutoff: a label written while the
    export runs is new for the next run, not for both).
    older: the other labelled predictions plus the champion's own training rows (its reference
    rows with a true label), at most ``older_cap`` of them (a seeded, stable sample).
    """
    since = cutoff or datetime.min
    new = store.feedback.training_rows(project, since, until or datetime.max, labels)
    champion = store.versions.champion_name(project) or ""
    older = store.feedback.replay_rows(project, since, labels, champion, seed, older_cap)
    if exclude_suspected:
        from tuneloop.monitor.feedback_quality import suspected_ids

        suspects = suspected_ids(store, project, labels)
        new = new[~new["id"].isin(suspects)].reset_index(drop=True)
        older = older[~older["id"].isin(suspects)].reset_index(drop=True)
    return new, older
