"""The background scheduler: skipped overlapping runs are visible, and stopping waits for running jobs."""

from __future__ import annotations

import logging
import threading
import time

from apscheduler.events import EVENT_JOB_MAX_INSTANCES

from tuneloop.monitor.scheduler import Scheduler


def test_a_run_skipped_because_the_last_one_still_runs_is_logged_and_counted(caplog):
    scheduler = Scheduler()
    started, skipped, release = threading.Event(), threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(30)

    scheduler.every("slow", 0.05, slow, start_now=True)
    scheduler._scheduler.add_listener(lambda event: skipped.set(), EVENT_JOB_MAX_INSTANCES)
    with caplog.at_level(logging.WARNING, logger="apscheduler"):
        scheduler.start()
        try:
            assert started.wait(30)
            assert skipped.wait(30), "the overlapping run was never skipped"
        finally:
            release.set()
            scheduler.stop()
    assert scheduler.skipped["slow"] >= 1
    assert any("skipped" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_stop_waits_for_a_running_job_before_returning():
    scheduler = Scheduler()
    started, release = threading.Event(), threading.Event()
    finished = []

    def job() -> None:
        started.set()
        release.wait(30)
        finished.append(True)

    scheduler.every("job", 3600, job, start_now=True)
    scheduler.start()
    assert started.wait(30)
    stopper = threading.Thread(target=scheduler.stop)
    stopper.start()
    stopper.join(0.5)
    assert stopper.is_alive(), "stop() returned while a job was still using the store"
    release.set()
    stopper.join(30)
    assert finished == [True] and not stopper.is_alive()


def test_a_turn_the_scheduler_wakes_late_for_still_runs():
    """On a loaded machine the scheduler thread can wake seconds after a turn was due: the turn runs late
    (once, coalesced) instead of being dropped until the next interval."""
    scheduler = Scheduler()
    ran = threading.Event()
    scheduler.every("late", 10.0, ran.set, first_run_in=0.5)
    scheduler.start()
    try:
        scheduler._scheduler.pause()  # the thread is held past the turn, as a starved process would be
        time.sleep(2.5)
        resumed = time.monotonic()
        scheduler._scheduler.resume()
        assert ran.wait(30), "the late turn never ran"
        waited = time.monotonic() - resumed
    finally:
        scheduler.stop()
    assert waited < 4, f"the late turn was dropped and the job waited {waited:.1f} s for its next interval"
    assert scheduler.runs["late"] == 1 and not scheduler.skipped.get("late")
