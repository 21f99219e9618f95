"""Server-side embeddings for predictions logged without one (log-only clients, external models).

Drift detection compares sentence embeddings; a client that only logs ``text`` and ``label``
cannot send them. :class:`BackgroundEmbedder` is a thread in the server that repeatedly takes the
oldest rows whose ``embedding IS NULL``, encodes their texts with the packaged encoder and writes
the vectors back in one statement per batch (``store.predictions.fill_embeddings``).

* Off the ingest path: ingestion stores rows as they come; the write lock is held only for the
  short write-back, never while encoding.
* Resumable: the only state is "which rows still have a NULL embedding", so a restart carries on.
* Lazy: the encoder is loaded on the first batch that needs it; a server whose rows all carry
  embeddings never loads it.
* Visible: pending rows, rows embedded and rows/s are Prometheus gauges and per-project counts in
  ``GET /v1/projects/{p}``.

DuckDB implements an update of a list column as delete + insert of the row; with the
``(project, id)`` primary key this is fine because the key is unchanged, and the writer's
appends are serialised with it by the store's write lock. Because the write-back holds that lock,
it is kept short (rows addressed by rowid) and infrequent (``batch_size`` rows at a time), and
the thread runs at a lower OS priority (``[embedder] nice``) so request handling comes first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tuneloop.monitor import metrics
from tuneloop.monitor.config import Settings
from tuneloop.monitor.storage import Store

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], np.ndarray]


class SharedEncoder:
    """One packaged encoder per (base, max_length) in the process, loaded on first use.

    Calls are serialised: a fast tokenizer must not be used from two threads at once, and two
    concurrent forward passes would only fight over the same cores.
    """

    _instances: dict[tuple[str, int], SharedEncoder] = {}
    _instances_lock = threading.Lock()

    def __init__(self, base: str, max_length: int) -> None:
        self.base = base
        self.max_length = max_length
        self._encoder: Any = None
        self._lock = threading.Lock()

    @classmethod
    def get(cls, base: str, max_length: int) -> SharedEncoder:
        with cls._instances_lock:
            key = (str(base), int(max_length))
            if key not in cls._instances:
                cls._instances[key] = cls(str(base), int(max_length))
            return cls._instances[key]

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings [n, dim] (float32, L2-normalised), row-aligned with ``texts``.

        Texts are encoded in order of length so each forward pass pads little; the rows are put
        back in input order.
        """
        texts = [str(t) for t in texts]
        with self._lock:
            if self._encoder is None:
                from transformers.utils import logging as hf_logging

                from tuneloop.retrain.encoder import Encoder

                hf_logging.disable_progress_bar()  # a load bar is noise in the server log
                started = time.perf_counter()
                self._encoder = Encoder(self.base, self.max_length)
                log.info("loaded encoder %s (dim %d) in %.1fs", self.base, self._encoder.dim,
                         time.perf_counter() - started)
            if not texts:
                return np.zeros((0, self._encoder.dim), dtype=np.float32)
            order = np.argsort([len(t) for t in texts], kind="stable")
            encoded = self._encoder.encode([texts[i] for i in order], batch_size=batch_size)
        out = np.empty_like(encoded)
        out[order] = encoded
        return out


def encoder_for(settings: Settings) -> SharedEncoder:
    """The process's encoder for ``[embedder] base`` ("" = ``[model] base``)."""
    return SharedEncoder.get(settings.embedder.base or settings.model.base, settings.model.max_length)


def embedding_array(vectors: np.ndarray) -> pa.Array:
    """A float32 matrix as an Arrow ``list<float>`` column (zero-copy values, one offsets array)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def pending_by_project(store: Store) -> dict[str, int]:
    """Rows still waiting for an embedding, per project."""
    return store.predictions.missing_embeddings_per_project()


def write_embeddings(store: Store, rowids: Sequence[int], projects: Sequence[str], ids: Sequence[str],
                     vectors: np.ndarray) -> int:
    """Set ``embedding`` of the given rows where it is still NULL, in one transaction; returns rows updated.

    Rows are addressed by the ``rowid`` read when they were selected, so the write fetches them
    directly instead of scanning for them (its cost, and so the time the write lock is held, stays
    flat as the table grows). ``project`` and ``id`` must match too: a row whose rowid changed
    meanwhile (a checkpoint may compact the table) is simply left NULL for the next round.
    """
    if len(ids) == 0:
        return 0
    table = pa.table({"rid": pa.array(list(rowids), pa.int64()), "project": pa.array(list(projects), pa.string()),
                      "id": pa.array(list(ids), pa.string()), "embedding": embedding_array(vectors)})
    return store.predictions.fill_embeddings(table)


class BackgroundEmbedder:
    """Fills in NULL embeddings, oldest rows first, in a daemon thread (see the module docstring).

    ``encode`` replaces the packaged encoder (e.g. a tiny one in tests); by default the process's
    :class:`SharedEncoder` for the settings is used, loaded on first need.
    """

    def __init__(self, store: Store, settings: Settings, encode: EncodeFn | None = None) -> None:
        self.store = store
        self.settings = settings
        self.batch_size = settings.embedder.batch_size
        self._shared = None if encode is not None else encoder_for(settings)
        self._encode = encode
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._rounds: deque[tuple[float, float, int]] = deque()  # (started, finished, rows), last RATE_WINDOW s
        self.embedded_total = 0
        self.pending = 0
        self.pending_projects: dict[str, int] = {}
        self.last_error: str | None = None
        self._pending_at = 0.0

    RATE_WINDOW = 10.0

    # -- one round -------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> np.ndarray:
        if self._encode is not None:
            return self._encode(texts)
        assert self._shared is not None
        return self._shared.encode(texts, batch_size=min(64, self.batch_size))

    @property
    def encoder_loaded(self) -> bool:
        return self._encode is not None or (self._shared is not None and self._shared.loaded)

    def run_once(self, limit: int | None = None) -> int:
        """Embed up to ``limit`` (default ``batch_size``) of the oldest rows without one; returns rows written."""
        started = time.monotonic()
        rows = self.store.predictions.oldest_without_embedding(limit or self.batch_size)
        if not rows:
            return 0
        rowids, projects, ids, texts = (list(col) for col in zip(*rows, strict=True))
        vectors = self.encode(texts)
        written = write_embeddings(self.store, rowids, projects, ids, vectors)
        self.embedded_total += written
        self._rounds.append((started, time.monotonic(), written))
        metrics.EMBEDDER_EMBEDDED.inc(written)
        return written

    def drain(self, timeout: float | None = None) -> int:
        """Run rounds in the calling thread until no row lacks an embedding (or ``timeout`` s pass)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        total = 0
        while deadline is None or time.monotonic() < deadline:
            n = self.run_once()
            total += n
            if n == 0:
                break
        self.refresh_pending(force=True)
        return total

    # -- progress --------------------------------------------------------------------------------
    def rows_per_second(self) -> float:
        now = time.monotonic()
        while self._rounds and now - self._rounds[0][1] > self.RATE_WINDOW:
            self._rounds.popleft()
        if not self._rounds:
            return 0.0
        return sum(n for _, _, n in self._rounds) / max(now - self._rounds[0][0], 1e-3)

    def refresh_pending(self, force: bool = False) -> None:
        """Recount pending rows (at most once a second unless ``force``) and publish the gauges."""
        now = time.monotonic()
        if force or now - self._pending_at >= 1.0:
            self.pending_projects = pending_by_project(self.store)
            self.pending = sum(self.pending_projects.values())
            self._pending_at = now
        metrics.EMBEDDER_PENDING.set(self.pending)
        metrics.EMBEDDER_RATE.set(self.rows_per_second())

    def status(self) -> dict[str, Any]:
        return {
            "running": self._thread is not None and self._thread.is_alive(),
            "pending": self.pending, "pending_by_project": dict(self.pending_projects),
            "embedded_total": self.embedded_total, "rows_per_second": round(self.rows_per_second(), 2),
            "encoder_loaded": self.encoder_loaded, "last_error": self.last_error,
        }

    # -- the thread ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tuneloop-embedder", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for work now instead of at the next poll (the collector may call it after an append)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        lower_priority(self.settings.embedder.nice)
        poll = self.settings.embedder.poll_seconds
        backoff = poll
        while not self._stop.is_set():
            try:
                self.refresh_pending()  # before a round too: a first round may take a while
                n = self.run_once()
                self.last_error = None
                backoff = poll
            except Exception as e:  # keep the server up; retry later (the rows stay NULL)
                if self._stop.is_set():
                    break
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("background embedding failed; retrying in %.0fs", backoff)
                self._wait(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            try:
                self.refresh_pending(force=n == 0)
            except Exception:
                log.debug("could not count pending embeddings", exc_info=True)
            if n == 0:
                self._wait(poll)

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


def lower_priority(nice: int) -> None:
    """Give the calling thread (and the torch worker threads it starts) a lower OS priority.

    Linux schedules threads individually and a thread inherits its creator's nice value, so the
    encoder's OpenMP pool, created on this thread's first forward pass, runs at the same priority:
    under contention the CPU goes to request handling first. Best effort elsewhere.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as e:
        log.info("could not lower the embedder's priority: %s", e)


