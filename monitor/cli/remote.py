"""The backend over a running server's HTTP API (token from ``TUNELOOP_TOKEN`` or ``dashboard.token``)."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tuneloop.monitor.cli.common import fail
from tuneloop.monitor.config import Settings

FEEDBACK_CHUNK = 10_000
RUN_ACTIVE = ("queued", "running")


class RemoteBackend:
    """Every call is one request to the server; a 4xx/5xx answer exits with the server's message."""

    remote = True

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.where = settings.server_url

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.client.request(method, path, **kwargs)
        if r.status_code < 400:
            return r.json()
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text
        if r.status_code in (401, 403):
            fail(f"the running server at {self.client.base_url} refused ({r.status_code}): {detail} "
                 "(set TUNELOOP_TOKEN to a token with the needed role)")
        fail(f"server at {self.client.base_url} answered {r.status_code}: {detail}")

    def status(self, project: str) -> dict[str, Any]:
        return self.call("GET", "/v1/status", params={"project": project})

    # -- tokens
    def create_token(self, role: str, name: str) -> str:
        return self.call("POST", "/v1/tokens", json={"role": role, "name": name})["token"]

    def list_tokens(self) -> list[dict[str, Any]]:
        return self.call("GET", "/v1/tokens")

    def revoke_token(self, name: str) -> int:
        return self.call("DELETE", f"/v1/tokens/{quote(name, safe='')}")["revoked"]

    # -- model versions
    def list_versions(self, project: str) -> list[dict[str, Any]]:
        return self.call("GET", "/v1/models", params={"project": project})["items"]

    def show_version(self, project: str, version: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/models/{version}", params={"project": project})

    def register_version(self, project: str, version: str) -> dict[str, Any]:
        return self.call("POST", f"/v1/models/{version}/register", params={"project": project})

    def promotions(self, project: str) -> list[dict[str, Any]]:
        return self.call("GET", "/v1/models", params={"project": project})["promotions"]

    def promote(self, project: str, version: str, reason: str | None, force: bool = False) -> dict[str, Any]:
        return self.call("POST", f"/v1/models/{version}/promote", params={"project": project},
                         json={"reason": reason, "force": force})

    def rollback(self, project: str, reason: str | None) -> dict[str, Any]:
        return self.call("POST", "/v1/models/rollback", params={"project": project}, json={"reason": reason})

    # -- projects and imports
    def list_projects(self) -> list[dict[str, Any]]:
        return self.call("GET", "/v1/projects")["items"]

    def create_project(self, name: str, labels: list[str], overrides: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/v1/projects", json={"project": name, "labels": labels, "settings": overrides})

    def import_reference(self, project: str, df: Any) -> dict[str, Any]:
        keep = ("text", "prediction", "label", "probabilities", "confidence", "embedding")
        return self.call("POST", "/v1/reference/import", timeout=600, json={
            "project": project, "records": records(df, {"probs": "probabilities"}, keep)})

    def import_feedback(self, project: str, df: Any, by: str, key_field: str | None,
                        annotator: str | None) -> dict[str, Any]:
        rename = {"id": "prediction_id"} if by == "id" else {key_field: "key"}
        rows = records(df, rename, ("prediction_id", "key", "label", "ts", "annotator"))
        return merge_reports([self.call("POST", "/v1/feedback/import", timeout=600, json={
            "project": project, "by": by, "key_field": key_field, "annotator": annotator,
            "records": rows[i:i + FEEDBACK_CHUNK]}) for i in range(0, len(rows), FEEDBACK_CHUNK)])

    def adopt(self, project: str) -> dict[str, Any]:
        return self.call("POST", f"/v1/projects/{project}/adopt")

    # -- retraining
    def start_retrain(self, project: str, reason: str, now: bool) -> int:
        return self.call("POST", "/v1/retrain", params={"project": project}, json={"reason": reason, "now": now})[
            "run_id"]

    def get_run(self, run_id: int) -> dict[str, Any]:
        return self.call("GET", f"/v1/retrain/runs/{run_id}")

    def wait_run(self, run_id: int) -> dict[str, Any]:
        while (run := self.get_run(run_id))["status"] in RUN_ACTIVE:
            time.sleep(1.0)
        return run

    def list_runs(self, project: str, limit: int) -> list[dict[str, Any]]:
        return self.call("GET", "/v1/retrain/runs", params={"project": project, "limit": limit})["items"]

    # -- operations
    def backup(self, dest: Path, models: bool) -> dict[str, Any]:
        """The server writes the backup under its data directory; it is moved to ``dest`` when reachable."""
        out = self.call("POST", "/v1/admin/backup", json={"include_models": models}, timeout=3600)
        made = Path(out["path"])
        if made != dest:
            if not made.is_dir():
                fail(f"the server wrote the backup to {made}, which is not reachable from here; copy it from there")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(made), str(dest))
        return out

    def run_retention(self, raw_days: int) -> dict[str, Any]:
        return self.call("POST", "/v1/admin/retention", json={"raw_days": raw_days}, timeout=3600)

    # -- drift checks and alerts
    def run_checks(self, project: str) -> dict[str, Any]:
        return self.call("POST", "/v1/checks", params={"project": project})

    def list_alerts(self, project: str, status: str | None) -> list[dict[str, Any]]:
        params = {"project": project, **({"status": status} if status else {})}
        return self.call("GET", "/v1/alerts", params=params)["items"]

    def ack_alert(self, alert_id: int) -> dict[str, Any]:
        return self.call("POST", f"/v1/alerts/{alert_id}/ack")


def plain(v: Any) -> Any:
    """A DataFrame cell as JSON: NaN/NaT -> None, JSON text of objects/lists parsed, timestamps as ISO."""
    import pandas as pd

    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v.tolist() if hasattr(v, "tolist") else v


def records(df: Any, rename: dict[str, str], keep: tuple[str, ...]) -> list[dict[str, Any]]:
    """The frame's ``keep`` columns (after ``rename``) as JSON records for an import request."""
    df = df.rename(columns=rename)
    cols = [c for c in keep if c in df.columns]
    return [{c: plain(v) for c, v in zip(cols, row, strict=True)} for row in df[cols].itertuples(index=False)]


def merge_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One import report from the reports of its chunks (accuracy weighted by matched rows)."""
    out: dict[str, Any] = {k: sum(p[k] for p in parts) for k in
                           ("rows", "matched", "accepted", "duplicates", "unmatched", "ambiguous")}
    out["unmatched_examples"] = [x for p in parts for x in p["unmatched_examples"]][:10]
    scored = [(p["accuracy"], p["matched"]) for p in parts if p.get("accuracy") is not None]
    n = sum(m for _, m in scored)
    out["accuracy"] = sum(a * m for a, m in scored) / n if n else None
    return out
