"""API tokens: only a sha256 of the secret is stored; the secret is shown once, at creation."""

from __future__ import annotations

import apsw
import msgspec

from shepherd.store import audit
from shepherd.store.sqlite import one, rows


class TokenRecord(msgspec.Struct, kw_only=True):
    id: str
    name: str
    role: str
    created_at: str
    created_by: str
    revoked_at: str | None = None


def insert(conn: apsw.Connection, *, id: str, name: str, role: str, secret_sha256: str, actor: str) -> TokenRecord:
    """Store a new token's hash and audit its creation."""
    rec = TokenRecord(id=id, name=name, role=role, created_at=audit.now(), created_by=actor)
    conn.execute(
        "INSERT INTO tokens(id, name, role, secret_sha256, created_at, created_by) VALUES (?,?,?,?,?,?)",
        (id, name, role, secret_sha256, rec.created_at, actor),
    )
    audit.append(conn, actor=actor, action="token.create", target=f"token:{id}", after=msgspec.to_builtins(rec))
    return rec


def lookup(conn: apsw.Connection, token_id: str) -> tuple[str, str] | None:
    """The (secret_sha256, role) of an unrevoked token, or None."""
    row = one(conn, "SELECT secret_sha256, role FROM tokens WHERE id = ? AND revoked_at IS NULL", (token_id,))
    return (row["secret_sha256"], row["role"]) if row else None


def list_all(conn: apsw.Connection) -> list[TokenRecord]:
    return [
        TokenRecord(**r)
        for r in rows(conn, "SELECT id, name, role, created_at, created_by, revoked_at FROM tokens ORDER BY created_at")
    ]


def revoke(conn: apsw.Connection, token_id: str, *, actor: str) -> TokenRecord | None:
    """Revoke a token (idempotent) and audit it; None when no such token exists."""
    row = one(conn, "SELECT id, name, role, created_at, created_by, revoked_at FROM tokens WHERE id = ?", (token_id,))
    if row is None:
        return None
    before = TokenRecord(**row)
    if before.revoked_at is not None:
        return before
    after = msgspec.structs.replace(before, revoked_at=audit.now())
    conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (after.revoked_at, token_id))
    audit.append(
        conn,
        actor=actor,
        action="token.revoke",
        target=f"token:{token_id}",
        before=msgspec.to_builtins(before),
        after=msgspec.to_builtins(after),
    )
    return after
