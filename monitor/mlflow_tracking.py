"""Versions and promotions mirrored to an MLflow tracking store (``mlflow.tracking_uri``, extra ``mlflow``).

tuneloop's own registry stays the source of truth. MLflow gets a copy that a team can browse beside its
other models: each version a retrain registers becomes one MLflow run in ``mlflow.experiment`` (the
model settings as params, the numeric validation metrics and the gate's gain with its interval as
metrics, the gate decision as tags and ``gate.json``, the LoRA adapter, head and label map as
artifacts) and one version of the registered model ``tuneloop-<project>``; the champion carries the
``champion`` alias, moved on every promotion and rollback.

Reaching MLflow is best effort: a failure is logged and returned as ``{"error": "..."}`` (the retrain
run records it under ``mlflow``), never raised, so no retrain or promotion fails because of it. HTTP
stores are asked with one retry and a 10 s timeout unless ``MLFLOW_HTTP_REQUEST_*`` say otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tuneloop.monitor.config import MlflowSettings

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
VERSION_TAG = "tuneloop.version"
PROJECT_TAG = "tuneloop.project"
ARTIFACT_PATH = "version"
ARTIFACT_FILES = ("labels.json", "training_config.json", "metrics.json", "manifest.json", "head.safetensors")
"""What a version's run carries: the adapter directory and these files (not the row ids nor the reference
rows, which hold training texts and can be large)."""
MAX_TAG_CHARS = 5000


def model_name(project: str) -> str:
    """The MLflow registered model of a project's versions."""
    return f"tuneloop-{project}"


def _client(settings: MlflowSettings) -> MlflowClient:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _best_effort(what: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return action()
    except Exception as e:  # any failure of the store, the network or the package: report, never raise
        message = f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        log.warning("MLflow tracking failed (the registry is unchanged): %s", message)
        return {"error": message}


def _numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v}


def _params(config: dict[str, Any]) -> dict[str, str]:
    params = {f"model.{k}": v for k, v in (config.get("settings") or {}).items()}
    params.update({f"lora.{k}": v for k, v in (config.get("lora") or {}).items()})
    params.update({k: config.get(k) for k in ("base", "base_model_type", "pooling", "parent")})
    return {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in params.items() if v is not None}


def _find_version(client: MlflowClient, project: str, version: str) -> Any | None:
    found = client.search_model_versions(f"name = '{model_name(project)}' and tags.`{VERSION_TAG}` = '{version}'")
    return max(found, key=lambda mv: int(mv.version)) if found else None


def _log_version(client: MlflowClient, settings: MlflowSettings, project: str, row: dict[str, Any],
                 decision: dict[str, Any] | None) -> dict[str, Any]:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    version, path = row["version"], Path(row["path"])
    config = json.loads((path / "training_config.json").read_text(encoding="utf-8"))
    experiment = client.get_experiment_by_name(settings.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        settings.experiment, artifact_location=settings.artifact_location or None)
    tags = {PROJECT_TAG: project, VERSION_TAG: version}
    metrics = _numbers(row.get("metrics") or {})
    if decision is not None:
        tags.update({"gate.decision": "promote" if decision.get("promote") else "reject",
                     "gate.headline": str(decision.get("headline") or decision.get("summary") or "")[:MAX_TAG_CHARS]})
        metrics.update(_numbers(decision.get("stats") or {}, "gate."))
    run = client.create_run(experiment_id, run_name=f"{project}/{version}", tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     params=[Param(k, v[:6000]) for k, v in _params(config).items()],
                     tags=[RunTag("mlflow.note.content", f"tuneloop version {version} of project {project}")])
    for name in ARTIFACT_FILES:
        if (path / name).is_file():
            client.log_artifact(run_id, str(path / name), ARTIFACT_PATH)
    client.log_artifacts(run_id, str(path / "adapter"), f"{ARTIFACT_PATH}/adapter")
    if decision is not None:
        client.log_dict(run_id, decision, "gate.json")
    client.set_terminated(run_id)
    name = model_name(project)
    try:
        client.create_registered_model(name, description=f"tuneloop versions of project {project}")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/{ARTIFACT_PATH}", run_id,
                                     tags={VERSION_TAG: version, PROJECT_TAG: project})
    return {"run_id": run_id, "model": name, "model_version": int(mv.version)}


def record_version(settings: MlflowSettings, project: str, row: dict[str, Any],
                   decision: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Log a registered version (its registry row) as an MLflow run and model version; None when off.

    ``decision`` is the gate's decision (``Decision.as_json()``). Returns ``run_id``, ``model`` and
    ``model_version``, or ``{"error": ...}``.
    """
    if not settings.tracking_uri:
        return None
    return _best_effort(f"logging version {row['version']}",
                        lambda: _log_version(_client(settings), settings, project, row, decision))


def _set_champion(settings: MlflowSettings, project: str, row: dict[str, Any]) -> dict[str, Any]:
    client = _client(settings)
    mv = _find_version(client, project, row["version"])
    logged = None
    if mv is None:  # registered by hand or before tracking was on: log it now
        logged = _log_version(client, settings, project, row, None)
        number = logged["model_version"]
    else:
        number = int(mv.version)
    client.set_registered_model_alias(model_name(project), CHAMPION_ALIAS, str(number))
    return {"model": model_name(project), "alias": CHAMPION_ALIAS, "model_version": number,
            **({"run_id": logged["run_id"]} if logged else {})}


def record_champion(settings: MlflowSettings, project: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """Point the ``champion`` alias at the MLflow version of the new champion (``row``); None when off."""
    if not settings.tracking_uri:
        return None
    return _best_effort(f"setting the champion alias to {row['version']}",
                        lambda: _set_champion(settings, project, row))


def champion_changed(settings: MlflowSettings, project: str, result: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`record_champion` after a promotion or rollback that changed the champion (``result["changed"]``)."""
    if not result.get("changed", True):
        return None
    return record_champion(settings, project, result)
