"""What `tuneloop status` and ``GET /v1/status`` show: rows, versions, latest checks, open alerts."""

from __future__ import annotations

from typing import Any

from tuneloop.monitor.storage import DEFAULT_PROJECT, Store


def status_summary(store: Store, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    counts = store.table_counts()
    champion = store.query(
        "SELECT version, promoted_at FROM model_versions WHERE project = ? AND status = 'champion'", [project]
    )
    checks = store.query(
        """SELECT metric, value, threshold, drifted, ts FROM drift_checks
           WHERE project = ? QUALIFY row_number() OVER (PARTITION BY metric ORDER BY ts DESC) = 1
           ORDER BY metric""",
        [project],
    )
    open_alerts = store.query(
        "SELECT count(*) AS n FROM alerts WHERE project = ? AND status = 'open'", [project]
    )["n"][0]
    return {
        "project": project,
        "db": str(store.path),
        "schema_version": store.schema_version(),
        "rows": counts,
        "project_predictions": store.count_predictions(project),
        "champion": None if champion.empty else {
            "version": champion["version"][0], "since": str(champion["promoted_at"][0])
        },
        "versions": int(store.query(
            "SELECT count(*) AS n FROM model_versions WHERE project = ?", [project])["n"][0]),
        "last_checks": [
            {**r, "ts": str(r["ts"])} for r in checks.to_dict("records")
        ],
        "open_alerts": int(open_alerts),
    }
