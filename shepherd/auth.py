"""Roles and bearer tokens: creation, constant-time verification, and a short-lived cache.

A token reads `shp_<id>_<secret>`. The store keeps only sha256(secret); verification compares
digests with `hmac.compare_digest`. Verified tokens are cached for `auth.token_cache_seconds`
so that the serving path does no SQL per request; revocations through this process clear the
cache at once, revocations by another process (the CLI) take effect within that bound.
"""

from __future__ import annotations

import anyio
import enum
import hashlib
import hmac
import re
import secrets
import time

from shepherd.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from shepherd.store import tokens as token_store
from shepherd.store.sqlite import Database

_TOKEN = re.compile(r"^shp_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})\Z")


class Role(enum.IntEnum):
    """Roles, each allowed everything the lower ones are."""

    viewer = 1
    operator = 2
    admin = 3

    @classmethod
    def parse(cls, value: str, field: str = "role") -> Role:
        try:
            return cls[value]
        except KeyError:
            raise InvalidInput(f"{field} = {value!r}: must be one of viewer, operator, admin", field=field) from None


class Principal:
    """Who is calling: the token id (or a local name) and its role."""

    __slots__ = ("name", "role")

    def __init__(self, name: str, role: Role) -> None:
        self.name = name
        self.role = role

    def require(self, role: Role) -> None:
        if self.role < role:
            raise Forbidden(f"this action needs the {role.name} role; token {self.name} has {self.role.name}")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(db: Database, *, role: str, name: str, actor: str) -> tuple[str, token_store.TokenRecord]:
    """Create a token; return the full token text (shown once) and its record."""
    r = Role.parse(role)
    if not name or len(name) > 100:
        raise InvalidInput("name: must be 1 to 100 characters", field="name")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    rec = db.write(
        lambda c: token_store.insert(c, id=token_id, name=name, role=r.name, secret_sha256=_digest(secret), actor=actor)
    )
    return f"shp_{token_id}_{secret}", rec


class Authenticator:
    """Verifies bearer tokens against the store, with a bounded-staleness cache."""

    def __init__(self, db: Database, cache_seconds: float) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

    def authenticate(self, header: str | None) -> Principal:
        """The principal for an `Authorization` header value, or Unauthenticated."""
        if not header:
            raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        token = token.strip()
        hit = self._cache.get(token)
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        m = _TOKEN.match(token)
        if not m:
            raise Unauthenticated("malformed token")
        token_id, secret = m.groups()
        found = self.db.read(lambda c: token_store.lookup(c, token_id))
        # Compare against a dummy digest when the id is unknown, so timing does not reveal ids.
        stored, role = found if found else ("0" * 64, "viewer")
        if not hmac.compare_digest(stored, _digest(secret)) or found is None:
            raise Unauthenticated("invalid or revoked token")
        principal = Principal(f"token:{token_id}", Role[role])
        if self.cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (now + self.cache_seconds, principal)
        return principal

    async def aauthenticate(self, header: str | None) -> Principal:
        """Like `authenticate`; a cache hit answers at once, a miss reads the store in a worker thread."""
        scheme, _, token = (header or "").partition(" ")
        hit = self._cache.get(token.strip())
        if hit and hit[0] > time.monotonic() and scheme.lower() == "bearer":
            return hit[1]
        return await anyio.to_thread.run_sync(self.authenticate, header)

    def revoke(self, token_id: str, *, actor: str) -> token_store.TokenRecord:
        rec = self.db.write(lambda c: token_store.revoke(c, token_id, actor=actor))
        if rec is None:
            raise NotFound(f"token {token_id!r} does not exist")
        self._cache.clear()
        return rec
