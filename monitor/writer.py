"""The single writer: one thread, fed by a queue, owns every ingest write (group commit).

Like datasette's ``execute_write_fn``: request handlers validate their batch, enqueue it and await
a future; the writer thread takes everything queued (up to ``server.group_commit_rows`` rows, or
whatever arrives within ``server.group_commit_ms`` of the first job; no wait when that job was
submitted with ``linger=False``, as a served forward's rows are) and appends all prediction
batches in ONE transaction, then resolves each caller's future with that caller's own
accepted/duplicate counts. A future resolves only after COMMIT: an acknowledged row survives a
crash. If the combined transaction fails, each batch is retried on its own so that one bad batch
cannot fail the others.

Back-pressure: rows count as queued from submit until their commit; a submit that would take the
queue past ``server.write_queue_max_rows`` raises :class:`WriteQueueFull` (the API answers 503 +
``Retry-After``). Nothing accepted into the queue is ever dropped: :meth:`Writer.stop` drains it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from tuneloop.monitor import metrics
from tuneloop.monitor.config import Settings
from tuneloop.monitor.storage import DEFAULT_PROJECT, AppendResult, FeedbackResult, Store

log = logging.getLogger(__name__)

UnknownPolicy = Literal["pending", "reject"]


class WriteQueueFull(Exception):
    """The write queue is full; retry after ``retry_after`` seconds (HTTP 503)."""

    def __init__(self, queued: int, limit: int, retry_after: int) -> None:
        super().__init__(f"the write queue holds {queued} rows (limit server.write_queue_max_rows = {limit}); "
                         f"retry in {retry_after} s")
        self.retry_after = retry_after


class WriterStopped(Exception):
    """The writer is shutting down and takes no new work (HTTP 503)."""


class UnknownPredictions(LookupError):
    """Feedback names prediction ids that are not stored (``server.unknown_feedback = "reject"``)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"{len(ids)} prediction id(s) are not stored; nothing of this request was written")
        self.ids = ids


@dataclass(eq=False)
class _Job:
    kind: Literal["predictions", "feedback"]
    table: pa.Table
    project: str
    unknown: UnknownPolicy = "pending"
    token_id: str | None = None
    future: Future = field(default_factory=Future)
    linger: bool = True
    """Whether the writer may wait ``group_commit_ms`` for more jobs to join this one's group."""
    counted: bool = True
    """Its rows still count in the writer's queued rows."""

    @property
    def rows(self) -> int:
        return self.table.num_rows


class Writer:
    """Group-commit writer over a :class:`Store`.

    >>> writer = Writer(store, group_commit_rows=5000, group_commit_ms=5).start()
    >>> writer.submit_predictions(table, "default").result()      # after COMMIT
    AppendResult(accepted=1000, duplicates=0)
    >>> await writer.append_predictions(table, "default")         # the same, from a coroutine
    >>> writer.stop()                                              # drains what is queued
    """

    def __init__(
        self,
        store: Store,
        *,
        group_commit_rows: int = 5000,
        group_commit_ms: float = 5.0,
        max_queued_rows: int = 200_000,
        retry_after_seconds: int = 1,
    ) -> None:
        self.store = store
        self.group_commit_rows = group_commit_rows
        self.group_commit_ms = group_commit_ms
        self.max_queued_rows = max_queued_rows
        self.retry_after_seconds = retry_after_seconds
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued_rows = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.prediction_groups = 0
        """Runs of queued prediction batches written together (one transaction each, unless a
        failure made the writer retry the batches one by one)."""

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> Writer:
        s = settings.server
        return cls(store, group_commit_rows=s.group_commit_rows, group_commit_ms=s.group_commit_ms,
                   max_queued_rows=s.write_queue_max_rows, retry_after_seconds=s.retry_after_seconds)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, name="tuneloop-writer", daemon=True)
        self._thread.start()
        metrics.WRITE_QUEUE_ROWS.set_function(lambda: self._queued_rows)
        return self

    def stop(self, timeout: float | None = 60.0) -> None:
        """Refuse new work, write everything already queued, then end the thread."""
        with self._lock:  # the sentinel goes in under the lock: no job can land behind it
            if self._stopping:
                return
            self._stopping = True
            self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("writer did not drain within %s s; %d rows still queued", timeout, self._queued_rows)

    @property
    def ready(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    # -- submitting -----------------------------------------------------------------------------
    def _submit(self, job: _Job) -> Future:
        with self._lock:
            if self._stopping:
                raise WriterStopped("the server is shutting down; retry against the restarted server")
            if self._queued_rows and self._queued_rows + job.rows > self.max_queued_rows:
                metrics.REJECTED.labels("queue_full").inc()
                raise WriteQueueFull(self._queued_rows, self.max_queued_rows, self.retry_after_seconds)
            self._queued_rows += job.rows
            self._queue.put(job)  # under the lock, so it is always ahead of stop()'s sentinel
        return job.future

    def submit_predictions(self, table: pa.Table, project: str = DEFAULT_PROJECT, linger: bool = True) -> Future:
        """Queue a prediction batch (store columns); the future gives its :class:`AppendResult`.

        ``linger=False``: the batch is a group already (a forward pass's rows); when it opens a group,
        the writer takes what is queued at that moment and commits without waiting for more.
        """
        return self._submit(_Job("predictions", table, project, linger=linger))

    def submit_feedback(
        self, table: pa.Table, project: str = DEFAULT_PROJECT, unknown: UnknownPolicy = "pending",
        token_id: str | None = None,
    ) -> Future:
        """Queue feedback; with ``unknown="reject"`` a batch naming any unknown prediction id is
        refused whole (:class:`UnknownPredictions`), otherwise those rows are parked as pending.
        ``token_id``: the sending token, recorded so that it (or an admin) may retract the rows."""
        return self._submit(_Job("feedback", table, project, unknown, token_id))

    async def append_predictions(self, table: pa.Table, project: str = DEFAULT_PROJECT) -> AppendResult:
        return await asyncio.wrap_future(self.submit_predictions(table, project))

    async def append_feedback(
        self, table: pa.Table, project: str = DEFAULT_PROJECT, unknown: UnknownPolicy = "pending",
        token_id: str | None = None,
    ) -> FeedbackResult:
        return await asyncio.wrap_future(self.submit_feedback(table, project, unknown, token_id))

    # -- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            group, rows = [first], first.rows
            deadline = time.monotonic() + (self.group_commit_ms / 1000.0 if first.linger else 0.0)
            while rows < self.group_commit_rows:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        job = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if job is None:
                    stop = True
                    break
                group.append(job)
                rows += job.rows
            live = self._claim(group)
            try:
                if live:
                    self._process(live)
            except BaseException as e:  # never leave a caller waiting on a future nobody resolves
                log.exception("writer failed on a group of %d requests", len(live))
                self._release(live)
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(e)

    def _release(self, jobs: list[_Job]) -> None:
        """Stop counting ``jobs`` as queued (once each)."""
        with self._lock:
            for job in jobs:
                if job.counted:
                    job.counted = False
                    self._queued_rows -= job.rows

    def _claim(self, group: list[_Job]) -> list[_Job]:
        """The jobs whose caller still waits; a cancelled one is dropped, a claimed one can no
        longer be cancelled, so resolving it after COMMIT cannot fail."""
        claimed = [job.future.set_running_or_notify_cancel() for job in group]
        self._release([job for job, ok in zip(group, claimed, strict=True) if not ok])
        return [job for job, ok in zip(group, claimed, strict=True) if ok]

    def _process(self, group: list[_Job]) -> None:
        """Write a group in arrival order: runs of prediction batches as one transaction each."""
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        started = time.perf_counter()
        i = 0
        while i < len(group):
            j = i
            while j < len(group) and group[j].kind == "predictions":
                j += 1
            if j > i:
                outcomes += self._append_predictions(group[i:j])
                self.prediction_groups += 1
                i = j
            else:
                outcomes.append(self._run_one(group[i]))
                i += 1
        metrics.GROUP_COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.GROUP_COMMIT_ROWS.observe(sum(job.rows for job in group))
        metrics.GROUP_COMMIT_REQUESTS.observe(len(group))
        self._release(group)
        for job, result, exc in outcomes:
            if exc is not None:
                job.future.set_exception(exc)
            else:
                _count(job.kind, result)
                job.future.set_result(result)

    def _append_predictions(self, jobs: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        try:
            results = self.store.append_prediction_batches([(job.table, job.project) for job in jobs])
            return [(job, r, None) for job, r in zip(jobs, results, strict=True)]
        except Exception as e:
            if len(jobs) == 1:
                log.warning("prediction batch failed: %s", e)
                return [(jobs[0], None, e)]
            log.warning("group commit of %d batches failed (%s); writing them one by one", len(jobs), e)
        return [self._run_one(job) for job in jobs]

    def _run_one(self, job: _Job) -> tuple[_Job, Any, BaseException | None]:
        try:
            if job.kind == "predictions":
                return job, self.store.append_predictions(job.table, job.project), None
            return job, self._feedback(job), None
        except Exception as e:
            if not isinstance(e, UnknownPredictions):
                log.warning("%s write failed: %s", job.kind, e)
            return job, None, e

    def _feedback(self, job: _Job) -> FeedbackResult:
        if job.unknown == "reject":
            missing = missing_prediction_ids(self.store, job.project, job.table.column("prediction_id").to_pylist())
            if missing:
                raise UnknownPredictions(missing)
        return self.store.append_feedback(job.table, job.project, keep_unknown=job.unknown == "pending",
                                          token_id=job.token_id)


def missing_prediction_ids(store: Store, project: str, ids: list[str]) -> list[str]:
    """The distinct ``ids`` with no stored prediction in ``project``, in first-seen order."""
    found = store.predictions.existing_ids(project, ids)
    return list(dict.fromkeys(i for i in ids if i not in found))


def _count(kind: str, result: AppendResult | FeedbackResult) -> None:
    metrics.ROWS.labels(kind, "accepted").inc(result.accepted)
    metrics.ROWS.labels(kind, "duplicate").inc(result.duplicates)
    if isinstance(result, FeedbackResult):
        metrics.ROWS.labels(kind, "pending").inc(result.pending)

