"""Background jobs in the server process (APScheduler 3): drift checks, retrain policy, retention.

With several replicas on one PostgreSQL database every replica schedules the jobs, but a job runs
only where ``gate()`` says so (the leader, :mod:`tuneloop.monitor.leader`); elsewhere its turn is
counted as ``passed`` and nothing runs. When the leader dies, the survivor's next turn runs.

Every job runs with ``max_instances=1``, ``coalesce=True`` and no misfire grace limit: a job never
overlaps itself, and turns the scheduler thread wakes late for (a loaded machine, a starved process)
collapse into one run at once instead of being dropped until the next interval (with APScheduler's
default grace of 1 s, a 1-second drift check on a loaded replica could be dropped turn after turn). A
run skipped because the previous one still runs is logged as a warning (APScheduler's own) and counted
in :attr:`Scheduler.skipped`: a job that keeps outlasting its interval should be seen. Jobs are plain
callables so tests can call them directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.core import CounterMetricFamily, Metric

log = logging.getLogger(__name__)


class Scheduler:
    """A thin wrapper that names jobs and logs their failures instead of losing them."""

    def __init__(self, gate: Callable[[], bool] | None = None) -> None:
        self.gate = gate
        """Runs a job only when it answers True (None: always)."""
        self.runs: dict[str, int] = {}
        """Runs per job in this process."""
        self.passed: dict[str, int] = {}
        """Turns per job left to the leader (``gate`` said no)."""
        self._scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"max_instances": 1, "coalesce": True,
                                                                            "misfire_grace_time": None})
        self.skipped: dict[str, int] = {}
        """Runs skipped per job: the previous run was still going, or the run came too late."""
        self._scheduler.add_listener(self._count_skip, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)

    def _count_skip(self, event: JobEvent) -> None:
        self.skipped[event.job_id] = self.skipped.get(event.job_id, 0) + 1

    def every(self, name: str, seconds: float, func: Callable[[], Any], *, start_now: bool = False,
              first_run_in: float | None = None) -> None:
        """Run ``func`` every ``seconds``: first now (``start_now``), after ``first_run_in`` s, or in one interval."""
        from datetime import UTC, datetime, timedelta

        first = {}
        if start_now:
            first = {"next_run_time": datetime.now(UTC)}
        elif first_run_in is not None:
            first = {"next_run_time": datetime.now(UTC) + timedelta(seconds=first_run_in)}
        self._scheduler.add_job(
            self._guard(name, func), IntervalTrigger(seconds=seconds), id=name, name=name, replace_existing=True,
            **first,
        )

    def cron(self, name: str, expression: str, func: Callable[[], Any]) -> None:
        self._scheduler.add_job(
            self._guard(name, func), CronTrigger.from_crontab(expression, timezone="UTC"), id=name, name=name,
            replace_existing=True,
        )

    def _guard(self, name: str, func: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            if self.gate is not None and not self.gate():
                self.passed[name] = self.passed.get(name, 0) + 1
                return
            self.runs[name] = self.runs.get(name, 0) + 1
            try:
                func()
            except Exception:
                log.exception("scheduled job %s failed", name)

        return run

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        """Stop scheduling and wait for running jobs: they use the store, which closes next."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)

    def collect(self) -> Iterator[Metric]:
        """``tuneloop_scheduled_job_runs_total{job}``: runs in this process (a Prometheus collector), so
        which replica runs the jobs can be seen from outside."""
        runs = CounterMetricFamily("tuneloop_scheduled_job_runs", "Scheduled job runs started in this process",
                                   labels=["job"])
        for name, n in sorted(self.runs.items()):
            runs.add_metric([name], n)
        yield runs

    def jobs(self) -> list[dict[str, Any]]:
        return [{"id": j.id, "next_run": str(j.next_run_time), "skipped": self.skipped.get(j.id, 0),
                 "runs": self.runs.get(j.id, 0), "passed": self.passed.get(j.id, 0)}
                for j in self._scheduler.get_jobs()]
