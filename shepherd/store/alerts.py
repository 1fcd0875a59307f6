"""Alert records: one row per incident, deduplicated on (deployment, kind, dedup key).

A row is *open* while `closed_at` is NULL; a unique partial index allows one open row per key.
A row closes when it is acknowledged, or when a later occurrence arrives after the cooldown and
starts a new incident (the old row is then superseded, but stays unacknowledged until someone
acknowledges it). The dedup rule itself lives in `shepherd/monitoring/alerts.py`; this module only
runs it in SQL, inside the caller's write transaction.
"""

from __future__ import annotations

from typing import Any, Literal

import apsw
import msgspec

from shepherd.errors import Conflict, InvalidInput, NotFound
from shepherd.store import audit
from shepherd.store.sqlite import one, rows

LEVELS = ("warning", "critical", "emergency")
RANK = {level: n for n, level in enumerate(LEVELS)}

Outcome = Literal["new", "escalated", "deduplicated"]


class AlertRecord(msgspec.Struct, kw_only=True):
    id: int
    deployment: str
    kind: str
    level: str
    """warning, critical or emergency: the highest level this incident reached."""
    key: str
    """The dedup key: occurrences with the same deployment, kind and key are one incident."""
    message: str
    details: dict[str, Any]
    """The details of the latest occurrence."""
    first_at: str
    last_at: str
    occurrences: int
    acknowledged_at: str | None = None
    acknowledged_by: str | None = None
    closed_at: str | None = None
    """When the incident closed: acknowledged, or superseded by a new incident after the cooldown."""


_COLS = (
    "id, deployment, kind, level, dedup_key AS key, message, details, first_at, last_at, occurrences, "
    "acknowledged_at, acknowledged_by, closed_at"
)


def _enc_hook(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in alert details")


def encode_details(details: dict[str, Any]) -> str:
    """Details as JSON text; InvalidInput (field `details`) when a value is not JSON-encodable."""
    try:
        return msgspec.json.encode(details, enc_hook=_enc_hook).decode()
    except (TypeError, msgspec.EncodeError) as err:
        raise InvalidInput(f"alert details must be JSON-encodable: {err}", field="details") from None


def _record(row: dict[str, Any]) -> AlertRecord:
    row["details"] = msgspec.json.decode(row["details"])
    return AlertRecord(**row)


def get(conn: apsw.Connection, alert_id: int) -> AlertRecord | None:
    if not 0 < alert_id < 2**63:  # no such id; SQLite cannot even bind one beyond 64 bits
        return None
    row = one(conn, f"SELECT {_COLS} FROM alerts WHERE id = ?", (alert_id,))
    return _record(row) if row else None


def open_incident(conn: apsw.Connection, deployment: str, kind: str, key: str) -> AlertRecord | None:
    """The open (not closed) alert of this incident key, if any."""
    row = one(
        conn,
        f"SELECT {_COLS} FROM alerts WHERE deployment = ? AND kind = ? AND dedup_key = ? AND closed_at IS NULL",
        (deployment, kind, key),
    )
    return _record(row) if row else None


def record(
    conn: apsw.Connection,
    *,
    deployment: str,
    kind: str,
    level: str,
    key: str,
    message: str,
    details: dict[str, Any],
    at: str,
    open_after: str,
) -> tuple[Outcome, AlertRecord]:
    """Insert a new alert, or fold this occurrence into the open incident whose last_at > `open_after`.

    Folding counts the occurrence, moves last_at to `at` and replaces the details; a higher level
    than the row's raises the row's level and message (outcome "escalated"), a lower or equal one
    leaves them ("deduplicated"). An open row with an older last_at is closed (superseded) and a
    new row is inserted ("new"). Run it inside a write transaction.
    """
    if level not in RANK:
        raise InvalidInput(f"alert level {level!r} is not one of {', '.join(LEVELS)}", field="level")
    details_json = encode_details(details)
    current = open_incident(conn, deployment, kind, key)
    if current is not None and current.last_at > open_after:
        escalated = RANK[level] > RANK[current.level]
        conn.execute(
            "UPDATE alerts SET occurrences = occurrences + 1, last_at = ?, details = ?, level = ?, message = ? WHERE id = ?",
            (at, details_json, level if escalated else current.level, message if escalated else current.message, current.id),
        )
        updated = get(conn, current.id)
        assert updated is not None
        return ("escalated" if escalated else "deduplicated"), updated
    if current is not None:
        conn.execute("UPDATE alerts SET closed_at = ? WHERE id = ?", (at, current.id))
    conn.execute(
        "INSERT INTO alerts(deployment, kind, level, dedup_key, message, details, first_at, last_at, occurrences) "
        "VALUES (?,?,?,?,?,?,?,?,1)",
        (deployment, kind, level, key, message, details_json, at, at),
    )
    created = get(conn, conn.last_insert_rowid())
    assert created is not None
    return "new", created


def query(
    conn: apsw.Connection,
    *,
    deployment: str | None = None,
    level: str | None = None,
    unacknowledged: bool = False,
    after_id: int = 0,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
) -> list[AlertRecord]:
    """Alerts with id > `after_id`, oldest first.

    Filters: exact deployment and level; only unacknowledged ones; and a time range, which keeps
    the incidents active in it (last_at >= `since`, first_at < `until`; ISO 8601 UTC text).
    """
    if level is not None and level not in RANK:
        raise InvalidInput(f"alert level {level!r} is not one of {', '.join(LEVELS)}", field="level")
    where, params = ["id > ?"], [after_id]
    if deployment:
        where.append("deployment = ?")
        params.append(deployment)
    if level:
        where.append("level = ?")
        params.append(level)
    if unacknowledged:
        where.append("acknowledged_at IS NULL")
    if since:
        where.append("last_at >= ?")
        params.append(since)
    if until:
        where.append("first_at < ?")
        params.append(until)
    sql = f"SELECT {_COLS} FROM alerts WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
    return [_record(r) for r in rows(conn, sql, [*params, limit])]


def acknowledge(conn: apsw.Connection, alert_id: int, *, actor: str, at: str) -> AlertRecord:
    """Mark an alert acknowledged by `actor` at `at`, close its incident, and audit it.

    NotFound for an unknown id, Conflict when it is already acknowledged. Run it inside a write
    transaction: the change and its audit entry commit together.
    """
    before = get(conn, alert_id)
    if before is None:
        raise NotFound(f"alert {alert_id} does not exist")
    if before.acknowledged_at is not None:
        raise Conflict(f"alert {alert_id} was already acknowledged by {before.acknowledged_by} at {before.acknowledged_at}")
    conn.execute(
        "UPDATE alerts SET acknowledged_at = ?, acknowledged_by = ?, closed_at = COALESCE(closed_at, ?) WHERE id = ?",
        (at, actor, at, alert_id),
    )
    after = get(conn, alert_id)
    assert after is not None
    audit.append(
        conn,
        actor=actor,
        action="alert.acknowledge",
        target=f"alert:{alert_id}",
        before={"acknowledged_at": None, "closed_at": before.closed_at},
        after={"acknowledged_at": after.acknowledged_at, "acknowledged_by": actor, "closed_at": after.closed_at},
    )
    return after
