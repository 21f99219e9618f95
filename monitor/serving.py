"""Model serving: the champion in memory, dynamic batching, hot-swap without dropped requests.

:class:`ModelServer` serves one project. Callers :meth:`~ModelServer.submit` texts and get a
future; one worker thread runs ONE forward pass (:meth:`TextClassifier.predict`, tokenisation
included) over everything queued, up to ``serve_max_batch`` texts, and hands each caller its
slice. Batching is continuous: the next forward starts as soon as the previous one ends, with
whatever queued meanwhile, so a queue of N requests is served by one forward, not by the few
that arrived in a fixed window (``serve_max_wait_ms`` > 0 adds such a window to fill batches
while the model would otherwise be idle). As callers are answered only after their commit, the
worker waits up to ``serve_fill_ms`` for the callers of the previous forward to come back before
starting a smaller one, so that closed-loop clients share forwards instead of alternating in two half
batches. The served classifier has its LoRA adapter merged into plain layers
(:meth:`TextClassifier.merge_for_serving`): the same outputs without peft's wrappers in each forward.
The queue is bounded: past ``serve_max_queue`` waiting texts, :meth:`~ModelServer.submit` raises
:class:`ServeQueueFull` (the API answers 503 + ``Retry-After``) rather than letting latency grow
without limit.

Logging: given the writer, the worker hands the rows of the whole forward to it as ONE Arrow table
(:mod:`tuneloop.monitor.prediction_rows`) that commits without a group-commit wait (the forward is
the group), and resolves each caller's future only after that COMMIT. The worker does not block on
the commit: the writer thread answers; only the bounded fill wait above may hold the next forward.

Hot-swap: the served model is one immutable :class:`LoadedModel` reference. A swap loads the new
classifier in the calling thread (never in the batch worker), then replaces the reference in
one assignment. Each batch reads the reference once, so a batch already taken finishes on the
old model and the next one runs on the new; no request waits for a load or fails because of it.

:func:`activate` / :func:`activate_rollback` are how the API and the retrain loop change the
champion: registry transaction (:mod:`tuneloop.monitor.registry`) plus the serving swap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.monitor import metrics, mlflow_tracking, registry
from tuneloop.monitor.prediction_rows import CallerRows, LoggedRows, prediction_rows
from tuneloop.monitor.storage import DEFAULT_PROJECT, Store

if TYPE_CHECKING:
    from tuneloop.monitor.config import Settings
    from tuneloop.monitor.writer import Writer
    from tuneloop.retrain.model import TextClassifier

log = logging.getLogger(__name__)


class NoModelLoaded(RuntimeError):
    """The project has no champion in memory: nothing can answer /v1/predict."""


class ServerStopping(RuntimeError):
    """The process is shutting down and takes no new requests."""


class ServeQueueFull(RuntimeError):
    """Too many texts wait for the model already; the caller should retry later (HTTP 503)."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"{queued} texts are waiting for the model (limit model.serve_max_queue = {limit}); "
                         "retry shortly")


def no_model_message(project: str) -> str:
    return f"no champion model for project {project}; train one with tuneloop train"


@dataclass(frozen=True)
class LoadedModel:
    version: str
    path: Path
    classifier: TextClassifier
    loaded_at: float = field(default_factory=time.time)


@dataclass
class ServeResult:
    """One caller's slice of a batch, row-aligned with the texts it submitted."""

    version: str
    label_names: list[str]  # the classifier's label order (columns of probs)
    labels: list[str]
    probs: np.ndarray
    confidence: np.ndarray
    embeddings: np.ndarray
    batch_texts: int  # texts in the forward pass this slice came from
    queue_ms: float
    forward_ms: float
    logged: LoggedRows | None = None  # the committed rows, when the server logs (has a writer)


@dataclass
class _Request:
    texts: list[str]
    future: Future[ServeResult]
    t0: float = field(default_factory=time.perf_counter)
    metadata: dict[str, Any] | None = None
    log: bool = True  # False: the server's own scoring (reference re-scoring), not traffic to record


def _depth_bucket(texts: int) -> str:
    """Power-of-two bucket of a queue depth: '1', '2-3', '4-7', ..."""
    low = 1 << (max(texts, 1).bit_length() - 1)
    return "1" if low == 1 else f"{low}-{2 * low - 1}"


def _bucket_order(item: tuple[str, Any]) -> int:
    return int(item[0].split("-")[0])


class ModelServer:
    """Dynamic-batching, hot-swappable model server for one project.

    >>> server = ModelServer("default", max_batch=64, max_queue=1024).start()
    >>> server.swap("v3", models_dir / "v3")           # loads here, then one atomic swap
    >>> server.predict(["great flight"]).labels
    ['positive']
    """

    def __init__(self, project: str = DEFAULT_PROJECT, max_batch: int = 64, max_wait_ms: float = 0.0,
                 threads: int = 0, max_queue: int = 1024, device: str = "auto", writer: Writer | None = None,
                 fill_ms: float = 0.0) -> None:
        self.project = project
        self.writer = writer  # logs every prediction before its caller is answered (None: no logging)
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.fill_wait = max(0.0, float(fill_ms)) / 1000.0
        self._unanswered = 0  # forwards whose callers wait for their commit (see _wait_for_returning_callers)
        self._answered = 0  # callers of the last answered forward: they may come back
        self._answered_at = 0.0
        self._arrived = 0  # requests queued since those callers were answered
        self.max_queue = max(1, int(max_queue))
        self.threads = threads
        self.device = device  # model.device: auto = CUDA when present
        self._current: LoadedModel | None = None
        self._previous: LoadedModel | None = None  # kept warm: rolling back to it needs no load
        self._queue: deque[_Request] = deque()
        self._queued_texts = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_batch_requests = 0
        self.swap_lock = threading.RLock()
        """Held by :func:`activate` around registry change + install, so swaps apply in order."""
        self.load_error: str | None = None
        self.batch_sizes: Counter[int] = Counter()  # texts per batch taken -> number of batches
        self.by_queue_depth: dict[str, list[int]] = {}  # texts queued when a batch was taken -> [batches, texts]
        self.requests_served = 0

    # -- model ---------------------------------------------------------------------------------------
    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def model(self) -> LoadedModel | None:
        return self._current

    @property
    def version(self) -> str | None:
        current = self._current
        return current.version if current else None

    def load(self, version: str, path: str | Path) -> LoadedModel:
        """Load a version into memory without serving it yet (slow: call off the request path)."""
        from tuneloop.retrain.versions import load_version

        for warm in (self._current, self._previous):
            if warm is not None and warm.version == version and warm.path == Path(path):
                return warm
        t = time.perf_counter()
        classifier = load_version(path, threads=self.threads, device=self.device).merge_for_serving()
        classifier.predict(["warm up"])  # first forward allocates; do it before traffic sees the model
        log.info("loaded %s/%s in %.2fs", self.project, version, time.perf_counter() - t)
        return LoadedModel(version, Path(path), classifier)

    def install(self, loaded: LoadedModel) -> LoadedModel | None:
        """Serve ``loaded`` from the next batch on (one reference assignment); return the old model."""
        old, self._current = self._current, loaded
        if old is not None and old.version != loaded.version:
            self._previous = old
            metrics.MODEL_SWAPS.labels(self.project).inc()
        self.load_error = None
        return old

    def swap(self, version: str, path: str | Path) -> LoadedModel:
        """Load ``version`` in this thread, then install it; requests keep flowing meanwhile."""
        loaded = self.load(version, path)
        self.install(loaded)
        return loaded

    # -- requests ------------------------------------------------------------------------------------
    def start(self) -> ModelServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"serve-{self.project}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, texts: list[str], metadata: dict[str, Any] | None = None,
               started: float | None = None, log: bool = True) -> Future[ServeResult]:
        """Queue ``texts`` for the next batch; the future resolves to their :class:`ServeResult`
        (with a writer: once their rows, carrying ``metadata``, are committed).

        ``started`` (``time.perf_counter()``): when the caller's request began, for the logged latency.
        ``log=False`` is for the server's own scoring (re-scoring a reference): it shares the forwards
        but is answered at once and never stored as a prediction, so it does not count as traffic.
        Raises :class:`ServeQueueFull` when they would take the queue past ``max_queue`` texts (a
        single request larger than that is still taken when nothing else waits).
        """
        request = _Request(list(texts), Future(), metadata=metadata, log=log)
        if started is not None:
            request.t0 = started
        if not request.texts:
            request.future.set_exception(ValueError("no texts to predict"))
            return request.future
        with self._cond:
            if self._stopping:
                raise ServerStopping("the server is shutting down; retry against the restarted server")
            if self._queued_texts and self._queued_texts + len(request.texts) > self.max_queue:
                raise ServeQueueFull(self._queued_texts, self.max_queue)
            self._queue.append(request)
            self._queued_texts += len(request.texts)
            self._arrived += 1
            self._cond.notify()
        return request.future

    def predict(self, texts: list[str], timeout: float | None = None, log: bool = True) -> ServeResult:
        """Blocking :meth:`submit`."""
        return self.submit(texts, log=log).result(timeout)

    # -- the batch worker ----------------------------------------------------------------------------
    def _take_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            # continuous batching takes what is queued now; the optional window only helps overlapping callers
            if self.max_wait > 0 and (self._last_batch_requests > 1 or len(self._queue) > 1):
                deadline = self._queue[0].t0 + self.max_wait
                while self._queued_texts < self.max_batch and not self._stopping:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            self._wait_for_returning_callers()
            depth = self._queued_texts
            batch, n = [], 0
            while self._queue and (not batch or n + len(self._queue[0].texts) <= self.max_batch):
                request = self._queue.popleft()
                self._queued_texts -= len(request.texts)
                if request.future.set_running_or_notify_cancel():
                    batch.append(request)
                    n += len(request.texts)
            self._last_batch_requests = len(batch)
            counts = self.by_queue_depth.setdefault(_depth_bucket(depth), [0, 0])
            counts[0] += 1
            counts[1] += n
            return batch

    def _wait_for_returning_callers(self) -> None:
        """Fill the batch with the callers the previous forward is about to answer (under ``_cond``).

        Callers answered only after their commit are not queued when the next forward could start:
        taking the queue at once splits closed-loop clients into two groups that alternate, each
        forward holding half of them while the other half waits for its commit. So while the
        previous forward's answers are pending, or were just sent and fewer requests have arrived
        since than were answered, wait (at most ``fill_wait`` in all) instead of starting a half batch.
        """
        if self.fill_wait <= 0:
            return
        deadline = time.perf_counter() + self.fill_wait
        while self._queued_texts < self.max_batch and not self._stopping:
            now = time.perf_counter()
            returning = self._arrived < self._answered and now - self._answered_at < self.fill_wait
            if not (self._unanswered or returning) or now >= deadline:
                return
            self._cond.wait(deadline - now)

    def _answered_now(self, callers: int) -> None:
        """Record that ``callers`` of one forward were just answered (they may come back at once)."""
        with self._cond:
            self._unanswered = max(0, self._unanswered - 1)
            self._answered, self._arrived, self._answered_at = callers, 0, time.perf_counter()
            self._cond.notify()

    def _run(self) -> None:
        if self.threads > 0:  # OpenMP thread counts are per calling thread: apply model.threads here too
            from tuneloop.retrain.model import set_threads

            set_threads(self.threads)
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._process(batch)

    def _process(self, batch: list[_Request]) -> None:
        loaded = self._current  # read once: the whole batch runs on this model, even if a swap lands now
        if loaded is None:
            error = NoModelLoaded(no_model_message(self.project))
            for r in batch:
                r.future.set_exception(error)
            return
        texts = [t for r in batch for t in r.texts]
        start = time.perf_counter()
        try:
            # one forward for the batch; only a single request larger than max_batch is cut into chunks
            pred = loaded.classifier.predict(texts, batch_size=self.max_batch)
        except Exception as e:  # the callers get the error; the worker keeps serving
            log.exception("forward pass failed for %d texts", len(texts))
            for r in batch:
                r.future.set_exception(e)
            return
        done = time.perf_counter()
        forward_ms = (done - start) * 1000
        self.batch_sizes[len(texts)] += 1
        self.requests_served += len(batch)
        metrics.SERVE_BATCH_TEXTS.labels(self.project).observe(len(texts))
        metrics.SERVE_FORWARD_SECONDS.labels(self.project).observe(done - start)
        results, slices, offset = [], [], 0
        for r in batch:
            sl = slice(offset, offset + len(r.texts))
            offset += len(r.texts)
            slices.append(sl)
            results.append(ServeResult(
                version=loaded.version, label_names=loaded.classifier.labels, labels=pred.labels[sl],
                probs=pred.probs[sl], confidence=pred.confidence[sl], embeddings=pred.embeddings[sl],
                batch_texts=len(texts), queue_ms=(start - r.t0) * 1000, forward_ms=forward_ms,
            ))
        logged = [i for i, r in enumerate(batch) if r.log] if self.writer is not None else []
        waits = set(logged)
        for i, (r, result) in enumerate(zip(batch, results, strict=True)):
            if i not in waits:  # nothing to wait for: answered now
                r.future.set_result(result)
        if not logged:
            self._answered_now(len(batch))
            return
        labels, probs, embeddings = pred.labels, pred.probs, pred.embeddings
        if len(logged) < len(batch):  # the server's own scoring shared the forward: log the callers' rows only
            rows = np.concatenate([np.arange(slices[i].start, slices[i].stop) for i in logged])
            texts, labels = [texts[j] for j in rows], [labels[j] for j in rows]
            probs, embeddings = probs[rows], embeddings[rows]
            batch, results = [batch[i] for i in logged], [results[i] for i in logged]
        self._log(batch, results, texts, labels, probs, embeddings, loaded, done)

    def _log(self, batch: list[_Request], results: list[ServeResult], texts: list[str], labels: list[str],
             probs: np.ndarray, embeddings: np.ndarray, loaded: LoadedModel, done: float) -> None:
        """Queue the forward's rows as one write; the callers are answered from the writer thread after COMMIT."""
        assert self.writer is not None
        with self._cond:
            self._unanswered += 1
        try:
            table, logged = prediction_rows(
                texts, labels, probs, embeddings, loaded.classifier.labels, loaded.version,
                [CallerRows(len(r.texts), (done - r.t0) * 1000, r.metadata) for r in batch])
            written = self.writer.submit_predictions(table, self.project, linger=False)
        except Exception as e:  # a full or stopping writer: these callers get the error, the worker goes on
            for r in batch:
                r.future.set_exception(e)
            self._answered_now(len(batch))
            return

        def answer(write: Future[Any]) -> None:
            error = write.exception()
            for r, result, rows in zip(batch, results, logged, strict=True):
                if error is not None:
                    r.future.set_exception(error)
                else:
                    result.logged = rows
                    r.future.set_result(result)
            self._answered_now(len(batch))

        written.add_done_callback(answer)

    def stats(self) -> dict[str, Any]:
        batches = sum(self.batch_sizes.values())
        texts = sum(k * v for k, v in self.batch_sizes.items())
        return {"version": self.version, "batches": batches, "texts": texts, "requests": self.requests_served,
                "mean_batch_texts": texts / batches if batches else 0.0,
                "max_batch_texts": max(self.batch_sizes, default=0),
                "by_queue_depth": {depth: {"batches": b, "texts": t}
                                   for depth, (b, t) in sorted(self.by_queue_depth.items(), key=_bucket_order)}}


class Serving:
    """The model servers of one process, one per project (``Runtime.serving``).

    A project's champion is loaded when its server is first asked for (the default project's at
    start-up). Readiness never fails for a project without a champion; it only reports it.
    """

    def __init__(self, store: Store, settings: Settings, writer: Writer | None = None) -> None:
        self.store = store
        self.settings = settings
        self.writer = writer  # every server logs its predictions through it (None: no logging)
        self._servers: dict[str, ModelServer] = {}
        self._initialised: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, project: str = DEFAULT_PROJECT) -> ModelServer | None:
        """The project's server once its champion is loaded, else None (never blocks: safe on the event loop)."""
        srv = self._servers.get(project)
        return srv if srv is not None and self._initialised[project].is_set() else None

    def server(self, project: str = DEFAULT_PROJECT) -> ModelServer:
        """The project's server, started, with its champion loaded if one is registered (may block to load)."""
        with self._lock:
            srv = self._servers.get(project)
            fresh = srv is None
            if srv is None:
                m = self.settings.model
                srv = ModelServer(project, m.serve_max_batch, m.serve_max_wait_ms, m.threads,
                                  m.serve_max_queue, device=m.device, writer=self.writer,
                                  fill_ms=m.serve_fill_ms).start()
                self._servers[project] = srv
                self._initialised[project] = threading.Event()
        if fresh:
            try:
                with srv.swap_lock:
                    self._load_champion(srv)
            finally:
                self._initialised[project].set()
        else:  # a concurrent first caller is loading the champion: wait for it, never answer "no model"
            self._initialised[project].wait()
        return srv

    def _load_champion(self, srv: ModelServer) -> None:
        row = registry.champion(self.store, srv.project)
        if row is None:
            return
        try:
            srv.swap(row["version"], row["path"])
        except Exception as e:  # a broken champion must not take the whole service down
            srv.load_error = f"cannot load champion {row['version']} from {row['path']}: {e}"
            log.exception("champion of project %s failed to load", srv.project)

    def ready(self) -> bool:
        return not any(srv.load_error for srv in list(self._servers.values()))

    def readiness_info(self) -> dict[str, str]:
        """Per project: the version served, or 'no model' (or the load error)."""
        return {p: srv.load_error or (f"model {srv.version} loaded" if srv.version else "no model")
                for p, srv in list(self._servers.items())}

    def stats(self) -> dict[str, dict[str, Any]]:
        return {p: {**srv.stats(), "status": self.readiness_info()[p]} for p, srv in list(self._servers.items())}

    def stop(self) -> None:
        for srv in list(self._servers.values()):
            srv.stop()


def activate(store: Store, serving: Serving | None, project: str, version: str, actor: str = "api",
             reason: str | None = None, force: bool = False, track: bool = True) -> dict[str, Any]:
    """Promote ``version`` in the registry and serve it (the only way to change the champion in a server).

    The new model is loaded first (off the request path, requests keep flowing on the old one); then
    the registry transaction and the swap happen under the project's swap lock. A load failure
    leaves both the registry and serving unchanged. Without ``serving`` (no server running) only the
    registry changes. With ``track`` and an MLflow store configured, the MLflow ``champion`` alias
    follows (after the swap, best effort).
    """
    row = registry.get_version(store, project, version)
    registry.check_promotable(row, force)
    if serving is None:
        return registry.promote(store, project, version, actor, reason, force)
    srv = serving.server(project)
    with srv.swap_lock:
        loaded = srv.load(version, row["path"])
        result = registry.promote(store, project, version, actor, reason, force)
        srv.install(loaded)
    if track:
        mlflow_tracking.champion_changed(serving.settings.mlflow, project, result)
    return result


def activate_rollback(store: Store, serving: Serving | None, project: str, actor: str = "api",
                      reason: str | None = None) -> dict[str, Any]:
    """Roll the registry back to the previous champion and serve it (see :func:`registry.rollback`)."""
    if serving is None:
        return registry.rollback(store, project, actor, reason)
    srv = serving.server(project)
    with srv.swap_lock:
        target = registry.get_version(store, project, registry.rollback_target(store, project))
        loaded = srv.load(target["version"], target["path"])
        result = registry.rollback(store, project, actor, reason)
        if result["version"] != loaded.version:  # cannot happen under the lock; never serve a stale pick
            loaded = srv.load(result["version"], result["path"])
        srv.install(loaded)
    mlflow_tracking.champion_changed(serving.settings.mlflow, project, result)
    return result
