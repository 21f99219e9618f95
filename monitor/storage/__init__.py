"""The storage layer: the only package that speaks SQL.

``Store`` owns the database (connection, transactions and their typed errors, migrations, and the
prediction and feedback write path that the writer acknowledges after COMMIT). Repositories grouped
by table family hang off it as attributes, so services receive the store and call typed methods:

========================  ==========================================================================
``store.predictions``     predictions beyond ingest: export pages, per-minute stats, embeddings, keys
``store.feedback``        latest labels, training and replay rows, retraction
``store.versions``        ``model_versions`` and ``promotions`` (champion lookups, transitions)
``store.references``      ``reference_rows`` (a version's or an import's reference)
``store.checks``          ``drift_checks``
``store.alerts``          ``alerts``
``store.deliveries``      ``alert_deliveries`` (webhook outbox)
``store.runs``            ``retrain_runs``
``store.tokens``          ``tokens``
``store.projects``        ``projects`` and per-project counts
``store.maintenance``     backup export, restore import, retention
========================  ==========================================================================

SQL is written so both engines accept it; the few spellings that differ come from ``store.dialect``.
``open_postgres`` gives the PostgreSQL store (``store.url``), same methods, same repositories.
"""

from tuneloop.monitor.storage.alerts import AlertRepository, CheckRepository, DeliveryRepository
from tuneloop.monitor.storage.batches import FEEDBACK_COLUMNS, FEEDBACK_SOURCES, PREDICTION_COLUMNS, hourly_part
from tuneloop.monitor.storage.clock import new_id, utcnow
from tuneloop.monitor.storage.errors import StoreRejected, StoreUnavailable
from tuneloop.monitor.storage.maintenance import MaintenanceRepository, import_export
from tuneloop.monitor.storage.migrations import MIGRATIONS
from tuneloop.monitor.storage.predictions import (
    FeedbackNotFound,
    FeedbackRepository,
    PredictionRepository,
    RetractRefused,
)
from tuneloop.monitor.storage.projects import ProjectExistsError, ProjectRepository
from tuneloop.monitor.storage.rows import clean_record, is_missing, none_if_missing, records
from tuneloop.monitor.storage.runs import RunRepository
from tuneloop.monitor.storage.store import (
    DEFAULT_PROJECT,
    AppendResult,
    FeedbackResult,
    Store,
    StoreError,
    StoreFull,
    StoreLockedError,
    is_disk_full,
)
from tuneloop.monitor.storage.tokens import TokenRepository
from tuneloop.monitor.storage.versions import ReferenceRepository, VersionRepository


def open_postgres(url: str, *, read_only: bool = False) -> Store:
    """The store in the PostgreSQL database at ``url``; psycopg (the ``postgres`` extra) is imported only here."""
    try:
        from tuneloop.monitor.storage.postgres import PostgresStore
    except ImportError as e:
        raise StoreError(f"store.url names a PostgreSQL database but {e.name} is not installed "
                         "(pip install 'tuneloop[postgres]')") from None
    return PostgresStore(url, read_only=read_only)


__all__ = [
    "DEFAULT_PROJECT", "FEEDBACK_COLUMNS", "FEEDBACK_SOURCES", "MIGRATIONS", "PREDICTION_COLUMNS",
    "AlertRepository", "AppendResult", "CheckRepository", "DeliveryRepository", "FeedbackNotFound",
    "FeedbackRepository", "FeedbackResult", "MaintenanceRepository", "PredictionRepository", "ProjectExistsError",
    "ProjectRepository", "ReferenceRepository", "RetractRefused", "RunRepository", "Store", "StoreError", "StoreFull",
    "StoreLockedError", "StoreRejected", "StoreUnavailable", "TokenRepository", "VersionRepository", "clean_record",
    "hourly_part", "import_export", "is_disk_full", "is_missing", "new_id", "none_if_missing", "open_postgres",
    "records", "utcnow",
]
