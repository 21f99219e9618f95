"""Drift checks and alerts over HTTP."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import HTMLResponse

from tuneloop.monitor.alerts import ack_alert, list_alerts
from tuneloop.monitor.api.deps import DEFAULT, Admin, Labeller, ProjectQuery, RuntimeDep, TimeQuery
from tuneloop.monitor.checks import NotEnoughData

router = APIRouter(prefix="/v1", tags=["drift"])


@router.post("/checks", summary="Run the drift checks now")
def run_checks_now(_: Admin, rt: RuntimeDep, project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    try:
        run = rt.drift.run(project)
    except NotEnoughData as e:
        raise HTTPException(409, str(e)) from None
    return run.as_json()


@router.get("/checks", summary="Recent drift check results, newest first")
def recent_checks(
    _: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT,
    metric: str | None = None, limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    since: Annotated[TimeQuery | None, Query(description="Only checks from this time on (UTC when no offset)")] = None,
) -> dict[str, Any]:
    return {"items": rt.store.checks.recent(project, limit, metric, since)}


@router.get("/checks/{check_id}/report", response_class=HTMLResponse, summary="The check's Evidently HTML report")
def check_report(_: Labeller, rt: RuntimeDep, check_id: Annotated[int, Path(ge=0, le=2**63 - 1)]) -> HTMLResponse:
    report = rt.store.checks.report_path(check_id)
    if report is None:
        raise HTTPException(404, f"no report for check {check_id}")
    root = rt.settings.reports_dir.resolve()
    path = (root / report).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(404, f"report of check {check_id} is missing")
    return HTMLResponse(path.read_text(encoding="utf-8"))


@router.get("/alerts", summary="Alerts, newest first")
def get_alerts(
    _: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT,
    status: Literal["open", "closed"] | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    return {"items": list_alerts(rt.store, project, status, limit)}


@router.post("/alerts/{alert_id}/ack", summary="Acknowledge an alert")
def acknowledge(
    principal: Labeller, rt: RuntimeDep, alert_id: Annotated[int, Path(ge=0, le=2**63 - 1)]
) -> dict[str, Any]:
    alert = ack_alert(rt.store, alert_id, principal.name)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return {k: (None if v is None or v != v else v) for k, v in alert.items()}  # NaN and NaT -> null
