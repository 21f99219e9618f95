"""``tokens``: API tokens by hash (the token itself is never stored), name, role and revocation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tuneloop.monitor.storage.clock import utcnow
from tuneloop.monitor.storage.repository import Repository


class TokenRepository(Repository):
    def add(self, token_hash: str, name: str, role: str, created_at: datetime) -> None:
        self._execute("INSERT INTO tokens VALUES (?, ?, ?, ?, NULL)", [token_hash, name, role, created_at])

    def list(self) -> list[dict[str, Any]]:
        """Names, roles and dates of every token, oldest first (no hashes)."""
        return self._frame("SELECT name, role, created_at, revoked_at FROM tokens ORDER BY created_at").to_dict(
            "records")

    def revoke(self, name: str) -> int:
        """Revoke every live token called ``name``; returns how many there were."""
        with self.store.transaction() as cur:
            n = cur.execute("SELECT count(*) FROM tokens WHERE name = ? AND revoked_at IS NULL", [name]).fetchall()
            cur.execute("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                        [utcnow(), name]).fetchall()
        return int(n[0][0])

    def count_live(self) -> int:
        """Tokens not revoked (none: the server is on its first start)."""
        return int(self._scalar("SELECT count(*) FROM tokens WHERE revoked_at IS NULL"))

    def live(self) -> list[tuple[str, str, str]]:
        """(token_hash, name, role) of every token not revoked."""
        return self._rows("SELECT token_hash, name, role FROM tokens WHERE revoked_at IS NULL")
