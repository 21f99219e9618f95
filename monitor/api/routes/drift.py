"""Drift checks and alerts over HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import HTMLResponse

from tuneloop.monitor.alerts import ack_alert, list_alerts
from tuneloop.monitor.app import STARTUP_HOOKS, Context
from tuneloop.monitor.checks import DriftService, NotEnoughData
from tuneloop.monitor.deps import DEFAULT, Admin, Labeller, ProjectQuery, get_ctx

router = APIRouter(prefix="/v1", tags=["drift"])
CtxDep = Annotated[Context, Depends(get_ctx)]


def _start(ctx: Context):  # type: ignore[no-untyped-def]
    service = DriftService(ctx.store, ctx.settings)
    ctx.services["drift"] = service
    ctx.services["scheduler"].every("drift-checks", ctx.settings.drift.interval_seconds, service.run_all)
    return service.stop


STARTUP_HOOKS.append(_start)


@router.post("/checks", summary="Run the drift checks now")
def run_checks_now(_: Admin, ctx: CtxDep, project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    try:
        run = ctx.services["drift"].run(project)
    except NotEnoughData as e:
        raise HTTPException(409, str(e)) from None
    return run.as_json()


@router.get("/checks", summary="Recent drift check results, newest first")
def recent_checks(
    _: Labeller, ctx: CtxDep, project: ProjectQuery = DEFAULT,
    metric: str | None = None, limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    since: Annotated[datetime | None, Query(description="Only checks from this time on (UTC when no offset)")] = None,
) -> dict[str, Any]:
    sql = "SELECT * FROM drift_checks WHERE project = ?"
    params: list[Any] = [project]
    if metric:
        sql += " AND metric = ?"
        params.append(metric)
    if since is not None:
        sql += " AND ts >= ?"
        params.append(since.astimezone(UTC).replace(tzinfo=None) if since.tzinfo else since)
    df = ctx.store.query(sql + " ORDER BY ts DESC, metric LIMIT ?", [*params, limit])
    items = []
    for r in df.to_dict("records"):
        r["details"] = json.loads(r["details"]) if r["details"] else {}
        r["has_report"] = bool(r.pop("report_path"))
        items.append({k: (None if v is None or v != v else v) for k, v in r.items()})  # NaN and NaT -> null
    return {"items": items}


@router.get("/checks/{check_id}/report", response_class=HTMLResponse, summary="The check's Evidently HTML report")
def check_report(_: Labeller, ctx: CtxDep, check_id: Annotated[int, Path(ge=0, le=2**63 - 1)]) -> HTMLResponse:
    df = ctx.store.query("SELECT report_path FROM drift_checks WHERE id = ? AND report_path IS NOT NULL LIMIT 1",
                         [check_id])
    if df.empty:
        raise HTTPException(404, f"no report for check {check_id}")
    root = ctx.settings.reports_dir.resolve()
    path = (root / df["report_path"][0]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(404, f"report of check {check_id} is missing")
    return HTMLResponse(path.read_text(encoding="utf-8"))


@router.get("/alerts", summary="Alerts, newest first")
def get_alerts(
    _: Labeller, ctx: CtxDep, project: ProjectQuery = DEFAULT,
    status: Literal["open", "closed"] | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    return {"items": list_alerts(ctx.store, project, status, limit)}


@router.post("/alerts/{alert_id}/ack", summary="Acknowledge an alert")
def acknowledge(principal: Labeller, ctx: CtxDep, alert_id: Annotated[int, Path(ge=0, le=2**63 - 1)]) -> dict[str, Any]:
    alert = ack_alert(ctx.store, alert_id, principal.name)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return {k: (None if v is None or v != v else v) for k, v in alert.items()}  # NaN and NaT -> null
