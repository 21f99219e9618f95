"""The base of every repository: typed methods over the store's connection and transactions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from tuneloop.monitor.storage.store import Store


class Repository:
    """One table family's queries. Reads use the calling thread's cursor; writes go through
    ``store.transaction()``, so they are serialised with the ingest path and keep its typed errors."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        return self.store.query(sql, params)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.store.cursor().execute(sql, list(params)).fetchall()

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.store.scalar(sql, params)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.store.execute(sql, params)

    def _embedding_frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """A read whose ``embedding`` column comes back as float32 rows."""
        return self.store.embedding_frame(sql, params)
