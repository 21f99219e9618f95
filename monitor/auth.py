"""Bearer tokens with roles ``ingest`` < ``label`` < ``admin``.

Only a SHA-256 of each token is stored; the token itself is shown once, at creation. Tokens are
long random strings, so a fast hash is enough; the lookup compares digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from tuneloop.monitor.store import Store, utcnow

ROLES = ("ingest", "label", "admin")
ROLE_RANK = {r: i for i, r in enumerate(ROLES)}


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def allows(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


ANONYMOUS_ADMIN = Principal("auth-disabled", "admin")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, role: str, name: str = "") -> str:
    """Create a token with ``role``; returns the plain token (the only time it is visible)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    token = f"tl_{role}_{secrets.token_urlsafe(24)}"
    store.execute(
        "INSERT INTO tokens VALUES (?, ?, ?, ?, NULL)",
        [hash_token(token), name or role, role, utcnow()],
    )
    return token


def list_tokens(store: Store) -> list[dict[str, object]]:
    """Token names, roles and dates — never the tokens or their hashes."""
    df = store.query("SELECT name, role, created_at, revoked_at FROM tokens ORDER BY created_at")
    return df.to_dict("records")


def revoke_token(store: Store, name: str) -> int:
    n = int(store.query("SELECT count(*) AS n FROM tokens WHERE name = ? AND revoked_at IS NULL", [name])["n"][0])
    store.execute("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", [utcnow(), name])
    return n


class TokenRegistry:
    """In-memory view of the tokens table, refreshed on miss (a new token works at once)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_hash: dict[str, Principal] = {}
        self.refresh()

    def refresh(self) -> None:
        rows = self.store.query("SELECT token_hash, name, role FROM tokens WHERE revoked_at IS NULL")
        self._by_hash = {r.token_hash: Principal(r.name, r.role) for r in rows.itertuples()}

    def lookup(self, token: str) -> Principal | None:
        digest = hash_token(token)
        for _ in range(2):
            for known, principal in self._by_hash.items():
                if hmac.compare_digest(known, digest):
                    return principal
            self.refresh()
        return None

    def authenticate(self, authorization: str | None, required: str) -> Principal:
        """Return the caller for an ``Authorization`` header value, or raise AuthError(401|403)."""
        if not authorization:
            raise AuthError(401, "missing bearer token (Authorization: Bearer <token>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "malformed Authorization header; expected 'Bearer <token>'")
        principal = self.lookup(token.strip())
        if principal is None:
            raise AuthError(401, "unknown or revoked token")
        if not principal.allows(required):
            raise AuthError(403, f"this endpoint needs role '{required}'; the token has role '{principal.role}'")
        return principal
