"""Registry records: models, immutable versions with their files, aliases with history, tags, archive.

Every mutating function takes a connection inside a write transaction and writes its audit entry
in that same transaction.
"""

from __future__ import annotations

import re
from typing import Any

import apsw
import msgspec

from shepherd.errors import Conflict, InvalidInput, NotFound
from shepherd.store import audit
from shepherd.store.sqlite import one, rows

ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
TAG_KEY = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}\Z")
MAX_TAG_VALUE = 4096


class VersionFile(msgspec.Struct):
    path: str
    sha256: str
    size: int


class VersionRecord(msgspec.Struct, kw_only=True):
    model: str
    version: int
    created_at: str
    bundle_digest: str
    signed_by: str | None
    description: str
    signature: dict[str, Any]
    metrics: dict[str, float]
    lineage: dict[str, Any]
    card: dict[str, Any]
    files: list[VersionFile]
    tags: dict[str, str]
    aliases: list[str]
    archived: bool
    archived_at: str | None = None


class ModelSummary(msgspec.Struct, kw_only=True):
    name: str
    created_at: str
    latest_version: int | None
    versions: int
    aliases: dict[str, int]


class AliasChange(msgspec.Struct, kw_only=True):
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    at: str


class NewVersion(msgspec.Struct, kw_only=True):
    """What an import hands to `register_version`: validated content, blobs already stored."""

    model: str
    bundle_digest: str
    signed_by: str | None
    description: str
    signature: dict[str, Any]
    metrics: dict[str, float]
    lineage: dict[str, Any]
    card: dict[str, Any]
    manifest: dict[str, Any]
    files: list[VersionFile]


def _model_id(conn: apsw.Connection, name: str) -> int:
    row = one(conn, "SELECT id FROM models WHERE name = ?", (name,))
    if row is None:
        raise NotFound(f"model {name!r} does not exist")
    return row["id"]


def _version_row(conn: apsw.Connection, name: str, version: int) -> dict[str, Any]:
    if not 1 <= version < 2**63:
        raise NotFound(f"model {name!r} has no version {version}")
    row = one(
        conn,
        "SELECT v.* FROM versions v JOIN models m ON m.id = v.model_id WHERE m.name = ? AND v.version = ?",
        (name, version),
    )
    if row is None:
        _model_id(conn, name)
        raise NotFound(f"model {name!r} has no version {version}")
    return row


def _record(conn: apsw.Connection, name: str, row: dict[str, Any]) -> VersionRecord:
    vid = row["id"]
    files = [VersionFile(**f) for f in rows(conn, "SELECT path, sha256, size FROM version_files WHERE version_id = ? ORDER BY path", (vid,))]
    tags = {r["key"]: r["value"] for r in rows(conn, "SELECT key, value FROM version_tags WHERE version_id = ? ORDER BY key", (vid,))}
    aliases = [r["alias"] for r in rows(conn, "SELECT alias FROM aliases WHERE version_id = ? ORDER BY alias", (vid,))]
    dec = msgspec.json.decode
    return VersionRecord(
        model=name,
        version=row["version"],
        created_at=row["created_at"],
        bundle_digest=row["bundle_digest"],
        signed_by=row["signed_by"],
        description=row["description"],
        signature=dec(row["io_signature"]),
        metrics=dec(row["metrics"]),
        lineage=dec(row["lineage"]),
        card=dec(row["card"]),
        files=files,
        tags=tags,
        aliases=aliases,
        archived=row["archived_at"] is not None,
        archived_at=row["archived_at"],
    )


def register_version(conn: apsw.Connection, new: NewVersion, *, actor: str) -> tuple[VersionRecord, bool]:
    """Register `new` as the next version of its model; (record, created). Idempotent per bundle digest."""
    enc = lambda v: msgspec.json.encode(v).decode()  # noqa: E731
    at = audit.now()
    model = one(conn, "SELECT id FROM models WHERE name = ?", (new.model,))
    if model is None:
        conn.execute("INSERT INTO models(name, created_at) VALUES (?, ?)", (new.model, at))
        model_id = conn.last_insert_rowid()
        audit.append(conn, actor=actor, action="model.create", target=f"model:{new.model}", after={"name": new.model})
    else:
        model_id = model["id"]
        existing = one(conn, "SELECT * FROM versions WHERE model_id = ? AND bundle_digest = ?", (model_id, new.bundle_digest))
        if existing is not None:
            return _record(conn, new.model, existing), False
    number = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM versions WHERE model_id = ?", (model_id,)).fetchone()[0]
    conn.execute(
        "INSERT INTO versions(model_id, version, created_at, bundle_digest, signed_by, description, io_signature,"
        " metrics, lineage, card, manifest) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            model_id, number, at, new.bundle_digest, new.signed_by, new.description, enc(new.signature),
            enc(new.metrics), enc(new.lineage), enc(new.card), enc(new.manifest),
        ),
    )
    vid = conn.last_insert_rowid()
    conn.executemany(
        "INSERT INTO version_files(version_id, path, sha256, size) VALUES (?,?,?,?)",
        [(vid, f.path, f.sha256, f.size) for f in new.files],
    )
    rec = _record(conn, new.model, one(conn, "SELECT * FROM versions WHERE id = ?", (vid,)))
    audit.append(
        conn,
        actor=actor,
        action="version.register",
        target=f"model:{new.model}/{number}",
        after={"version": number, "bundle_digest": new.bundle_digest, "signed_by": new.signed_by},
    )
    return rec, True


def get_version(conn: apsw.Connection, name: str, version: int) -> VersionRecord:
    return _record(conn, name, _version_row(conn, name, version))


def resolve(conn: apsw.Connection, name: str, ref: str) -> VersionRecord:
    """A version by number or by alias name."""
    if re.fullmatch(r"[0-9]{1,18}", ref):
        return get_version(conn, name, int(ref))
    model_id = _model_id(conn, name)
    row = one(conn, "SELECT v.* FROM aliases a JOIN versions v ON v.id = a.version_id WHERE a.model_id = ? AND a.alias = ?", (model_id, ref))
    if row is None:
        raise NotFound(f"model {name!r} has no alias {ref!r}")
    return _record(conn, name, row)


def list_versions(conn: apsw.Connection, name: str, *, include_archived: bool = True) -> list[VersionRecord]:
    model_id = _model_id(conn, name)
    sql = "SELECT * FROM versions WHERE model_id = ?" + ("" if include_archived else " AND archived_at IS NULL")
    return [_record(conn, name, r) for r in rows(conn, sql + " ORDER BY version", (model_id,))]


def _aliases(conn: apsw.Connection, model_id: int) -> dict[str, int]:
    return {
        r["alias"]: r["version"]
        for r in rows(conn, "SELECT a.alias, v.version FROM aliases a JOIN versions v ON v.id = a.version_id WHERE a.model_id = ? ORDER BY a.alias", (model_id,))
    }


def list_models(conn: apsw.Connection) -> list[ModelSummary]:
    out = []
    for r in rows(
        conn,
        "SELECT m.id, m.name, m.created_at, max(v.version) AS latest, count(v.id) AS n "
        "FROM models m LEFT JOIN versions v ON v.model_id = m.id GROUP BY m.id ORDER BY m.name",
    ):
        out.append(ModelSummary(name=r["name"], created_at=r["created_at"], latest_version=r["latest"], versions=r["n"], aliases=_aliases(conn, r["id"])))
    return out


def get_model(conn: apsw.Connection, name: str) -> ModelSummary:
    for m in list_models(conn):
        if m.name == name:
            return m
    raise NotFound(f"model {name!r} does not exist")


def set_alias(conn: apsw.Connection, name: str, alias: str, version: int, *, actor: str) -> AliasChange:
    """Point `alias` at `version` (creating or moving it) and record the move in its history."""
    if not ALIAS.match(alias):
        raise InvalidInput(f"alias = {alias!r}: must start with a letter, then up to 63 letters, digits, '_' or '-'", field="alias")
    if alias.isdigit():
        raise InvalidInput(f"alias = {alias!r}: must not be a number", field="alias")
    row = _version_row(conn, name, version)
    if row["archived_at"] is not None:
        raise Conflict(f"model {name!r} version {version} is archived; unarchive it before pointing an alias at it")
    model_id = row["model_id"]
    before = _aliases(conn, model_id).get(alias)
    if before == version:
        return AliasChange(alias=alias, from_version=before, to_version=version, actor=actor, at=audit.now())
    at = audit.now()
    conn.execute(
        "INSERT INTO aliases(model_id, alias, version_id, updated_at) VALUES (?,?,?,?) "
        "ON CONFLICT(model_id, alias) DO UPDATE SET version_id = excluded.version_id, updated_at = excluded.updated_at",
        (model_id, alias, row["id"], at),
    )
    conn.execute(
        "INSERT INTO alias_history(model_id, alias, from_version, to_version, actor, at) VALUES (?,?,?,?,?,?)",
        (model_id, alias, before, version, actor, at),
    )
    audit.append(conn, actor=actor, action="alias.set", target=f"model:{name}@{alias}", before={"version": before}, after={"version": version})
    return AliasChange(alias=alias, from_version=before, to_version=version, actor=actor, at=at)


def delete_alias(conn: apsw.Connection, name: str, alias: str, *, actor: str) -> AliasChange:
    model_id = _model_id(conn, name)
    before = _aliases(conn, model_id).get(alias)
    if before is None:
        raise NotFound(f"model {name!r} has no alias {alias!r}")
    at = audit.now()
    conn.execute("DELETE FROM aliases WHERE model_id = ? AND alias = ?", (model_id, alias))
    conn.execute(
        "INSERT INTO alias_history(model_id, alias, from_version, to_version, actor, at) VALUES (?,?,?,?,?,?)",
        (model_id, alias, before, None, actor, at),
    )
    audit.append(conn, actor=actor, action="alias.delete", target=f"model:{name}@{alias}", before={"version": before}, after=None)
    return AliasChange(alias=alias, from_version=before, to_version=None, actor=actor, at=at)


def alias_history(conn: apsw.Connection, name: str, alias: str | None = None) -> list[AliasChange]:
    model_id = _model_id(conn, name)
    sql = "SELECT alias, from_version, to_version, actor, at FROM alias_history WHERE model_id = ?"
    params: list[Any] = [model_id]
    if alias is not None:
        sql += " AND alias = ?"
        params.append(alias)
    return [AliasChange(**r) for r in rows(conn, sql + " ORDER BY id", params)]


def set_tag(conn: apsw.Connection, name: str, version: int, key: str, value: str, *, actor: str) -> VersionRecord:
    if not TAG_KEY.match(key):
        raise InvalidInput(f"key = {key!r}: must be 1-128 characters of letters, digits, '_', '.', ':', '/', '-'", field="key")
    if len(value) > MAX_TAG_VALUE:
        raise InvalidInput(f"value: {len(value)} characters, at most {MAX_TAG_VALUE} allowed", field="value")
    row = _version_row(conn, name, version)
    old = one(conn, "SELECT value FROM version_tags WHERE version_id = ? AND key = ?", (row["id"], key))
    conn.execute(
        "INSERT INTO version_tags(version_id, key, value) VALUES (?,?,?) ON CONFLICT(version_id, key) DO UPDATE SET value = excluded.value",
        (row["id"], key, value),
    )
    audit.append(conn, actor=actor, action="version.tag", target=f"model:{name}/{version}", before={key: old["value"] if old else None}, after={key: value})
    return _record(conn, name, row)


def delete_tag(conn: apsw.Connection, name: str, version: int, key: str, *, actor: str) -> VersionRecord:
    row = _version_row(conn, name, version)
    old = one(conn, "SELECT value FROM version_tags WHERE version_id = ? AND key = ?", (row["id"], key))
    if old is None:
        raise NotFound(f"model {name!r} version {version} has no tag {key!r}")
    conn.execute("DELETE FROM version_tags WHERE version_id = ? AND key = ?", (row["id"], key))
    audit.append(conn, actor=actor, action="version.untag", target=f"model:{name}/{version}", before={key: old["value"]}, after=None)
    return _record(conn, name, row)


def set_archived(conn: apsw.Connection, name: str, version: int, archived: bool, *, actor: str) -> VersionRecord:
    """Archive (hide from default listings, refuse new aliases) or restore a version; its content is untouched."""
    row = _version_row(conn, name, version)
    was = row["archived_at"] is not None
    if was == archived:
        return _record(conn, name, row)
    if archived:
        pointing = [r["alias"] for r in rows(conn, "SELECT alias FROM aliases WHERE version_id = ?", (row["id"],))]
        if pointing:
            raise Conflict(f"model {name!r} version {version} is the target of alias(es) {', '.join(pointing)}; move them first")
        deployed = [
            r["name"]
            for r in rows(
                conn,
                "SELECT name FROM deployments WHERE model = ? AND ? IN (primary_version, previous_version, candidate_version)",
                (name, version),
            )
        ]
        if deployed:
            raise Conflict(f"model {name!r} version {version} sits in a slot of deployment(s) {', '.join(deployed)}; undeploy or replace it first")
    conn.execute("UPDATE versions SET archived_at = ? WHERE id = ?", (audit.now() if archived else None, row["id"]))
    audit.append(
        conn, actor=actor, action="version.archive" if archived else "version.unarchive",
        target=f"model:{name}/{version}", before={"archived": was}, after={"archived": archived},
    )
    return _record(conn, name, one(conn, "SELECT * FROM versions WHERE id = ?", (row["id"],)))


def referenced_blobs(conn: apsw.Connection) -> set[str]:
    """Every blob digest some record refers to (version files, tracking artifacts); the rest are garbage."""
    return {r[0] for r in conn.execute("SELECT sha256 FROM version_files UNION SELECT sha256 FROM artifacts")}
