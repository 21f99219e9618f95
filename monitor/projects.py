"""Projects: several monitored models (workspaces) in one server.

Every table carries a ``project`` key. The ``default`` project always exists and takes its labels
from the ``[project]`` section of the configuration, so a single-model server needs no set-up.
Any other project is created first (:func:`create_project`, ``POST /v1/projects``) with its own
label set and optional settings overrides (e.g. ``{"drift": {"window_size": 200}}``); data sent
for a project that was never created is refused (:class:`UnknownProject`).

This module is the one place that answers "which labels does project P have" and "which drift
settings apply to P": the collector, the drift runner, the imports and the API all ask here.
"""

from __future__ import annotations

import json
import math
import re
import threading
import weakref
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tuneloop.monitor.config import DriftSettings, Settings
from tuneloop.monitor.storage import DEFAULT_PROJECT, ProjectExistsError, Store, utcnow
from tuneloop.monitor.webhooks import redact_webhooks

if TYPE_CHECKING:
    from tuneloop.monitor.retraining import RetrainService

PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME_RE = re.compile(PROJECT_PATTERN)

# Sections of Settings a project may override, and the model that validates the merged result.
OVERRIDABLE: dict[str, type[DriftSettings]] = {"drift": DriftSettings}
# Keys of those sections that belong to the whole server (one scheduler, one webhook notifier).
SERVER_WIDE = {"drift": {"interval_seconds", "webhooks", "webhook_timeout_seconds", "webhook_retries"}}


class UnknownProject(LookupError):
    """Data for a project that was never created (only ``default`` exists implicitly)."""

    def __init__(self, project: str) -> None:
        self.project = project
        super().__init__(f"unknown project {project}; create it with POST /v1/projects")


class ProjectExists(ValueError):
    def __init__(self, project: str) -> None:
        self.project = project
        super().__init__(f"project {project} already exists")


@dataclass(frozen=True)
class Project:
    """One monitored model: its labels and its settings overrides (only the keys it changes)."""

    project: str
    labels: list[str]
    created_at: datetime | None
    settings: dict[str, Any] = field(default_factory=dict)
    configured: bool = False
    """True for ``default``: defined by the configuration file, not by the projects table."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# Projects never change once created, so lookups (one per ingest request) are cached per store.
_cache: weakref.WeakKeyDictionary[Store, dict[str, Project]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def _cached(store: Store) -> dict[str, Project]:
    with _cache_lock:
        found = _cache.get(store)
        if found is None:
            found = _cache[store] = {}
        return found


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid project name {name!r}: use 1-64 of A-Z a-z 0-9 . _ - , starting with a letter or digit"
        )
    return name


def validate_labels(labels: Any) -> list[str]:
    if not isinstance(labels, list | tuple) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ValueError("labels must be a list of non-empty strings")
    labels = [str(x) for x in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"labels need at least two distinct values (got {labels})")
    return labels


def validate_overrides(overrides: dict[str, Any] | None, settings: Settings | None = None) -> dict[str, Any]:
    """Check a project's settings overrides; return them unchanged. ValueError names the bad key."""
    overrides = dict(overrides or {})
    base = settings or Settings()
    for section, values in overrides.items():
        model = OVERRIDABLE.get(section)
        if model is None:
            raise ValueError(
                f"settings.{section}: a project may only override {', '.join(sorted(OVERRIDABLE))}"
            )
        if not isinstance(values, dict):
            raise ValueError(f"settings.{section} must be an object of {section} settings")
        shared = sorted(set(values) & SERVER_WIDE.get(section, set()))
        if shared:
            raise ValueError(f"settings.{section}.{shared[0]}: set for the whole server in [{section}], "
                             "not per project")
        try:
            model(**{**getattr(base, section).model_dump(), **values})
        except ValidationError as e:
            first = e.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise ValueError(f"settings.{section}.{key}: {msg}") from None
    return overrides


def _default(settings: Settings) -> Project:
    return Project(DEFAULT_PROJECT, list(settings.project.labels), None, {}, configured=True)


def _row_to_project(row: dict[str, Any]) -> Project:
    return Project(
        project=row["project"],
        labels=json.loads(row["labels"]),
        created_at=row["created_at"],
        settings=json.loads(row["settings"]) if row.get("settings") else {},
    )


def get_project(store: Store, settings: Settings, project: str) -> Project | None:
    """The project, or None when it was never created (``default`` always exists)."""
    if project == DEFAULT_PROJECT:
        return _default(settings)
    cache = _cached(store)
    hit = cache.get(project)
    if hit is not None:
        return hit
    row = store.projects.get(project)
    if row is None:
        return None
    found = _row_to_project(row)
    cache[project] = found
    return found


def require_project(store: Store, settings: Settings, project: str) -> Project:
    """The project, or :class:`UnknownProject` (the API answers 404 with its message)."""
    found = get_project(store, settings, project)
    if found is None:
        raise UnknownProject(project)
    return found


def labels_for(store: Store, settings: Settings, project: str) -> list[str]:
    """The project's label set (``default``: ``[project] labels`` of the config); UnknownProject otherwise."""
    return list(require_project(store, settings, project).labels)


def drift_settings_for(store: Store, settings: Settings, project: str) -> DriftSettings:
    """The config's drift settings with the project's overrides applied."""
    overrides = require_project(store, settings, project).settings.get("drift") or {}
    if not overrides:
        return settings.drift
    return DriftSettings(**{**settings.drift.model_dump(), **overrides})


def settings_for(store: Store, settings: Settings, project: str) -> Settings:
    """A copy of ``settings`` whose overridable sections carry the project's overrides."""
    if project == DEFAULT_PROJECT:
        return settings
    return settings.model_copy(update={"drift": drift_settings_for(store, settings, project)})


def create_project(
    store: Store,
    name: str,
    labels: list[str],
    overrides: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> Project:
    """Create a project with its label set and settings overrides; ProjectExists if it exists.

    ``default`` cannot be created: it is defined by the configuration.
    """
    validate_name(name)
    if name == DEFAULT_PROJECT:
        raise ProjectExists(name)
    labels = validate_labels(labels)
    overrides = validate_overrides(overrides, settings)
    now = utcnow()
    try:
        store.projects.create(name, labels, now, overrides)
    except ProjectExistsError:
        raise ProjectExists(name) from None
    created = Project(name, labels, now, overrides)
    _cached(store)[name] = created
    return created


def project_names(store: Store) -> list[str]:
    """``default`` plus every created project, sorted."""
    return sorted(set(store.projects.names()) | {DEFAULT_PROJECT})


def list_projects(store: Store, settings: Settings) -> list[dict[str, Any]]:
    """Every project with its labels, overrides and prediction count (from the hourly rollup)."""
    n_by = store.projects.prediction_counts()
    out = []
    for name in project_names(store):
        p = get_project(store, settings, name)
        assert p is not None
        out.append({**p.as_json(), "predictions": int(n_by.get(name, 0))})
    return out


def project_summary(store: Store, settings: Settings, project: str) -> dict[str, Any]:
    """The project with its counts: predictions, labels, embeddings still to compute, references, models."""
    p = require_project(store, settings, project)
    counts = store.projects.summary_counts(project)
    return {**p.as_json(), "counts": counts, "drift": drift_settings_for(store, settings, project).model_dump()}


def without_secrets(drift: dict[str, Any], role: str) -> dict[str, Any]:
    """Drift settings fit to show ``role``: webhook URLs (often secrets) redacted for admin, absent otherwise."""
    shown = dict(drift)
    if role == "admin":
        shown["webhooks"] = redact_webhooks(drift.get("webhooks", []))
    else:
        shown.pop("webhooks", None)
    return shown


# ---- adopting an external model ----------------------------------------------------------------


class CannotAdopt(Exception):
    """Adoption refused: the message says why and what to do (the API answers 409)."""


def labelled_baseline(store: Store, project: str, labels: list[str]) -> tuple[int, float | None]:
    """(labelled predictions, accuracy of the logged predictions on them): the external model's record."""
    return store.projects.labelled_agreement(project, labels)


def adopt(store: Store, settings: Settings, service: RetrainService, project: str, actor: str = "") -> dict[str, Any]:
    """Start training a tuneloop model for a project that so far only logged an external model.

    One retrain run "from the base" (the project has no champion) on the project's labelled
    predictions; the gate compares the new model with the external model's logged predictions on
    the same recent holdout, and a passing model becomes the champion: served at
    ``/v1/predict?project=P`` and retrained by the normal loop from then on. Returns the run id
    and the external model's labelled accuracy; follow the run at ``/v1/retrain/runs/{run_id}``.
    """
    from tuneloop.monitor import registry
    from tuneloop.monitor.retraining import RetrainError

    labels = labels_for(store, settings, project)
    champion = registry.champion(store, project)
    if champion is not None:
        raise CannotAdopt(f"project {project} already has a tuneloop model (champion {champion['version']}); "
                          "new labels retrain it (POST /v1/retrain)")
    n, accuracy = labelled_baseline(store, project, labels)
    r = settings.retrain
    need = max(math.ceil(r.min_holdout / r.holdout_fraction), r.min_holdout + 2)  # a holdout of min_holdout rows
    if n < need:
        raise CannotAdopt(f"project {project} has {n} labelled predictions; adopting needs at least {need} so that "
                          f"the gate's holdout has {r.min_holdout} rows (import labels: tuneloop feedback import)")
    try:
        run_id = service.trigger(project, "adopt: first tuneloop model from the external model's labels", actor)
    except RetrainError as e:
        raise CannotAdopt(str(e)) from None
    return {"project": project, "run_id": run_id, "labelled": n, "external_accuracy": accuracy,
            "run": f"/v1/retrain/runs/{run_id}"}
