"""Model health as Prometheus series, read from the store when Prometheus scrapes.

A custom collector rather than gauges set from the drift, alert, registry and retrain code: the
values cannot go stale or disagree with the API, and a restarted server exposes the same numbers
at once. Each scrape runs a handful of grouped queries (all projects at once), not one per project.

Series (``project`` on all of them; ``check`` is the drift check's name):

* ``tuneloop_drift_value`` / ``tuneloop_drift_threshold`` / ``tuneloop_drift_drifted`` (0|1) and
  ``tuneloop_drift_check_timestamp_seconds`` — the latest result of each check;
* ``tuneloop_alerts_open{severity}`` — open alerts, every severity present (0 when none);
* ``tuneloop_accuracy{kind="labelled"|"estimated"}`` and ``tuneloop_accuracy_rows`` — from the
  latest accuracy checks (labelled: feedback of the current window; estimated: label-free);
* ``tuneloop_champion_info{version}`` — the serving version;
* ``tuneloop_label_queue_size`` — predictions still without a label;
* ``tuneloop_retrain_last_timestamp_seconds`` and ``tuneloop_retrain_last_status{status}`` (1 for
  the latest run's status) and ``tuneloop_retrain_last_failed`` (0|1).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from tuneloop.monitor.storage import DEFAULT_PROJECT, Store

log = logging.getLogger(__name__)

SEVERITIES = ("warning", "critical")
ACCURACY_CHECKS = {"labelled_accuracy": "labelled", "estimated_accuracy": "estimated"}


class ModelHealthCollector(Collector):
    """Yields the model-health families from the current state of ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            families = [*self._drift(), self._alerts(), self._champion(), self._queue(), *self._retrain()]
        except Exception:  # a scrape must not fail with the store (closing, busy): the operational series stay
            log.exception("model-health metrics unavailable for this scrape")
            return
        yield from families

    def _projects(self) -> list[str]:
        names = set(self.store.projects.names())
        return sorted(names | {DEFAULT_PROJECT})

    def _drift(self) -> list[Metric]:
        value = GaugeMetricFamily("tuneloop_drift_value", "Latest value of the drift check's statistic",
                                  labels=["project", "check"])
        threshold = GaugeMetricFamily("tuneloop_drift_threshold", "Threshold the latest drift check compared with",
                                      labels=["project", "check"])
        drifted = GaugeMetricFamily("tuneloop_drift_drifted", "1 when the latest drift check breached its threshold",
                                    labels=["project", "check"])
        when = GaugeMetricFamily("tuneloop_drift_check_timestamp_seconds", "Unix time of the latest drift check",
                                 labels=["project", "check"])
        accuracy = GaugeMetricFamily("tuneloop_accuracy", "Accuracy of the current window from the latest check "
                                     "(labelled: from feedback; estimated: label-free)", labels=["project", "kind"])
        accuracy_rows = GaugeMetricFamily("tuneloop_accuracy_rows", "Rows behind tuneloop_accuracy (labelled rows "
                                          "or current-window rows)", labels=["project", "kind"])
        latest = self.store.checks.latest_all_projects()
        for project, metric, val, thr, breached, ts, details in latest:
            labels = [project, metric]
            if val is not None:
                value.add_metric(labels, float(val))
            if thr is not None:
                threshold.add_metric(labels, float(thr))
            drifted.add_metric(labels, 1.0 if breached else 0.0)
            when.add_metric(labels, float(ts))
            if metric in ACCURACY_CHECKS and val is not None:
                kind = ACCURACY_CHECKS[metric]
                accuracy.add_metric([project, kind], float(val))
                extra = json.loads(details) if details else {}
                n = extra.get("n_labelled" if kind == "labelled" else "n_current")
                if n is not None:
                    accuracy_rows.add_metric([project, kind], float(n))
        return [value, threshold, drifted, when, accuracy, accuracy_rows]

    def _alerts(self) -> Metric:
        family = GaugeMetricFamily("tuneloop_alerts_open", "Open alerts by severity", labels=["project", "severity"])
        counts = {(p, s): n for p, s, n in self.store.alerts.open_by_severity()}
        projects = sorted(set(self._projects()) | {p for p, _ in counts})
        for project in projects:
            for severity in sorted(set(SEVERITIES) | {s for p, s in counts if p == project}):
                family.add_metric([project, severity], float(counts.get((project, severity), 0)))
        return family

    def _champion(self) -> Metric:
        family = InfoMetricFamily("tuneloop_champion", "The version each project serves", labels=["project"])
        for project, version in self.store.versions.champions():
            family.add_metric([project], {"version": str(version)})
        return family

    def _queue(self) -> Metric:
        family = GaugeMetricFamily("tuneloop_label_queue_size", "Predictions still without a label",
                                   labels=["project"])
        predicted = self.store.predictions.count_per_project()
        labelled = self.store.predictions.labelled_per_project()
        for project in sorted(set(self._projects()) | set(predicted)):
            family.add_metric([project], float(max(0, predicted.get(project, 0) - labelled.get(project, 0))))
        return family

    def _retrain(self) -> list[Metric]:
        when = GaugeMetricFamily("tuneloop_retrain_last_timestamp_seconds",
                                 "Unix time the latest retrain run finished (started, while it runs)",
                                 labels=["project"])
        status = GaugeMetricFamily("tuneloop_retrain_last_status", "1 for the status of the latest retrain run",
                                   labels=["project", "status"])
        failed = GaugeMetricFamily("tuneloop_retrain_last_failed", "1 when the latest retrain run failed",
                                   labels=["project"])
        for project, state, ts in self.store.runs.latest_per_project():
            when.add_metric([project], float(ts))
            status.add_metric([project, state], 1.0)
            failed.add_metric([project], 1.0 if state == "failed" else 0.0)
        return [when, status, failed]
