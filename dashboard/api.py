"""The dashboard's only way to the data: a small HTTP client for the tuneloop server.

Every failure becomes an :class:`ApiError` with a ``kind`` the UI can explain in one line
(server unreachable, token missing or lacking a role, ...), never a traceback. Each call's
duration is recorded in :attr:`Api.timings`, which the benchmark reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

ROLES = ("ingest", "label", "admin")
ROLE_RANK = {r: i for i, r in enumerate(ROLES)}


class ApiError(Exception):
    """A failed call. ``kind``: unreachable | unauthorized | forbidden | not_found | conflict | invalid | server."""

    def __init__(self, kind: str, message: str, status: int | None = None, path: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.path = path

    def __str__(self) -> str:
        return self.message


def _kind(status: int) -> str:
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
            422: "invalid"}.get(status, "server" if status >= 500 else "invalid")


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(detail, list):  # FastAPI validation errors: name the field
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail)
    return str(detail)


@dataclass
class Call:
    method: str
    path: str
    seconds: float
    status: int | None


@dataclass
class Api:
    """Thin client over the server's HTTP API (``/v1/...``) for one project."""

    base_url: str
    token: str = ""
    project: str = "default"
    timeout: float = 15.0
    timings: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._client = httpx.Client(base_url=self.base_url.rstrip("/"), headers=headers, timeout=self.timeout)

    def close(self) -> None:
        self._client.close()

    # -- plumbing ---------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None, project: bool = True, timeout: float | None = None,
                content: bytes | None = None) -> httpx.Response:
        """One call; raises ApiError on transport failure or a non-2xx answer."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if project:
            query.setdefault("project", self.project)
        t0 = time.perf_counter()
        status = None
        try:
            response = self._client.request(method, path, params=query, json=json, content=content,
                                            timeout=timeout or self.timeout)
            status = response.status_code
        except httpx.TimeoutException:
            raise ApiError("unreachable", f"the server at {self.base_url} did not answer {method} {path} "
                           f"within {timeout or self.timeout:g} s", path=path) from None
        except httpx.HTTPError as e:
            raise ApiError("unreachable", f"cannot reach the tuneloop server at {self.base_url} "
                           f"({type(e).__name__})", path=path) from None
        finally:
            self.timings.append(Call(method, path, time.perf_counter() - t0, status))
        if response.status_code >= 400:
            raise ApiError(_kind(response.status_code), _detail(response), response.status_code, path)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, json: Any = None, **params: Any) -> Any:
        r = self.request("POST", path, params=params, json=json)
        return r.json() if r.content else {}

    # -- identity ---------------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        """``{name, role}`` of the token (``GET /v1/whoami``)."""
        return self.request("GET", "/v1/whoami", project=False).json()

    # -- reads ------------------------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        """``{champion, serving, items: [versions with status, metrics, promoted_at, reasons]}``."""
        return self.get("/v1/models")

    def stats(self, bucket: str = "hour", since: datetime | None = None) -> dict[str, Any]:
        return self.get("/v1/stats", bucket=bucket, since=since.isoformat() if since else None)

    def checks(self, limit: int = 500, metric: str | None = None,
               since: datetime | None = None) -> list[dict[str, Any]]:
        return self.get("/v1/checks", limit=limit, metric=metric, since=since.isoformat() if since else None)["items"]

    def check_report(self, check_id: int) -> str:
        return self.request("GET", f"/v1/checks/{check_id}/report", project=False).text

    def alerts(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return self.get("/v1/alerts", status=status, limit=limit)["items"]

    def label_queue(self, strategy: str | None = None, limit: int = 20) -> dict[str, Any]:
        return self.get("/v1/label-queue", strategy=strategy, limit=limit)

    def predictions(self, **filters: Any) -> dict[str, Any]:
        return self.get("/v1/predictions", **filters)

    def retrain_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.get("/v1/retrain/runs", limit=limit)["items"]

    def retrain_run(self, run_id: int) -> dict[str, Any]:
        return self.get(f"/v1/retrain/runs/{run_id}")

    # -- writes -----------------------------------------------------------------------------------
    def send_feedback(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return self.post("/v1/feedback", {"records": records, "project": self.project})

    def retract_feedback(self, feedback_id: str) -> dict[str, Any]:
        r = self.request("DELETE", f"/v1/feedback/{feedback_id}")
        return r.json() if r.content else {}

    def ack_alert(self, alert_id: int) -> dict[str, Any]:
        return self.post(f"/v1/alerts/{alert_id}/ack")

    def run_checks(self) -> dict[str, Any]:
        return self.request("POST", "/v1/checks", params={}, timeout=max(self.timeout, 120)).json()

    def retrain(self, reason: str | None = None) -> dict[str, Any]:
        return self.post("/v1/retrain", {"project": self.project, **({"reason": reason} if reason else {})})

    def cancel_run(self, run_id: int) -> dict[str, Any]:
        return self.post(f"/v1/retrain/runs/{run_id}/cancel")

    def promote(self, version: str, reason: str | None = None) -> dict[str, Any]:
        return self.post(f"/v1/models/{version}/promote", {"project": self.project,
                                                           **({"reason": reason} if reason else {})})

    def rollback(self, reason: str | None = None) -> dict[str, Any]:
        """Re-promote the previous champion."""
        return self.post("/v1/models/rollback", {"project": self.project, **({"reason": reason} if reason else {})})

    # -- a new model from a file ---------------------------------------------------------------------
    def preview_dataset(self, data: bytes, filename: str) -> dict[str, Any]:
        return self.request("POST", "/v1/datasets/preview", params={"filename": filename}, content=data,
                            project=False, timeout=max(self.timeout, 120)).json()

    def upload_dataset(self, data: bytes, filename: str, **params: Any) -> dict[str, Any]:
        return self.request("POST", "/v1/datasets", params={"filename": filename, **params}, content=data,
                            project=False, timeout=max(self.timeout, 120)).json()

    def dataset_quality(self, dataset_id: str, version: int | None = None) -> dict[str, Any]:
        return self.request("GET", f"/v1/datasets/{dataset_id}/quality", params={"version": version},
                            project=False, timeout=max(self.timeout, 600)).json()

    def dataset_rows(self, dataset_id: str, version: int | None = None, row_ids: list[int] | None = None,
                     limit: int = 5000) -> list[dict[str, Any]]:
        return self.request("GET", f"/v1/datasets/{dataset_id}/rows", project=False,
                            params={"version": version, "row_ids": row_ids, "limit": limit}).json()["items"]

    def fix_dataset(self, dataset_id: str, version: int, drop: list[int], relabel: list[dict[str, Any]]
                    ) -> dict[str, Any]:
        return self.request("POST", f"/v1/datasets/{dataset_id}/fixes", project=False,
                            json={"version": version, "drop": drop, "relabel": relabel}).json()

    def train_dataset(self, dataset_id: str, version: int, project: str, create_project: bool,
                      self_training: bool = True, auto: bool = False) -> dict[str, Any]:
        return self.request("POST", f"/v1/datasets/{dataset_id}/train", project=False,
                            json={"version": version, "project": project, "create_project": create_project,
                                  "self_training": self_training, "auto": auto}).json()

    def training(self, run_id: int) -> dict[str, Any]:
        return self.request("GET", f"/v1/training/{run_id}", project=False).json()

    def evaluation(self, version: str, project: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/models/{version}/evaluation", params={"project": project}, project=False,
                            timeout=max(self.timeout, 300)).json()

    def projects(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/projects", project=False).json()["items"]


def role_allows(role: str | None, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (ingest < label < admin); unknown roles may not."""
    return role in ROLE_RANK and ROLE_RANK[role] >= ROLE_RANK[needed]
