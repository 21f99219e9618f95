"""What a store write answers, and the store failures worth a clear one-line message."""

from __future__ import annotations

from dataclasses import dataclass


class StoreError(Exception):
    """A store failure worth a clear one-line message (not a DuckDB traceback)."""


class StoreLockedError(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The database server cannot be reached; the write was not acknowledged (a retry with the same ids is safe)."""


class StoreRejected(StoreError, ValueError):
    """A value this database cannot hold (PostgreSQL text cannot contain U+0000); nothing of the write was stored."""


class StoreFull(StoreError):
    """A write failed because the disk (or the process's file size limit) is full; nothing of it was stored."""


def is_disk_full(error: BaseException) -> bool:
    """Whether a DuckDB or OS error means "no space left" (ENOSPC) or "file too large" (EFBIG)."""
    if isinstance(error, OSError) and error.errno in (27, 28):
        return True
    text = str(error).lower()
    return "no space left on device" in text or "file too large" in text


@dataclass(frozen=True)
class AppendResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class FeedbackResult:
    accepted: int
    duplicates: int
    pending: int
    unknown_ids: list[str]


def first_line(error: object, limit: int | None = None) -> str:
    """The first line of an error's text (its type's name when it has none), for one-line messages."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
