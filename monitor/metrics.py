"""Prometheus metrics of the service (prometheus_client only: any layer may import this module).

One process-wide :data:`REGISTRY`: every module registers its metrics here (the serving, embedder
and writer modules do), and ``GET /metrics`` (:mod:`tuneloop.monitor.api.routes.metrics`) renders
it in the text exposition format. Request latency is timed by route template in
:class:`tuneloop.monitor.api.middleware.RequestMetrics`.

Model health (drift per project and check, open alerts, accuracy, champion, label queue, last
retrain) comes from :class:`~tuneloop.monitor.model_health.ModelHealthCollector`, which reads the
store at scrape time. It lives in a registry of its own per runtime, rendered after this one.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# The standard process_*, python_info and python_gc_* series, as the default registry has them.
for _standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_standard)

ROWS = Counter(
    "tuneloop_rows", "Rows written by the collector, by kind (predictions|feedback) and outcome "
    "(accepted|duplicate|pending)", ["kind", "outcome"], registry=REGISTRY,
)
REJECTED = Counter(
    "tuneloop_requests_rejected", "Write requests refused before the store, by reason "
    "(queue_full|validation|too_large)", ["reason"], registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "tuneloop_request_duration_seconds", "HTTP request latency by method, route template and status",
    ["method", "route", "status"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WRITE_QUEUE_ROWS = Gauge(
    "tuneloop_write_queue_rows", "Rows queued for (or being written by) the single writer", registry=REGISTRY,
)
GROUP_COMMIT_ROWS = Histogram(
    "tuneloop_group_commit_rows", "Rows per write transaction of the group-commit writer", registry=REGISTRY,
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000),
)
GROUP_COMMIT_REQUESTS = Histogram(
    "tuneloop_group_commit_requests", "Requests coalesced into one write transaction", registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
GROUP_COMMIT_SECONDS = Histogram(
    "tuneloop_group_commit_seconds", "Duration of one group-commit write (including COMMIT)", registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SERVE_BATCH_TEXTS = Histogram(
    "tuneloop_serve_batch_texts", "Texts per forward pass (dynamic batching)", ["project"], registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
SERVE_FORWARD_SECONDS = Histogram(
    "tuneloop_serve_forward_seconds", "Model forward pass duration per batch", ["project"], registry=REGISTRY,
)
MODEL_SWAPS = Counter("tuneloop_model_swaps", "Hot-swaps of the served model", ["project"], registry=REGISTRY)
EMBEDDER_PENDING = Gauge(
    "tuneloop_embedder_pending_rows", "Predictions still waiting for a server-side embedding", registry=REGISTRY,
)
EMBEDDER_EMBEDDED = Counter(
    "tuneloop_embedder_embedded_rows", "Predictions embedded by the background embedder", registry=REGISTRY,
)
EMBEDDER_RATE = Gauge(
    "tuneloop_embedder_rows_per_second", "Background embedding throughput over the last 10 s", registry=REGISTRY,
)
