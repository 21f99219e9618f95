"""Python SDK: log predictions and feedback from an application at almost no cost to the caller.

>>> from tuneloop.monitor.client import Client
>>> with Client("http://127.0.0.1:8765", token="tl_ingest_...") as tl:
...     pid = tl.log_prediction("the flight was late", "negative", probs={"negative": 0.9, "positive": 0.1})
...     tl.log_feedback(pid, "negative")

``log_prediction`` only appends a tuple to an in-memory buffer and returns the prediction's id
(a uuid4 hex made here, so a retried batch is a no-op on the server). A background thread sends
the buffer in batches (``batch_size`` rows, or whatever is there every ``flush_interval`` s) as
Arrow IPC, retrying with exponential backoff and jitter on connection errors, 429 and 5xx
(honouring ``Retry-After``). Nothing is dropped silently: a full buffer blocks the caller
(``on_full="block"``) or raises :class:`BufferFullError` (``on_full="raise"``); a batch the server
refuses for good (4xx), or still fails after ``max_retries``, is logged and kept in
``client.errors`` with its records (the latest ``max_errors`` failed requests; older ones are
counted in ``errors_dropped``, so a long-lived client cannot grow without bound). On a 422 only
the records the server named are set aside;
the rest of the batch is sent again. ``close()`` (also at exit, and on leaving ``with``) flushes.

Many rows at once: ``tl.log_predictions(df)`` takes a pandas DataFrame or a pyarrow Table with
the columns of ``POST /v1/predictions`` (``text`` and ``label`` required). A predict function can
log itself: ``@tl.logged(model_version="v3")`` (see :meth:`Client.logged`).

Inside an event loop (asyncio, FastAPI handlers): the ``log_*`` methods do no I/O, they only append
to the buffer; with ``on_full="raise"`` they never block either. Use ``await tl.aflush()``,
``await tl.aclose()`` and ``await tl.apredict(texts)`` there instead of the blocking calls.

This module needs only ``httpx`` and ``pyarrow`` (``pip install tuneloop`` installs just those):
numpy and pandas are used when the caller's data already comes from them.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx

from tuneloop.monitor.client_wire import (
    PRED_FIELDS,
    NotVectorisable,
    PredictionChunk,
    arrow_stream,
    as_arrow,
    as_rows,
    entries_table,
    per_row_tuples,
    predictions_table,
    wire_table,
)

log = logging.getLogger(__name__)

ARROW_STREAM = "application/vnd.apache.arrow.stream"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
__all__ = ["BufferFullError", "Client", "ClientError", "TuneloopError", "arrow_stream", "predictions_table"]

# One buffered prediction: (id, text, label, confidence, probs, embedding, model_version, ts, metadata)
_Pred = tuple[str, str, str, Any, Any, Any, Any, Any, Any]
# One buffered feedback: (id, prediction_id, label, source, annotator)
_Feedback = tuple[str, str, str, str, Any]


class BufferFullError(RuntimeError):
    """``on_full="raise"`` and ``max_buffer`` records are waiting to be sent."""


class TuneloopError(RuntimeError):
    """A synchronous call (``predict``) got an error answer."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass
class ClientError:
    """Records the server refused for good (``status`` 4xx) or that could not be delivered."""

    kind: Literal["predictions", "feedback"]
    status: int | None
    detail: Any
    ids: list[str]
    records: list[dict[str, Any]] = field(repr=False)


_PRED_FIELDS = PRED_FIELDS
_FEEDBACK_FIELDS = ("id", "prediction_id", "label", "source", "annotator")


class Client:
    """Buffered, retrying, idempotent client for ``POST /v1/predictions`` and ``/v1/feedback``."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        project: str = "default",
        batch_size: int = 500,
        flush_interval: float = 0.5,
        max_buffer: int = 100_000,
        on_full: Literal["block", "raise"] = "block",
        max_retries: int = 10,
        timeout: float = 30.0,
        backoff: float = 0.2,
        max_backoff: float = 30.0,
        exit_timeout: float = 10.0,
        max_errors: int = 1000,
    ) -> None:
        if on_full not in ("block", "raise"):
            raise ValueError("on_full must be 'block' or 'raise'")
        self.url = url.rstrip("/")
        self.project = project
        self.batch_size = max(1, int(batch_size))
        self.flush_interval = flush_interval
        self.max_buffer = max(1, int(max_buffer))
        self.on_full = on_full
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.exit_timeout = exit_timeout
        self.errors: list[ClientError] = []
        self.max_errors = max(1, int(max_errors))
        self.errors_dropped = 0
        """Failed requests no longer kept in ``errors`` (only the latest ``max_errors`` are)."""
        self.sent = {"predictions": 0, "feedback": 0}
        """Rows the server acknowledged (accepted or already stored)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._sync_http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._preds: deque[_Pred | PredictionChunk] = deque()
        self._feedback: deque[_Feedback] = deque()
        self._lock = threading.Condition()
        self._chunk_extra = 0  # rows in buffered chunks beyond one per entry (under _lock)
        self._taken = 0  # records moved from the buffers to the sender (under _lock)
        self._resolved = 0  # records delivered or set aside as errors (under _lock)
        self._wake = threading.Event()
        self._closing = False
        self._closed = False
        self._give_up_at: float | None = None  # close(timeout): stop retrying after this moment
        self._thread = threading.Thread(target=self._run, name="tuneloop-client", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # -- the caller's side (cheap) --------------------------------------------------------------
    def log_prediction(
        self,
        text: str,
        label: str,
        confidence: float | None = None,
        probs: dict[str, float] | None = None,
        embedding: Sequence[float] | None = None,
        model_version: str | None = None,
        ts: float | datetime | None = None,
        metadata: dict[str, Any] | None = None,
        id: str | None = None,  # noqa: A002 - the API's field name
    ) -> str:
        """Buffer one prediction; returns its id (use it for :meth:`log_feedback`).

        ``ts`` is Unix seconds or a datetime (naive = UTC); default: now. ``metadata`` must be
        JSON-serialisable (checked here, so a mistake raises in the caller, not later).
        """
        if self._closing:
            raise RuntimeError("the client is closed")
        if not isinstance(text, str) or not isinstance(label, str):
            raise TypeError("text and label must be str")
        if metadata is not None:
            metadata = json.dumps(metadata, allow_nan=False, separators=(",", ":"))
        rid = id or uuid.uuid4().hex
        if self._buffered() >= self.max_buffer:
            self._wait_for_space()
        self._preds.append((rid, text, label, confidence, probs, embedding, model_version,
                            time.time() if ts is None else ts, metadata))
        if len(self._preds) + self._chunk_extra >= self.batch_size:
            self._wake.set()
        return rid

    def log_feedback(
        self, prediction_id: str, label: str, source: str = "human", annotator: str | None = None,
        id: str | None = None,  # noqa: A002
    ) -> str:
        """Buffer the true label of a logged prediction; returns the feedback id."""
        if self._closing:
            raise RuntimeError("the client is closed")
        if source not in ("human", "import", "rule"):
            raise ValueError("source must be 'human', 'import' or 'rule'")
        fid = id or uuid.uuid4().hex
        if self._buffered() >= self.max_buffer:
            self._wait_for_space()
        self._feedback.append((fid, prediction_id, label, source, annotator))
        if len(self._feedback) >= self.batch_size:
            self._wake.set()
        return fid

    def log_predictions(self, data: Any) -> list[str]:
        """Buffer every row of a pandas DataFrame or pyarrow Table; returns the ids in row order.

        Columns: ``text`` and ``label`` (required), and any of ``id``, ``confidence``, ``probs``
        ({label: p} or a map column), ``embedding`` (list of floats), ``model_version``, ``ts``
        (datetime or Unix seconds), ``metadata`` (dict or JSON text). Other columns are refused.
        """
        table = as_arrow(data)
        unknown = set(table.column_names) - set(_PRED_FIELDS)
        if unknown:
            raise ValueError(f"unknown prediction columns {sorted(unknown)}; use {', '.join(_PRED_FIELDS)}")
        missing = {"text", "label"} - set(table.column_names)
        if missing:
            raise ValueError(f"missing required columns {sorted(missing)}")
        try:  # column by column: the rows are sent as slices of this table
            wire = wire_table(table, time.time())
        except NotVectorisable:  # a column only the per-row conversion takes
            rows = per_row_tuples(table, time.time())
            entries: list[Any] = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
            ids = [r[0] for r in rows]
        else:
            entries = [PredictionChunk(wire.slice(i, self.batch_size))
                       for i in range(0, wire.num_rows, self.batch_size)]
            ids = wire.column("id").to_pylist()
        for entry in entries:
            if self._closing:
                raise RuntimeError("the client is closed")
            if self._buffered() + len(entry) > self.max_buffer:
                self._wait_for_space(len(entry))
            with self._lock:
                if isinstance(entry, PredictionChunk):
                    self._preds.append(entry)
                    self._chunk_extra += len(entry) - 1
                else:
                    self._preds.extend(entry)
            self._wake.set()
        return ids

    def logged(self, fn: Callable[..., Any] | None = None, *, model_version: str | None = None) -> Any:
        """Decorator: log every call of a predict function (sync or async) with its inputs and outputs.

        The function's first argument is a text or a list of texts; it returns, per text, a label,
        ``(label, confidence)``, or a dict with ``label`` and optionally ``score``/``confidence`` and
        ``probs`` (the shape of ``transformers`` pipelines). Its return value is passed through.

        >>> @tl.logged(model_version="v3")
        ... def predict(texts): return [{"label": "negative", "score": 0.9} for _ in texts]
        """

        def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.iscoroutinefunction(func):
                @functools.wraps(func)
                async def async_wrapper(texts: Any, *args: Any, **kwargs: Any) -> Any:
                    out = await func(texts, *args, **kwargs)
                    self._log_outputs(texts, out, model_version)
                    return out
                return async_wrapper

            @functools.wraps(func)
            def wrapper(texts: Any, *args: Any, **kwargs: Any) -> Any:
                out = func(texts, *args, **kwargs)
                self._log_outputs(texts, out, model_version)
                return out
            return wrapper

        return wrap if fn is None else wrap(fn)

    def _log_outputs(self, texts: Any, out: Any, model_version: str | None) -> None:
        single = isinstance(texts, str)
        text_list = [texts] if single else list(texts)
        outputs = [out] if single or not isinstance(out, list | tuple) or _is_pair(out) else list(out)
        if len(outputs) != len(text_list):
            log.warning("tuneloop: %d outputs for %d inputs; not logged", len(outputs), len(text_list))
            return
        for text, output in zip(text_list, outputs, strict=True):
            label, confidence, probs = _parse_output(output)
            self.log_prediction(text, label, confidence=confidence, probs=probs, model_version=model_version)

    def _wait_for_space(self, needed: int = 1) -> None:
        if self.on_full == "raise":
            raise BufferFullError(f"{self.max_buffer} records are waiting to be sent (max_buffer)")
        self._wake.set()
        limit = max(0, self.max_buffer - needed)
        with self._lock:
            while self._buffered() > limit and not self._closed:
                self._lock.wait(0.1)

    def _buffered(self) -> int:
        """Records in the buffers (a chunk counts its rows); exact under _lock."""
        return len(self._preds) + self._chunk_extra + len(self._feedback)

    @property
    def pending(self) -> int:
        """Records logged but not yet acknowledged or set aside."""
        with self._lock:
            return self._taken - self._resolved + self._buffered()

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything logged so far; True when all of it was acknowledged or set aside."""
        with self._lock:
            target = self._taken + self._buffered()
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._resolved < target:
                if not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(0.1 if remaining is None else min(remaining, 0.1))
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush, stop the sender and release connections; True when ``errors`` is empty.

        With ``timeout``, retries stop at that deadline and what is still unsent is reported in
        ``errors`` (status None) and logged.
        """
        if self._closed:
            return not (self.errors or self.errors_dropped)
        self._closing = True
        if timeout is not None:
            self._give_up_at = time.monotonic() + timeout
        self._wake.set()
        self._thread.join(None if timeout is None else timeout + 5)
        self._closed = True
        atexit.unregister(self._at_exit)
        self._set_aside_unsent()
        self._http.close()
        self._sync_http.close()
        with self._lock:
            self._lock.notify_all()
        return not (self.errors or self.errors_dropped)

    def _at_exit(self) -> None:
        self.close(self.exit_timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- synchronous calls ----------------------------------------------------------------------
    def predict(self, texts: Iterable[str], project: str | None = None) -> dict[str, Any]:
        """``POST /v1/predict``: the served champion's answers (each prediction is logged by the server)."""
        r = self._sync_http.post("/v1/predict", json={"texts": list(texts), "project": project or self.project})
        if r.status_code >= 400:
            raise TuneloopError(r.status_code, _detail(r))
        return r.json()

    # -- for event loops: the same calls without blocking the loop -------------------------------
    async def aflush(self, timeout: float | None = None) -> bool:
        """:meth:`flush` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.flush, timeout)

    async def aclose(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.close, timeout)

    async def apredict(self, texts: Iterable[str], project: str | None = None) -> dict[str, Any]:
        """:meth:`predict` over an async HTTP connection."""
        async with httpx.AsyncClient(base_url=self.url, headers=self._sync_http.headers,
                                     timeout=self._sync_http.timeout) as http:
            r = await http.post("/v1/predict", json={"texts": list(texts), "project": project or self.project})
        if r.status_code >= 400:
            raise TuneloopError(r.status_code, _detail(r))
        return r.json()

    # -- the sender thread ----------------------------------------------------------------------
    def _take(self, buffer: deque, limit: int) -> tuple[list, int]:
        """Entries from the front of ``buffer`` holding at most ``limit`` records (a chunk is never
        split; a first chunk is taken whole); returns them and their record count."""
        batch, n = [], 0
        with self._lock:
            while buffer:
                size = len(buffer[0]) if isinstance(buffer[0], PredictionChunk) else 1
                if batch and n + size > limit or n >= limit:
                    break
                batch.append(buffer.popleft())
                n += size
                self._chunk_extra -= size - 1
            self._taken += n
            self._lock.notify_all()
        return batch, n

    def _resolve(self, n: int) -> None:
        with self._lock:
            self._resolved += n
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            while True:
                # Count feedback first: every prediction logged before a counted feedback row is then
                # in the counted predictions, which go first. So feedback never overtakes its
                # prediction, and neither kind can starve the other.
                n_feedback = len(self._feedback)
                with self._lock:
                    n_preds = len(self._preds) + self._chunk_extra
                if not n_feedback and not n_preds:
                    break
                for kind, buffer, n in (("predictions", self._preds, n_preds),
                                        ("feedback", self._feedback, n_feedback)):
                    while n > 0:
                        batch, taken = self._take(buffer, min(n, self.batch_size))
                        n -= taken
                        self._deliver(kind, batch, taken)
            if self._closing:
                return

    def _deliver(self, kind: Literal["predictions", "feedback"], records: list, n: int | None = None) -> None:
        """Send one batch until acknowledged, or set (some of) it aside; resolves every record.

        ``records`` may hold chunks (``n`` records in all): sent as they are, and turned into one
        tuple per record only when some records must be told apart (refused, too large, unencodable).
        """
        if n is None:
            n = len(records)
        try:
            body, content_type = self._encode(kind, records)
        except Exception as e:  # a value the wire format cannot carry: find the culprits
            records = as_rows(records)
            if len(records) == 1:
                self._set_aside(kind, records, None, f"cannot be encoded: {e}")
                return
            for rec in records:
                self._deliver(kind, [rec])
            return
        try:
            status, detail = self._post_with_retries(f"/v1/{kind}", body, content_type)
        except Exception as e:  # e.g. the connection pool closed by close(timeout): never lose track
            status, detail = None, f"{type(e).__name__}: {e}"
        if status is not None and status < 300:
            self.sent[kind] += n
            self._resolve(n)
            return
        if n != len(records):
            records = as_rows(records)
        if status == 422 and len(records) > 1 and (bad := _bad_records(detail, len(records))):
            good = [r for i, r in enumerate(records) if i not in bad]
            self._set_aside(kind, [records[i] for i in sorted(bad)], 422,
                            [d for d in detail if _record_index(d) in bad])
            if good:
                self._deliver(kind, good)
        elif status == 413 and len(records) > 1:
            half = len(records) // 2
            self._deliver(kind, records[:half])
            self._deliver(kind, records[half:])
        else:
            self._set_aside(kind, records, status, detail)

    def _post_with_retries(self, path: str, body: bytes, content_type: str) -> tuple[int | None, Any]:
        attempt = 0
        while True:
            retry_after = None
            try:
                r = self._http.post(path, content=body, headers={"Content-Type": content_type},
                                    params={"project": self.project})
                status, detail = r.status_code, (None if r.status_code < 300 else _detail(r))
                if status < 300 or status not in RETRY_STATUSES:
                    return status, detail
                retry_after = _retry_after(r)
            except httpx.HTTPError as e:  # refused, reset, timed out: the batch may or may not be stored
                status, detail = None, f"{type(e).__name__}: {e}"
            attempt += 1
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            if retry_after is not None:
                delay = max(delay, retry_after)
            give_up = self._give_up_at is not None and time.monotonic() + delay > self._give_up_at
            if attempt > self.max_retries or give_up:
                return status, f"gave up after {attempt} attempts: {detail}"
            log.debug("POST %s failed (%s); retry %d in %.2f s", path, detail, attempt, delay)
            time.sleep(delay)

    def _encode(self, kind: str, records: list) -> tuple[bytes, str]:
        if kind == "feedback":
            rows = [dict(zip(_FEEDBACK_FIELDS, r, strict=True)) for r in records]
            return json.dumps({"records": rows, "project": self.project}).encode(), "application/json"
        return arrow_stream(entries_table(records)), ARROW_STREAM

    def _set_aside(self, kind: Literal["predictions", "feedback"], records: list, status: int | None,
                   detail: Any) -> None:
        fields = _PRED_FIELDS if kind == "predictions" else _FEEDBACK_FIELDS
        err = ClientError(kind, status, detail, [r[0] for r in records],
                          [dict(zip(fields, r, strict=True)) for r in records])
        self.errors.append(err)
        if len(self.errors) > self.max_errors:
            extra = len(self.errors) - self.max_errors
            del self.errors[:extra]
            self.errors_dropped += extra
        log.error("tuneloop: %d %s not stored (HTTP %s): %s", len(records), kind, status, detail)
        self._resolve(len(records))

    def _set_aside_unsent(self) -> None:
        """After close: anything still buffered (the sender gave up or is stuck) goes to ``errors``."""
        for kind, buffer in (("predictions", self._preds), ("feedback", self._feedback)):
            records = as_rows(self._take(buffer, self._buffered())[0])
            if records:
                self._set_aside(kind, records, None, "client closed before these could be sent")


def _is_pair(out: Any) -> bool:
    return isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str)


def _parse_output(output: Any) -> tuple[str, float | None, dict[str, float] | None]:
    """A predict function's answer for one text -> (label, confidence, probs)."""
    if isinstance(output, str):
        return output, None, None
    if _is_pair(output):
        return output[0], float(output[1]), None
    if isinstance(output, dict) and isinstance(output.get("label"), str):
        score = output.get("confidence", output.get("score"))
        return output["label"], None if score is None else float(score), output.get("probs")
    raise TypeError(f"cannot read a label from the predict function's output {output!r}")


def _detail(r: httpx.Response) -> Any:
    try:
        return r.json().get("detail", r.text)
    except ValueError:
        return r.text[:500]


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return float(r.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _record_index(entry: Any) -> int | None:
    loc = entry.get("loc") if isinstance(entry, dict) else None
    if isinstance(loc, list) and len(loc) >= 3 and loc[:2] == ["body", "records"] and isinstance(loc[2], int):
        return loc[2]
    return None


def _bad_records(detail: Any, n: int) -> set[int]:
    """Indices a 422 names; empty when any problem is not about one record (then the batch fails whole)."""
    if not isinstance(detail, list) or not detail:
        return set()
    indices = [_record_index(d) for d in detail]
    if any(i is None or not 0 <= i < n for i in indices):
        return set()
    return set(indices)  # type: ignore[arg-type]
