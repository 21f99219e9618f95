"""The single writer under interleavings that a plain run rarely hits: stop during submit, cancelled callers."""

from __future__ import annotations

import queue
import threading
import time

import pyarrow as pa
import pytest

from tuneloop.monitor.storage import Store
from tuneloop.monitor.writer import Writer, WriterStopped


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "t.duckdb") as s:
        yield s


def batch(*ids: str) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "text": f"text {i}", "label": "neutral"} for i in ids])


class StopWhileEnqueueing(queue.SimpleQueue):
    """A queue that lets ``writer.stop()`` run from another thread just before a job is enqueued,
    which is the widest window a submit racing a shutdown can open."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.stopper: threading.Thread | None = None

    def put(self, item, block=True, timeout=None):  # type: ignore[no-untyped-def]
        if item is not None and self.stopper is None:
            self.stopper = threading.Thread(target=self.writer.stop)
            self.stopper.start()
            self.stopper.join(0.5)  # returns at once if stop() can finish while a job is half-submitted
        super().put(item)


def test_a_job_submitted_while_stopping_is_written_or_refused_never_stranded(store):
    writer = Writer(store, group_commit_ms=1)
    writer._queue = StopWhileEnqueueing(writer)
    writer.start()
    try:
        future = writer.submit_predictions(batch("racing"))
    except WriterStopped:
        future = None
    writer._queue.stopper.join(30)
    if future is not None:  # accepted: it must resolve, and be stored
        assert future.result(timeout=10).accepted == 1
        assert store.count_predictions() == 1
    assert writer.queued_rows == 0


def test_a_cancelled_caller_does_not_fail_the_rest_of_its_group(store):
    writer = Writer(store, group_commit_rows=2, group_commit_ms=60_000).start()
    abandoned = writer.submit_predictions(batch("gone"))
    assert abandoned.cancel()  # e.g. the awaiting request was cancelled when its client hung up
    kept = writer.submit_predictions(batch("kept"))  # the group is full at 2 rows: written at once
    assert kept.result(timeout=10).accepted == 1
    writer.stop()
    assert store.query("SELECT id FROM predictions")["id"].tolist() == ["kept"]
    assert writer.queued_rows == 0


def test_a_batch_that_is_a_group_already_commits_without_the_wait(store):
    writer = Writer(store, group_commit_ms=60_000).start()
    try:
        t = time.perf_counter()
        assert writer.submit_predictions(batch("now"), linger=False).result(timeout=10).accepted == 1
        assert time.perf_counter() - t < 30
        lingering = writer.submit_predictions(batch("later"))  # opens a group that waits for the window
        time.sleep(0.2)
        assert not lingering.done()
    finally:
        writer.stop()  # drains: the waiting batch is written too
    assert lingering.result().accepted == 1
    assert store.count_predictions() == 2
