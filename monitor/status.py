"""What `tuneloop status` and ``GET /v1/status`` show: rows, versions, latest checks, open alerts."""

from __future__ import annotations

from typing import Any

from tuneloop.monitor.storage import DEFAULT_PROJECT, Store


def status_summary(store: Store, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    counts = store.table_counts()
    champion = store.versions.champion(project)
    checks = store.checks.latest_per_metric(project)
    return {
        "project": project,
        "db": str(store.path),
        "schema_version": store.schema_version(),
        "rows": counts,
        "project_predictions": store.count_predictions(project),
        "champion": None if champion is None else {
            "version": champion["version"], "since": str(champion["promoted_at"])
        },
        "versions": store.versions.count(project),
        "last_checks": [
            {**r, "ts": str(r["ts"])} for r in checks.to_dict("records")
        ],
        "open_alerts": store.alerts.count_open(project),
    }
