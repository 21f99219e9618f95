"""Bearer tokens with roles ``ingest`` < ``label`` < ``admin``.

Only a SHA-256 of each token is stored; the token itself is shown once, at creation. Tokens are
long random strings, so a fast hash is enough; the lookup compares digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from tuneloop.monitor.storage import Store, utcnow

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
    token_id: str = ""
    """Identifies the token (names are not unique): what feedback records as its writer."""

    def allows(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


ANONYMOUS_ADMIN = Principal("auth-disabled", "admin")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id(token_hash: str) -> str:
    """A token's public id: a prefix of its hash (reveals nothing about the token)."""
    return token_hash[:16]


def create_token(store: Store, role: str, name: str = "") -> str:
    """Create a token with ``role``; returns the plain token (the only time it is visible)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    token = f"tl_{role}_{secrets.token_urlsafe(24)}"
    store.tokens.add(hash_token(token), name or role, role, utcnow())
    return token


def list_tokens(store: Store) -> list[dict[str, object]]:
    """Token names, roles and dates — never the tokens or their hashes."""
    return store.tokens.list()


def revoke_token(store: Store, name: str) -> int:
    return store.tokens.revoke(name)


class TokenRegistry:
    """In-memory view of the tokens table.

    A miss reloads the table once (a token created since works at once), and a token still
    unknown after that is remembered (the last ``max_unknown`` of them, until the next reload),
    so a client repeating a wrong or revoked token costs no table read per request.
    """

    def __init__(self, store: Store, *, max_unknown: int = 10_000) -> None:
        self.store = store
        self.max_unknown = max_unknown
        self._by_hash: dict[str, Principal] = {}
        self._unknown: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.reloads = 0
        self.refresh()

    def refresh(self) -> None:
        by_hash = {digest: Principal(name, role, token_id(digest)) for digest, name, role in self.store.tokens.live()}
        with self._lock:
            self._by_hash = by_hash
            self._unknown.clear()
            self.reloads += 1

    def _find(self, digest: str) -> Principal | None:
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None

    def lookup(self, token: str) -> Principal | None:
        digest = hash_token(token)
        principal = self._find(digest)
        if principal is not None:
            return principal
        with self._lock:
            if digest in self._unknown:
                return None
        self.refresh()
        principal = self._find(digest)
        if principal is None:
            with self._lock:
                self._unknown[digest] = None
                while len(self._unknown) > self.max_unknown:
                    self._unknown.popitem(last=False)
        return principal

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
