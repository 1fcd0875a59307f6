"""Admin-only routes: the audit log and API tokens."""

from __future__ import annotations

from typing import Annotated

import anyio
import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from shepherd import auth
from shepherd.api.security import ADMIN, actor
from shepherd.appliance import Appliance
from shepherd.store import audit
from shepherd.store import tokens as token_store


class TokenBody(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    """viewer, operator or admin."""
    name: str
    """A label saying who or what uses the token."""


class BackupBody(msgspec.Struct, forbid_unknown_fields=True):
    dest: str
    """Absolute path of a new or empty directory on the server's machine."""

    def __post_init__(self) -> None:
        if not self.dest.startswith("/"):
            raise ValueError("dest must be an absolute path on the server's machine")


class CreatedToken(msgspec.Struct, kw_only=True):
    token: str
    """The secret token; shown only in this response."""
    record: token_store.TokenRecord


def _app(request: Request) -> Appliance:
    return request.app.state.appliance


class AdminController(Controller):
    path = "/api/v1"
    tags = ["admin"]
    opt = ADMIN

    @get("/audit")
    async def read_audit(
        self,
        request: Request,
        actor_name: Annotated[str | None, QueryParameter(name="actor")] = None,
        action: FromQuery[str | None] = None,
        target: FromQuery[str | None] = None,
        after: Annotated[int, QueryParameter(ge=0, le=2**63 - 1)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[audit.AuditEntry]:
        """Audit entries with id > after, oldest first; filter by actor, action prefix and target."""
        return await _app(request).db.aread(
            lambda c: audit.query(c, actor=actor_name, action=action, target=target, after_id=after, limit=limit)
        )

    @post("/admin/reload", status_code=200)
    async def reload(self, request: Request) -> dict:
        """Re-read the config file and policy files (as SIGHUP does): validated first, an invalid file changes nothing (400)."""
        appl = _app(request)
        result = await anyio.to_thread.run_sync(appl.reload)
        return msgspec.to_builtins(result)

    @post("/admin/backup", status_code=200)
    async def backup(self, request: Request, data: JSONBody[BackupBody]) -> dict:
        """Write a consistent online backup to a directory on this machine (new or empty), while serving."""
        from pathlib import Path

        from shepherd import backup as backup_mod

        appl = _app(request)
        manifest = await anyio.to_thread.run_sync(lambda: backup_mod.backup(appl, Path(data.dest)))
        who = actor(request)
        await appl.db.awrite(lambda c: audit.append(c, actor=who, action="backup.create", target=data.dest,
                                                     after={"files": len(manifest.files)}))
        return {"dest": data.dest, "files": len(manifest.files), "schema_version": manifest.schema_version, "created_at": manifest.created_at}

    @get("/tokens")
    async def list_tokens(self, request: Request) -> list[token_store.TokenRecord]:
        """Every token's record (never its secret)."""
        return await _app(request).db.aread(token_store.list_all)

    @post("/tokens", status_code=201)
    async def create_token(self, request: Request, data: JSONBody[TokenBody]) -> CreatedToken:
        """Create a token; the response is the only place its secret appears."""
        who = actor(request)
        app = _app(request)
        token, rec = await anyio.to_thread.run_sync(lambda: auth.create_token(app.db, role=data.role, name=data.name, actor=who))
        return CreatedToken(token=token, record=rec)

    @delete("/tokens/{token_id:str}", status_code=200)
    async def revoke_token(self, request: Request, token_id: FromPath[str]) -> token_store.TokenRecord:
        """Revoke a token; it stops working at once on this server."""
        who = actor(request)
        app = _app(request)
        return await anyio.to_thread.run_sync(lambda: app.auth.revoke(token_id, actor=who))
