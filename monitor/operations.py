"""Operations on the production record: consistent backups, offline restore, retention.

* :func:`backup` exports the whole store while the server keeps serving: one read transaction
  (DuckDB MVCC: a snapshot, writers are not blocked) runs ``EXPORT DATABASE`` to Parquet and
  counts every table, so the copy holds exactly the transactions committed before it started —
  an acknowledged row is in it or was acknowledged after it began, never half of a batch. The
  complete model version directories the registry names are copied along (they are immutable),
  and a ``tuneloop-backup.json`` manifest is written last; the directory is built under a temp
  name and renamed, so a backup directory is always whole.
* :func:`restore` rebuilds a DuckDB file from a backup, offline: into a temp file, verified
  against the manifest's row counts, then renamed into place. It refuses a database file that
  a process has open, and keeps a replaced file next to it instead of deleting it.
* On PostgreSQL (``store.url``) the database part is a ``pg_dump`` archive of one exported snapshot
  (the manifest's counts are read in that same snapshot), and :func:`restore_postgres` loads it with
  ``pg_restore`` in one transaction into a database no server is connected to; tables already there
  are refused, or with ``overwrite`` kept in a schema ``replaced_<time>``.
* :func:`run_retention` deletes raw predictions and feedback older than
  ``retention.raw_days`` (whole hours, by prediction time), in bounded batches. The hourly traffic
  rollup (``prediction_hourly``) keeps counting them (rows it has not caught up with are rolled up
  in the transaction that deletes them), and the labelled accuracy of the rows being
  deleted is frozen into ``feedback_hourly`` in the same transaction, so dashboards keep their history.

HTTP (role admin): ``POST /v1/admin/backup``, ``GET /v1/admin/backups``,
``POST /v1/admin/retention`` (:mod:`tuneloop.monitor.api.routes.operations`). The runtime's
scheduler runs retention every ``retention.interval_hours``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from tuneloop.monitor.config import redact_password
from tuneloop.monitor.storage import (
    Store,
    StoreError,
    StoreFull,
    StoreLockedError,
    import_export,
    is_disk_full,
    open_postgres,
    utcnow,
)
from tuneloop.monitor.storage.maintenance import RETENTION_BATCH_ROWS

log = logging.getLogger(__name__)

MANIFEST = "tuneloop-backup.json"
FORMAT = "tuneloop-backup"
FORMAT_VERSION = 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
RETENTION_FIRST_RUN_SECONDS = 600
"""The first scheduled retention runs this long after start-up (not at start: restarts stay cheap)."""


class BackupError(StoreError):
    """A backup or restore that cannot proceed (message says why)."""


# -- backup ----------------------------------------------------------------------------------------


@dataclass
class BackupResult:
    path: str
    name: str
    created_at: str
    schema_version: int
    tables: dict[str, int]
    models: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def validate_backup_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid backup name {name!r}: use 1-64 of A-Z a-z 0-9 . _ - , starting with a letter "
                         "or digit")
    return name


def default_backup_name(now: datetime | None = None) -> str:
    return f"backup-{(now or utcnow()).strftime('%Y%m%d-%H%M%S')}"


def _version_dirs(store: Store, models_dir: Path) -> list[Path]:
    """Complete version directories the registry names, inside ``models_dir``."""
    from tuneloop.retrain.versions import is_complete

    root = models_dir.resolve()
    out: dict[str, Path] = {}
    for path in store.maintenance.version_paths():
        p = Path(path).resolve()
        if p.parent == root and is_complete(p):
            out[p.name] = p
    return [out[k] for k in sorted(out)]


def backup(store: Store, dest: str | os.PathLike[str], *, models_dir: str | os.PathLike[str] | None = None
           ) -> BackupResult:
    """Write a consistent backup of ``store`` to the new directory ``dest`` (see the module docstring).

    Safe while the store takes writes. ``models_dir`` (optional) adds the registered, complete
    model version directories under ``dest/models``. FileExistsError if ``dest`` exists.
    """
    t0 = time.perf_counter()
    dest = Path(dest).resolve()
    if dest.exists():
        raise FileExistsError(f"backup destination {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tables, schema_version = store.maintenance.export(tmp / "db")
        models: list[str] = []
        if models_dir is not None:
            for version_dir in _version_dirs(store, Path(models_dir)):
                shutil.copytree(version_dir, tmp / "models" / version_dir.name)
                models.append(version_dir.name)
        created = utcnow().isoformat(timespec="seconds")
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_at": created,
                    "schema_version": schema_version, "tables": tables, "models": models,
                    "source_db": str(store.path), "duckdb_version": duckdb.__version__,
                    "backend": store.dialect.name}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.rename(tmp, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, duckdb.Error | OSError) and is_disk_full(e):
            raise StoreFull(f"backup to {dest}: the disk is full ({e})") from e
        raise
    result = BackupResult(str(dest), dest.name, created, schema_version, tables, models, _dir_bytes(dest),
                          round(time.perf_counter() - t0, 3))
    log.info("backup %s: %d tables, %d rows, %d model versions, %.1f MB in %.2f s", dest, len(tables),
             sum(tables.values()), len(models), result.bytes / 1e6, result.seconds)
    return result


def read_manifest(src: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a backup directory; BackupError when ``src`` is not a tuneloop backup."""
    path = Path(src) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{src} is not a tuneloop backup (no {MANIFEST})") from None
    except ValueError as e:
        raise BackupError(f"{path} is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or not (Path(src) / "db").is_dir():
        raise BackupError(f"{src} is not a tuneloop backup (unknown format)")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise BackupError(f"{src} was written by a newer tuneloop (format {manifest['format_version']})")
    return manifest


def list_backups(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Backups in ``directory`` (newest first): name, created_at, schema_version, tables, models."""
    root = Path(directory)
    out = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") or not (p / MANIFEST).is_file():
                continue
            try:
                m = read_manifest(p)
            except BackupError:
                continue
            out.append({"name": p.name, "path": str(p), "created_at": m["created_at"],
                        "schema_version": m["schema_version"], "tables": m["tables"], "models": m.get("models", [])})
    return sorted(out, key=lambda b: (b["created_at"], b["name"]), reverse=True)


# -- restore ---------------------------------------------------------------------------------------


@dataclass
class RestoreResult:
    db_path: str
    tables: dict[str, int]
    models: list[str]
    replaced: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _in_use(db_path: Path) -> bool:
    """True when another process holds the DuckDB file open for writing (DuckDB's file lock)."""
    try:
        con = duckdb.connect(str(db_path), read_only=True)  # read-only: checking must not change the file
    except duckdb.IOException as e:
        if "lock" in str(e).lower():
            return True
        raise BackupError(f"cannot open {db_path}: {e}") from None
    con.close()
    return False


def restore(src: str | os.PathLike[str], db_path: str | os.PathLike[str], *,
            models_dir: str | os.PathLike[str] | None = None, overwrite: bool = False) -> RestoreResult:
    """Rebuild ``db_path`` from the backup directory ``src`` (offline: no process may hold ``db_path``).

    Refuses an existing ``db_path`` unless ``overwrite``; even then a file in use is refused
    (:class:`StoreLockedError`) and the replaced file is kept as ``<db>.replaced-<time>``. The new
    file is verified against the manifest's row counts before it is renamed into place. With
    ``models_dir``, the backup's model versions are copied there (existing ones are kept) and the
    registry's paths are pointed at them.
    """
    src = Path(src).resolve()
    manifest = read_manifest(src)
    _check_backend(src, manifest, "duckdb")
    db_path = Path(db_path).resolve()
    wal = db_path.with_name(db_path.name + ".wal")
    if db_path.exists():
        if _in_use(db_path):
            raise StoreLockedError(f"{db_path} is in use by another process (stop tuneloop serve first); "
                                   "restore never overwrites a database in use")
        if not overwrite:
            raise FileExistsError(f"{db_path} exists; restore into a new path or pass overwrite (--force)")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(f".{db_path.name}.restore-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        got = import_export(src / "db", tmp)
        _check_counts(manifest, got)
        replaced = None
        if db_path.exists():
            stamp = utcnow().strftime("%Y%m%d-%H%M%S")
            replaced_path = db_path.with_name(f"{db_path.name}.replaced-{stamp}")
            os.rename(db_path, replaced_path)
            if wal.exists():  # never let an old WAL be replayed onto the restored file
                os.rename(wal, replaced_path.with_name(replaced_path.name + ".wal"))
            replaced = str(replaced_path)
        os.rename(tmp, db_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
        raise
    models = _restore_models(src, lambda: Store(db_path), Path(models_dir)) if models_dir is not None else []
    log.info("restored %s from %s (%d rows)", db_path, src, sum(got.values()))
    return RestoreResult(str(db_path), got, models, replaced)


def restore_postgres(src: str | os.PathLike[str], url: str, *, models_dir: str | os.PathLike[str] | None = None,
                     overwrite: bool = False) -> RestoreResult:
    """Load the backup ``src`` of a PostgreSQL store into the database at ``url`` (offline: no server connected).

    ``pg_restore`` runs as one transaction, so a failed restore leaves nothing behind. Tables already in
    the database are refused unless ``overwrite``; then they are kept in the schema ``replaced`` names.
    The restored rows are checked against the manifest, and the model versions are handled as by
    :func:`restore`.
    """
    from tuneloop.monitor.storage.pg_backup import restore_dump

    src = Path(src).resolve()
    manifest = read_manifest(src)
    _check_backend(src, manifest, "postgresql")
    got, replaced = restore_dump(src / "db", url, overwrite=overwrite, stamp=utcnow().strftime("%Y%m%d_%H%M%S"))
    _check_counts(manifest, got)
    models = (_restore_models(src, lambda: open_postgres(url), Path(models_dir)) if models_dir is not None else [])
    log.info("restored %s from %s (%d rows)", redact_password(url), src, sum(got.values()))
    return RestoreResult(redact_password(url), got, models, replaced and f"schema {replaced}")


def _check_backend(src: Path, manifest: dict[str, Any], backend: str) -> None:
    """A DuckDB export restores into a DuckDB file, a ``pg_dump`` into PostgreSQL: say which setting to change."""
    made_by = manifest.get("backend", "duckdb")
    if made_by != backend:
        where = "with store.url empty (the DuckDB file)" if made_by == "duckdb" else "with store.url set to PostgreSQL"
        raise BackupError(f"{src} is a backup of a {made_by} store; restore it {where}")


def _check_counts(manifest: dict[str, Any], got: dict[str, int]) -> None:
    if got != manifest["tables"]:
        diff = {t: (manifest["tables"].get(t), got.get(t)) for t in set(got) | set(manifest["tables"])
                if manifest["tables"].get(t) != got.get(t)}
        raise BackupError(f"restored row counts differ from the backup's manifest: {diff}")


def _restore_models(src: Path, open_target: Callable[[], Store], models_dir: Path) -> list[str]:
    """Copy the backup's version directories into ``models_dir`` and point the registry at them."""
    from tuneloop.retrain.versions import is_complete

    copied = []
    models_dir.mkdir(parents=True, exist_ok=True)
    root = models_dir.resolve()
    if (src / "models").is_dir():
        for version_dir in sorted((src / "models").iterdir()):
            target = root / version_dir.name
            if not is_complete(version_dir) or target.exists():
                continue
            tmp = root / f".tmp-{version_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            shutil.copytree(version_dir, tmp)
            os.rename(tmp, target)
            copied.append(version_dir.name)

    def restored_copy(path: str) -> str | None:
        candidate = root / Path(path).name  # the restored data dir's own copy, when it has one
        return str(candidate) if Path(path).resolve() != candidate and is_complete(candidate) else None

    with open_target() as store:
        store.maintenance.relocate_versions(restored_copy)
    return copied


# -- retention -------------------------------------------------------------------------------------


@dataclass
class RetentionResult:
    cutoff: datetime
    predictions: int
    feedback: int
    pending_feedback: int
    hours_rolled_up: int
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def retention_cutoff(raw_days: int, now: datetime | None = None) -> datetime:
    """Raw rows of predictions made before this instant (an hour boundary) are deleted."""
    try:
        t = (now or utcnow()) - timedelta(days=raw_days)
    except OverflowError:  # further back than datetime can go: nothing is that old
        return datetime.min
    return t.replace(minute=0, second=0, microsecond=0)


def run_retention(
    store: Store, raw_days: int, now: datetime | None = None, pending_hours: int | None = None,
    batch_rows: int = RETENTION_BATCH_ROWS,
) -> RetentionResult:
    """Delete raw rows older than ``raw_days`` (by prediction time), keeping the hourly history.

    In transactions of at most ``batch_rows`` predictions each: the labelled accuracy of a batch's
    predictions is added to ``feedback_hourly`` (latest label per prediction, as
    :meth:`Store.labelled_accuracy` counts it), and their feedback and they are deleted, together.
    Then pending feedback older than the cutoff goes, in batches too. Pending feedback whose
    prediction never came goes sooner, after ``pending_hours`` (its TTL): while any is pending,
    every ingest commit joins against it. ``prediction_hourly`` loses nothing. A crash mid-way
    leaves every count right; the next run deletes the rest.
    """
    if raw_days < 1:
        raise ValueError("raw_days must be at least 1")
    t0 = time.perf_counter()
    cutoff = retention_cutoff(raw_days, now)
    pending_cutoff = cutoff
    if pending_hours is not None:
        pending_cutoff = max(cutoff, (now or utcnow()) - timedelta(hours=pending_hours))
    n_predictions, n_feedback, n_pending, hours = store.maintenance.delete_before(cutoff, pending_cutoff, batch_rows)
    result = RetentionResult(cutoff, n_predictions, n_feedback, n_pending, hours,
                             round(time.perf_counter() - t0, 3))
    if n_predictions or n_feedback or n_pending:
        log.info("retention (raw_days=%d, cutoff %s): deleted %d predictions, %d feedback, %d pending feedback; "
                 "%d hours of labelled accuracy rolled up", raw_days, cutoff, n_predictions, n_feedback, n_pending,
                 hours)
    return result
