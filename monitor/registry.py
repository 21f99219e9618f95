"""The model registry: the one place that changes ``model_versions`` (and its ``promotions`` history).

A version is a directory under ``models_dir`` (see :mod:`tuneloop.retrain.versions`); the registry
records it per project with a status — ``challenger`` (registered, not serving), ``champion``
(serving; at most one per project), ``archived`` (a former champion) or ``rejected`` (failed the
gate; promotable only with ``force``). Every change of champion is one transaction that also
appends a ``promotions`` row, so :func:`rollback` can walk back through earlier champions like an
undo stack. Serving is swapped by :func:`tuneloop.monitor.serving.activate`, which calls this module.

This module also writes a version's *reference rows* (its training and validation data as the model
saw it: predicted label, confidence, probabilities, embedding, split), the default reference of the
drift checks; their model-output checks use the rows the model was not trained on only: validation
and holdout rows, plus earlier traffic it re-scored after its promotion (:func:`add_reference_rows`,
called by :mod:`tuneloop.monitor.rescore`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tuneloop.monitor.storage import Store, is_missing, utcnow
from tuneloop.retrain.reference import REFERENCE_FILE, REFERENCE_MAX_ROWS, reference_sample
from tuneloop.retrain.versions import METRICS_FILE, is_complete, validate_version_name

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

STATUSES = ("champion", "challenger", "archived", "rejected")



class VersionNotFound(LookupError):
    """No such version registered for the project."""


class NothingToRollBack(LookupError):
    """The promotion history holds no earlier champion to go back to."""


class VersionConflict(ValueError):
    """The version name is already registered with another directory."""


class PromotionRefused(ValueError):
    """A transition the registry does not allow (promote a rejected version, reject the champion)."""


# -- reading -----------------------------------------------------------------------------------------


def _require(store: Store, project: str, version: str, tx: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any]:
    row = store.versions.get(project, version, tx)
    if row is None:
        raise VersionNotFound(f"no version {version!r} registered for project {project!r}")
    return row


def list_versions(store: Store, project: str) -> list[dict[str, Any]]:
    """Every registered version of ``project``, oldest first, with status, metrics and reasons."""
    return store.versions.list(project)


def get_version(store: Store, project: str, version: str) -> dict[str, Any]:
    """One version's row; :class:`VersionNotFound` (a LookupError) when it is not registered."""
    validate_version_name(version)
    return _require(store, project, version)


def used_holdout_ids(store: Store, project: str) -> set[str]:
    """Prediction ids some gate decision of ``project`` already tested on (never a holdout again)."""
    return store.versions.used_holdout_ids(project)


def champion(store: Store, project: str) -> dict[str, Any] | None:
    """The serving version of ``project``, or None before the first promotion."""
    return store.versions.champion(project)


def promotions(store: Store, project: str, version: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Champion changes of ``project`` (those to or from ``version`` if given), newest first:
    version, ts, actor, reason, kind (promote | rollback), previous."""
    return store.versions.promotions(project, version, limit)


# -- transitions -------------------------------------------------------------------------------------


def register_version(store: Store, project: str, version: str, path: str | Path, status: str = "challenger",
                     metrics: dict[str, Any] | None = None, parent: str | None = None,
                     data_snapshot: str | None = None) -> dict[str, Any]:
    """Record a written version directory. Registering the same name and path again is a no-op.

    A new version cannot start as champion: promote it (one transaction, with history).
    """
    validate_version_name(version)
    if parent is not None:
        validate_version_name(parent)
    if status not in STATUSES or status == "champion":
        raise ValueError(f"status {status!r}: register as challenger, archived or rejected, then promote")
    path = str(Path(path).resolve())
    with store.transaction() as cur:
        existing = store.versions.get(project, version, cur)
        if existing is not None:
            if existing["path"] == path:
                return existing
            raise VersionConflict(f"version {version!r} of project {project!r} is already registered "
                                  f"at {existing['path']}")
        store.versions.insert(cur, project, version, path, status, metrics, parent, data_snapshot)
        return _require(store, project, version, cur)


def _promote_in(store: Store, cur: duckdb.DuckDBPyConnection, project: str, version: str, actor: str,
                reason: str | None, kind: str, force: bool) -> dict[str, Any]:
    row = _require(store, project, version, cur)
    if row["status"] == "champion":
        return {**row, "previous": None, "changed": False}
    check_promotable(row, force)
    old = store.versions.champion(project, cur)
    previous = old["version"] if old else None
    now = utcnow()
    store.versions.make_champion(cur, project, version, now)
    store.versions.add_promotion(cur, project, version, now, actor, reason, kind, previous)
    return {**_require(store, project, version, cur), "previous": previous, "changed": True}


def check_promotable(row: dict[str, Any], force: bool = False) -> None:
    """Raise :class:`PromotionRefused` for a rejected version unless ``force``."""
    if row["status"] == "rejected" and not force:
        reasons = "; ".join(map(str, row.get("reasons") or [])) or "no reasons recorded"
        raise PromotionRefused(f"version {row['version']!r} was rejected ({reasons}); promote it with force "
                               "to override")


def promote(store: Store, project: str, version: str, actor: str, reason: str | None = None,
            force: bool = False) -> dict[str, Any]:
    """Make ``version`` the champion: the old champion becomes archived, a promotions row is added.

    Returns the new champion's row plus ``previous`` (the former champion) and ``changed``
    (False when it already was the champion: nothing is written). Unknown version:
    :class:`VersionNotFound`; a rejected one without ``force``: :class:`PromotionRefused`.
    """
    validate_version_name(version)
    with store.transaction() as cur:
        return _promote_in(store, cur, project, version, actor, reason, "promote", force)


def _champion_stack(store: Store, cur: duckdb.DuckDBPyConnection | None, project: str) -> list[str]:
    """Replay the history: a promotion pushes, a rollback to V truncates after V's last entry."""
    stack: list[str] = []
    for v, kind in store.versions.promotion_kinds(project, cur):
        if kind == "rollback" and v in stack:
            del stack[len(stack) - stack[::-1].index(v):]
        elif not stack or stack[-1] != v:
            stack.append(v)
    return stack


def _rollback_target(store: Store, cur: duckdb.DuckDBPyConnection | None, project: str) -> str:
    status = store.versions.statuses(project, cur)
    current = next((v for v, s in status.items() if s == "champion"), None)
    stack = _champion_stack(store, cur, project)
    while stack and (stack[-1] == current or status.get(stack[-1]) in (None, "rejected")):
        stack.pop()
    if not stack:
        now = f"the champion is {current!r}" if current else "there is no champion"
        raise NothingToRollBack(f"nothing to roll back to for project {project!r}: {now} and the promotion "
                                "history holds no earlier champion")
    return stack[-1]


def rollback_target(store: Store, project: str) -> str:
    """The version :func:`rollback` would promote now (no write); :class:`NothingToRollBack` if none."""
    return _rollback_target(store, None, project)


def rollback(store: Store, project: str, actor: str, reason: str | None = None) -> dict[str, Any]:
    """Re-promote the champion that preceded the current one (an undo of the last promotion).

    Repeated rollbacks keep walking back; rejected or unregistered versions are skipped.
    """
    with store.transaction() as cur:
        target = _rollback_target(store, cur, project)
        current = store.versions.champion(project, cur)
        why = reason or (f"rollback from {current['version']}" if current else "rollback")
        return _promote_in(store, cur, project, target, actor, why, "rollback", force=False)


def reject(store: Store, project: str, version: str, reasons: Sequence[str] | str) -> dict[str, Any]:
    """Mark a version rejected with the gate's reasons (the champion cannot be rejected)."""
    validate_version_name(version)
    reasons = [reasons] if isinstance(reasons, str) else [str(r) for r in reasons]
    with store.transaction() as cur:
        row = _require(store, project, version, cur)
        if row["status"] == "champion":
            raise PromotionRefused(f"version {version!r} is the champion of project {project!r}; promote another "
                                   "version or roll back before rejecting it")
        store.versions.reject(cur, project, version, reasons)
        return _require(store, project, version, cur)


# -- reference rows ----------------------------------------------------------------------------------


def _json_cell(value: Any) -> str | None:
    if is_missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value)


def load_reference(store: Store, project: str, version: str, frame: pd.DataFrame) -> int:
    """Replace the reference rows of ``version`` (``reference_rows.reference = version``) with ``frame``.

    ``frame`` has ``text`` and optionally ``label`` (predicted), ``true_label``, ``confidence``,
    ``probs`` (dict or JSON text), ``embedding`` (array-like) and ``split``. Returns the rows written.
    """
    validate_version_name(version)
    if "text" not in frame.columns:
        raise ValueError(f"reference frame lacks column 'text' (found {list(frame.columns)})")
    n = len(frame)

    def col(name: str) -> pd.Series:
        return frame[name] if name in frame.columns else pd.Series([None] * n, index=frame.index, dtype=object)

    def strings(name: str) -> pa.Array:
        return pa.array([None if is_missing(v) else str(v) for v in col(name)],
                        pa.string())

    embeddings = [None if is_missing(v) else np.asarray(v, np.float32)
                  for v in col("embedding")]
    table = pa.table({
        "project": pa.array([project] * n, pa.string()),
        "reference": pa.array([version] * n, pa.string()),
        "text": pa.array(frame["text"].astype(str).tolist(), pa.string()),
        "label": strings("label"),
        "true_label": strings("true_label"),
        "confidence": pa.array(pd.to_numeric(col("confidence"), errors="coerce").astype("float64"), pa.float64()),
        "probs": pa.array([_json_cell(v) for v in col("probs")], pa.string()),
        "embedding": pa.array(embeddings, pa.list_(pa.float32())),
        "split": strings("split"),
    })
    store.references.replace(project, version, table)
    return n


def add_reference_rows(store: Store, project: str, version: str, frame: pd.DataFrame,
                       max_rows: int = REFERENCE_MAX_ROWS) -> int:
    """Append ``frame`` (the :func:`load_reference` layout) to the reference rows of ``version``.

    The rows are rewritten in one transaction, existing ones first (the checks read row order as
    time order). Above ``max_rows`` training rows are dropped first, since the model-output checks
    never use them. Returns the rows the reference holds now.
    """
    rows = pd.concat([store.references.rows(project, version), frame], ignore_index=True)
    if len(rows) > max_rows:
        rows = rows.iloc[reference_sample(rows["split"], max_rows)].reset_index(drop=True)
    return load_reference(store, project, version, rows)


def register_dir(store: Store, project: str, models_dir: str | Path, version: str, status: str = "challenger",
                 parent: str | None = None, data_snapshot: str | None = None) -> dict[str, Any]:
    """Register the complete version directory ``models_dir/version`` and load its reference rows.

    Metrics come from its ``metrics.json``, the parent (unless given) from ``training_config.json``,
    the reference rows from ``reference.parquet`` when present. The path must stay inside
    ``models_dir``. Returns the registry row plus ``reference_rows`` (rows loaded).
    """
    validate_version_name(version)
    root = Path(models_dir).resolve()
    path = (root / version).resolve()
    if not path.is_relative_to(root) or path.parent != root:
        raise ValueError(f"version {version!r} resolves outside {root}")
    if not is_complete(path):
        raise FileNotFoundError(f"no complete model version {version!r} in {root}")
    metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
    if parent is None:
        config = path / "training_config.json"
        if config.is_file():
            parent = json.loads(config.read_text(encoding="utf-8")).get("parent")
    row = register_version(store, project, version, path, status=status, metrics=metrics, parent=parent,
                           data_snapshot=data_snapshot)
    n = 0
    if (path / REFERENCE_FILE).is_file():
        n = load_reference(store, project, version, pd.read_parquet(path / REFERENCE_FILE))
    return {**row, "reference_rows": n}
