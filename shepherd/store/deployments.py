"""Deployment records: which version sits in each slot. A restart restores exactly these."""

from __future__ import annotations

import apsw
import msgspec

from shepherd.errors import Conflict
from shepherd.store import audit, registry
from shepherd.store.sqlite import one, rows


class DeploymentRecord(msgspec.Struct, kw_only=True):
    name: str
    model: str
    primary: int | None = None
    previous: int | None = None
    candidate: int | None = None
    created_at: str = ""
    updated_at: str = ""


_COLS = "name, model, primary_version AS \"primary\", previous_version AS previous, candidate_version AS candidate, created_at, updated_at"


def get(conn: apsw.Connection, name: str) -> DeploymentRecord | None:
    row = one(conn, f"SELECT {_COLS} FROM deployments WHERE name = ?", (name,))
    return DeploymentRecord(**row) if row else None


def list_all(conn: apsw.Connection) -> list[DeploymentRecord]:
    return [DeploymentRecord(**r) for r in rows(conn, f"SELECT {_COLS} FROM deployments ORDER BY name")]


def save(conn: apsw.Connection, new: DeploymentRecord, *, action: str, actor: str) -> DeploymentRecord:
    """Write the slots of a deployment, audit the change, and point the model's `production` alias at primary."""
    before = get(conn, new.name)
    # Checked here, in the write's own transaction: the loader checked before it spent seconds loading,
    # and an archive committed meanwhile would otherwise put an archived version in a slot.
    held = set() if before is None else {before.primary, before.previous, before.candidate}
    for version in sorted({new.primary, new.previous, new.candidate} - held - {None}):
        if registry.get_version(conn, new.model, version).archived:
            raise Conflict(f"model {new.model!r} version {version} is archived; unarchive it before deploying")
    at = audit.now()
    new = msgspec.structs.replace(new, created_at=before.created_at if before else at, updated_at=at)
    conn.execute(
        "INSERT INTO deployments(name, model, primary_version, previous_version, candidate_version, created_at, updated_at) "
        "VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET model = excluded.model, primary_version = excluded.primary_version, "
        "previous_version = excluded.previous_version, candidate_version = excluded.candidate_version, updated_at = excluded.updated_at",
        (new.name, new.model, new.primary, new.previous, new.candidate, new.created_at, new.updated_at),
    )
    slots = lambda r: None if r is None else {"primary": r.primary, "previous": r.previous, "candidate": r.candidate}  # noqa: E731
    audit.append(conn, actor=actor, action=action, target=f"deployment:{new.name}", before=slots(before), after=slots(new))
    if new.primary is not None and (before is None or before.primary != new.primary):
        registry.set_alias(conn, new.model, "production", new.primary, actor=actor)
    return new


def delete(conn: apsw.Connection, name: str, *, actor: str) -> DeploymentRecord | None:
    before = get(conn, name)
    if before is None:
        return None
    conn.execute("DELETE FROM deployments WHERE name = ?", (name,))
    audit.append(
        conn, actor=actor, action="deployment.undeploy", target=f"deployment:{name}",
        before={"primary": before.primary, "previous": before.previous, "candidate": before.candidate}, after=None,
    )
    return before
