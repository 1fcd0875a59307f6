"""The append-only audit log: actor, action, target, before and after, time.

`append` runs inside the caller's write transaction, so a mutation and its audit entry commit
together or not at all. Triggers in the schema refuse UPDATE and DELETE on the table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import apsw
import msgspec

import structlog

from shepherd.store.sqlite import after_commit, rows

log = structlog.get_logger()


class AuditEntry(msgspec.Struct, kw_only=True):
    id: int
    at: str
    actor: str
    action: str
    target: str
    before: Any = None
    after: Any = None


def now() -> str:
    """The current UTC time as ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def append(conn: apsw.Connection, *, actor: str, action: str, target: str, before: Any = None, after: Any = None) -> None:
    """Record one mutation; call it inside the write transaction that makes the change.

    Once the transaction commits, the action is also logged as a structlog event (`alias.set`
    becomes `alias_set`), so the service log has one event per change and none for a rolled-back one.
    """
    conn.execute(
        "INSERT INTO audit(at, actor, action, target, before, after) VALUES (?,?,?,?,?,?)",
        (now(), actor, action, target, _json(before), _json(after)),
    )
    event = action.replace(".", "_")
    after_commit(conn, lambda: log.info(event, actor=actor, target=target, before=before, after=after))


def query(
    conn: apsw.Connection,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries with id > `after_id`, oldest first, filtered by exact actor, action prefix and target."""
    where, params = ["id > ?"], [after_id]
    if actor:
        where.append("actor = ?")
        params.append(actor)
    if action:
        where.append("action LIKE ? ESCAPE '\\'")
        params.append(action.replace("%", "\\%").replace("_", "\\_") + "%")
    if target:
        where.append("target = ?")
        params.append(target)
    sql = f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
    found = rows(conn, sql, [*params, limit])
    for r in found:
        for k in ("before", "after"):
            r[k] = None if r[k] is None else msgspec.json.decode(r[k])
    return [AuditEntry(**r) for r in found]
