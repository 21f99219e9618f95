"""The backend over the database file, for when no server runs (this process owns the file meanwhile).

The library raises typed errors; each method turns the ones a user can cause into one line and the
exit status the command documents. Nothing serves models here: a promotion changes the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.monitor import mlflow_tracking
from tuneloop.monitor.cli.common import fail
from tuneloop.monitor.runtime import LocalRuntime

ACTOR = "cli"


class LocalBackend:
    """Each call is one library call on the open store."""

    remote = False

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.settings = runtime.settings
        self.where = str(runtime.settings.db_path)

    def status(self, project: str) -> dict[str, Any]:
        from tuneloop.monitor.status import status_summary

        return status_summary(self.store, project)

    # -- tokens
    def create_token(self, role: str, name: str) -> str:
        from tuneloop.monitor.auth import create_token

        return create_token(self.store, role, name)

    def list_tokens(self) -> list[dict[str, Any]]:
        from tuneloop.monitor.auth import list_tokens

        return list_tokens(self.store)

    def revoke_token(self, name: str) -> int:
        from tuneloop.monitor.auth import revoke_token

        return revoke_token(self.store, name)

    # -- model versions
    def list_versions(self, project: str) -> list[dict[str, Any]]:
        from tuneloop.monitor import registry

        return registry.list_versions(self.store, project)

    def show_version(self, project: str, version: str) -> dict[str, Any]:
        from tuneloop.monitor import registry

        try:
            row = registry.get_version(self.store, project, version)
            return {**row, "promotions": registry.promotions(self.store, project, version=version)}
        except (LookupError, ValueError) as e:
            fail(str(e))

    def register_version(self, project: str, version: str) -> dict[str, Any]:
        from tuneloop.monitor import registry

        return registry.register_dir(self.store, project, self.settings.models_dir, version)

    def promotions(self, project: str) -> list[dict[str, Any]]:
        from tuneloop.monitor import registry

        return registry.promotions(self.store, project)

    def promote(self, project: str, version: str, reason: str | None, force: bool = False) -> dict[str, Any]:
        from tuneloop.monitor import registry

        try:
            row = registry.promote(self.store, project, version, actor=ACTOR, reason=reason, force=force)
        except (LookupError, ValueError) as e:
            fail(str(e))
        mlflow_tracking.champion_changed(self.settings.mlflow, project, row)
        return {"champion": row, "previous": row["previous"], "serving": None}

    def rollback(self, project: str, reason: str | None) -> dict[str, Any]:
        from tuneloop.monitor import registry

        try:
            row = registry.rollback(self.store, project, actor=ACTOR, reason=reason)
        except LookupError as e:
            fail(str(e))
        mlflow_tracking.champion_changed(self.settings.mlflow, project, row)
        return {"champion": row, "previous": row["previous"], "serving": None}

    # -- projects and imports
    def list_projects(self) -> list[dict[str, Any]]:
        from tuneloop.monitor.projects import list_projects

        return list_projects(self.store, self.settings)

    def create_project(self, name: str, labels: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.monitor.projects import ProjectExists, create_project

        try:
            return create_project(self.store, name, labels, overrides, self.settings).as_json()
        except ProjectExists as e:
            fail(str(e))
        except ValueError as e:
            fail(str(e), 2)

    def import_reference(self, project: str, df: Any) -> dict[str, Any]:
        from tuneloop.monitor.imports import import_reference

        try:
            return import_reference(self.store, self.settings, project, df).as_json()
        except (LookupError, ValueError) as e:
            fail(str(e))

    def import_feedback(self, project: str, df: Any, by: str, key_field: str | None,
                        annotator: str | None) -> dict[str, Any]:
        from tuneloop.monitor.imports import import_feedback

        try:
            return import_feedback(self.store, self.settings, project, df, by=by,  # type: ignore[arg-type]
                                   key_field=key_field, annotator=annotator or ACTOR).as_json()
        except (LookupError, ValueError) as e:
            fail(str(e))

    def adopt(self, project: str) -> dict[str, Any]:
        """Starts the run in this process: :meth:`wait_run` must follow (the run needs this process to finish)."""
        from tuneloop.monitor.projects import CannotAdopt, adopt

        try:
            return adopt(self.store, self.settings, self.runtime.retrain, project, actor=ACTOR)
        except (CannotAdopt, LookupError) as e:
            fail(str(e))

    # -- retraining
    def start_retrain(self, project: str, reason: str, now: bool) -> int:
        from tuneloop.monitor.retraining import RetrainError

        self.runtime.retrain.recover()
        try:
            return self.runtime.retrain.trigger(project, reason, ACTOR, respect_cooldown=not now)
        except RetrainError as e:
            fail(str(e))

    def get_run(self, run_id: int) -> dict[str, Any]:
        return self.runtime.retrain.get_run(run_id, log_lines=0)

    def wait_run(self, run_id: int) -> dict[str, Any]:
        return self.runtime.retrain.wait(run_id, timeout=self.settings.retrain.timeout_seconds + 60)

    def list_runs(self, project: str, limit: int) -> list[dict[str, Any]]:
        return self.runtime.retrain.list_runs(project, limit)

    # -- operations
    def backup(self, dest: Path, models: bool) -> dict[str, Any]:
        from tuneloop.monitor.operations import backup

        return backup(self.store, dest, models_dir=self.settings.models_dir if models else None).as_json()

    def run_retention(self, raw_days: int) -> dict[str, Any]:
        from tuneloop.monitor.operations import run_retention

        hours = self.settings.retention.pending_feedback_hours
        return run_retention(self.store, raw_days, pending_hours=hours).as_json()

    # -- drift checks and alerts
    def run_checks(self, project: str) -> dict[str, Any]:
        from tuneloop.monitor.checks import NotEnoughData, run_drift_checks

        try:
            return run_drift_checks(self.store, self.settings, project).as_json()
        except NotEnoughData as e:
            fail(str(e), 2)

    def list_alerts(self, project: str, status: str | None) -> list[dict[str, Any]]:
        from tuneloop.monitor.alerts import list_alerts

        return list_alerts(self.store, project, status)

    def ack_alert(self, alert_id: int) -> dict[str, Any]:
        from tuneloop.monitor.alerts import ack_alert

        alert = ack_alert(self.store, alert_id, ACTOR)
        if alert is None:
            fail(f"no alert {alert_id}")
        return alert
