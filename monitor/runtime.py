"""The composition root: builds every long-lived service of a process in one fixed order.

The server (the FastAPI lifespan, which the demo runs too) goes through :class:`Runtime`, the
CLI without a server through :class:`LocalRuntime`: one place says what exists, what it needs
and in which order it starts and stops. Each service receives only what it uses (the store, the
settings, the serving it hot-swaps), never the runtime itself.

Order: store -> tokens -> scheduler -> writer -> serving -> drift -> retrain -> leadership (the
leader recovers interrupted retrain runs and starts the embedder) -> champion listener -> model
health -> scheduled jobs. :meth:`Runtime.stop` runs in reverse: the scheduler waits for
its running jobs before the services they use stop, and the writer drains its queue (every
acknowledged row is committed) before the store closes.

Several replicas on one PostgreSQL database (``store.url``) each build all of this; the leader
election (:mod:`tuneloop.monitor.leader`) lets only one of them run the scheduled jobs and the
embedder, and the champion listener keeps every replica serving the registry's champion. On DuckDB
the one process is always the leader and nothing listens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from tuneloop.monitor.config import Settings
from tuneloop.monitor.leader import AdvisoryLockLeader, LeaderGauge, SoleLeader, elect
from tuneloop.monitor.storage import DEFAULT_PROJECT, Store, open_postgres

if TYPE_CHECKING:  # imported where they are built: a CLI command without a server must start fast
    from prometheus_client import CollectorRegistry

    from tuneloop.monitor.auth import TokenRegistry
    from tuneloop.monitor.checks import DriftService
    from tuneloop.monitor.embedder import BackgroundEmbedder
    from tuneloop.monitor.retraining import RetrainService
    from tuneloop.monitor.scheduler import Scheduler
    from tuneloop.monitor.serving import Serving
    from tuneloop.monitor.storage.notify import ChampionListener
    from tuneloop.monitor.writer import Writer

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Every service of one process, typed; built by :meth:`build`, run by :meth:`start`/:meth:`stop`."""

    settings: Settings
    store: Store
    tokens: TokenRegistry
    scheduler: Scheduler
    writer: Writer
    serving: Serving
    drift: DriftService
    retrain: RetrainService
    embedder: BackgroundEmbedder | None
    """Only when ``[embedder] enabled``."""
    model_health: CollectorRegistry
    """Model-health gauges read from the store at scrape time (one registry per runtime)."""
    own_store: bool = True
    ready: bool = False
    leadership: SoleLeader | AdvisoryLockLeader | None = None
    """Set by :meth:`start`: whether this process runs the scheduled jobs and the embedder."""
    listener: ChampionListener | None = None
    """PostgreSQL only: hot-swaps a champion changed by another replica."""
    _stops: list[tuple[str, Callable[[], Any]]] = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, settings: Settings, store: Store | None = None) -> Runtime:
        """Open the store (unless given) and construct every service; nothing runs until :meth:`start`."""
        from prometheus_client import CollectorRegistry

        from tuneloop.monitor.auth import TokenRegistry
        from tuneloop.monitor.checks import DriftService
        from tuneloop.monitor.embedder import BackgroundEmbedder
        from tuneloop.monitor.model_health import ModelHealthCollector
        from tuneloop.monitor.retraining import RetrainService
        from tuneloop.monitor.scheduler import Scheduler
        from tuneloop.monitor.serving import Serving
        from tuneloop.monitor.writer import Writer

        own_store = store is None
        store = store or open_store(settings)
        writer = Writer.from_settings(store, settings)
        serving = Serving(store, settings, writer)
        health = CollectorRegistry(auto_describe=False)
        health.register(ModelHealthCollector(store))
        runtime = cls(
            settings=settings, store=store, tokens=TokenRegistry(store), scheduler=Scheduler(),
            writer=writer, serving=serving, drift=DriftService(store, settings),
            retrain=RetrainService(store, settings, serving),
            embedder=BackgroundEmbedder(store, settings) if settings.embedder.enabled else None,
            model_health=health, own_store=own_store,
        )
        runtime.scheduler.gate = runtime.leads
        runtime.retrain.leads = runtime.leads
        health.register(LeaderGauge(runtime.leads))
        health.register(runtime.scheduler)
        return runtime

    def leads(self) -> bool:
        """Whether this process is the leader now (runs the scheduled jobs and the embedder)."""
        return self.leadership is not None and self.leadership.is_leader

    def start(self) -> None:
        """Start the services in order and schedule the background jobs; then the runtime is ready."""
        try:
            self._start_services()
        except BaseException:
            self.stop()
            raise
        self.ready = True
        log.info("tuneloop serving %s", self.settings.db_path)

    def _start_services(self) -> None:
        self.writer.start()
        self._stops.append(("writer", self.writer.stop))  # drains the queue: every acknowledged row commits
        self._stops.append(("serving", self.serving.stop))
        self.serving.server(DEFAULT_PROJECT)  # loads the champion now when one is registered
        self._stops.append(("drift", self.drift.stop))
        self._stops.append(("retrain", self.retrain.stop))
        self.leadership = elect(self.settings.store.url, self._lead, self._follow,
                                self.settings.store.leader_retry_seconds, self.settings.store.leader_check_seconds)
        self.leadership.start()
        self._stops.append(("leadership", self.leadership.stop))
        if self.settings.store.url:
            from tuneloop.monitor.replicas import ReplicaSync
            from tuneloop.monitor.storage.notify import ChampionListener

            self.listener = ChampionListener(self.settings.store.url,
                                             ReplicaSync(self.store, self.serving, self.tokens),
                                             self.settings.store.champion_poll_seconds)
            self.listener.start()
            self._stops.append(("champion listener", self.listener.stop))
            from tuneloop.monitor.run_queue import RunQueue

            runner = RunQueue(self.retrain, self.leads)
            runner.start()
            self._stops.append(("retrain runner", runner.stop))
        self._schedule_jobs()
        self.scheduler.start()
        self._stops.append(("scheduler", self.scheduler.stop))

    def _lead(self) -> None:
        """Became the leader: runs whose replica is gone are failed, the embedder starts."""
        self.retrain.recover(sole=not self.settings.store.url)
        if self.embedder is not None:
            self.embedder.start()

    def _follow(self) -> None:
        """No longer the leader: the embedder stops (the scheduler's jobs pass by themselves)."""
        if self.embedder is not None:
            self.embedder.stop()

    def _schedule_jobs(self) -> None:
        from tuneloop.monitor.operations import RETENTION_FIRST_RUN_SECONDS, run_retention

        s = self.settings
        self.scheduler.every("drift-checks", s.drift.interval_seconds, self.drift.run_all)
        if s.retrain.enabled:
            self.scheduler.every("retrain-policy", s.retrain.check_interval_seconds, self.retrain.check_policies)
            if s.retrain.cron:
                self.scheduler.cron("retrain-cron", s.retrain.cron, self.retrain.run_scheduled)
        r = s.retention
        self.scheduler.every(
            "retention", r.interval_hours * 3600,
            lambda: run_retention(self.store, r.raw_days, pending_hours=r.pending_feedback_hours),
            first_run_in=RETENTION_FIRST_RUN_SECONDS,
        )
        from tuneloop.monitor.rescore import RESCORE_INTERVAL_SECONDS, ReferenceRescorer  # after each promotion
        rescorer = ReferenceRescorer(self.store, self.serving)
        self.scheduler.every("reference-rescore", RESCORE_INTERVAL_SECONDS, rescorer.run_all)

    def stop(self) -> None:
        """Stop what was started, in reverse order, then close the store if this runtime opened it."""
        self.ready = False
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception:  # keep shutting the rest down
                log.exception("stopping %s failed", name)
        if self.own_store:
            self.store.close()

    def readiness(self) -> tuple[dict[str, bool], dict[str, Any]]:
        """(checks, info) for ``/readyz``: the DB answers, start-up finished, writer and models fine."""
        checks = {"db": True, "started": self.ready}
        try:
            self.store.ping()
        except Exception:
            checks["db"] = False
        checks["writer"] = self.writer.ready
        checks["serving"] = self.serving.ready()
        return checks, {"serving": self.serving.readiness_info(), "leader": self.leads()}


@dataclass
class LocalRuntime:
    """A process without a server (the CLI's local mode): the store and the services that need no thread."""

    settings: Settings
    store: Store

    @cached_property
    def retrain(self) -> RetrainService:
        """Built on first use. Nothing serves models here, so a promotion (even a retrain's
        auto-promotion) changes only the registry; a server started later loads the champion."""
        from tuneloop.monitor.retraining import RetrainService

        return RetrainService(self.store, self.settings)


def open_store(settings: Settings, *, read_only: bool = False) -> Store:
    """The settings' PostgreSQL database (``store.url``) or DB file (created with its data directory
    unless ``read_only``)."""
    if not read_only:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.store.url:
        return open_postgres(settings.store.url, read_only=read_only)
    return Store(settings.db_path, read_only=read_only)


@contextmanager
def running(settings: Settings, store: Store | None = None) -> Iterator[Runtime]:
    """A built and started runtime, stopped on exit (the server's lifespan)."""
    runtime = Runtime.build(settings, store)
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


@contextmanager
def local(settings: Settings, *, read_only: bool = False) -> Iterator[LocalRuntime]:
    """The store and the thread-free services for a process without a server; the store closes on exit."""
    store = open_store(settings, read_only=read_only)
    try:
        yield LocalRuntime(settings=settings, store=store)
    finally:
        store.close()
