"""The storage layer: the only package that speaks SQL.

``Store`` owns the database (connection, transactions, migrations, the prediction and feedback
write path); repositories grouped by table family hang off it as attributes
(``store.alerts.open_for(project)``), so services receive the store and call typed methods.
A second backend implements the same classes.
"""

from tuneloop.monitor.storage.maintenance import import_export
from tuneloop.monitor.storage.projects import ProjectExistsError
from tuneloop.monitor.storage.store import (
    DEFAULT_PROJECT,
    FEEDBACK_COLUMNS,
    FEEDBACK_SOURCES,
    MIGRATIONS,
    PREDICTION_COLUMNS,
    AppendResult,
    FeedbackResult,
    Store,
    StoreError,
    StoreFull,
    StoreLockedError,
    hourly_part,
    is_disk_full,
    new_id,
    utcnow,
)

__all__ = [
    "DEFAULT_PROJECT", "FEEDBACK_COLUMNS", "FEEDBACK_SOURCES", "MIGRATIONS", "PREDICTION_COLUMNS",
    "AppendResult", "ProjectExistsError", "FeedbackResult", "Store", "StoreError", "StoreFull", "StoreLockedError",
    "hourly_part", "import_export", "is_disk_full", "new_id", "utcnow",
]
