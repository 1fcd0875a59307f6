"""Registry routes: models, versions, model cards, aliases, tags and archiving."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody

from shepherd import cards
from shepherd.api.security import OPERATOR, VIEWER, actor
from shepherd.appliance import Appliance
from shepherd.store import registry
from shepherd.store.registry import AliasChange, ModelSummary, VersionRecord


class AliasBody(msgspec.Struct, forbid_unknown_fields=True):
    version: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    """Version number the alias should point at."""


class TagBody(msgspec.Struct, forbid_unknown_fields=True):
    value: str


class ModelDetail(msgspec.Struct, kw_only=True):
    model: ModelSummary
    versions: list[VersionRecord]


def _app(request: Request) -> Appliance:
    return request.app.state.appliance


class ModelsController(Controller):
    path = "/api/v1/models"
    tags = ["registry"]

    @get("/", opt=VIEWER)
    async def list_models(self, request: Request) -> list[ModelSummary]:
        """Every model with its latest version and aliases."""
        return await _app(request).db.aread(registry.list_models)

    @get("/{name:str}", opt=VIEWER)
    async def get_model(self, request: Request, name: FromPath[str], include_archived: FromQuery[bool] = True) -> ModelDetail:
        """One model and its versions (archived ones too unless include_archived=false)."""
        def read(c):
            return ModelDetail(model=registry.get_model(c, name), versions=registry.list_versions(c, name, include_archived=include_archived))
        return await _app(request).db.aread(read)

    @get("/{name:str}/versions", opt=VIEWER)
    async def list_versions(self, request: Request, name: FromPath[str], include_archived: FromQuery[bool] = True) -> list[VersionRecord]:
        """The versions of a model, oldest first."""
        return await _app(request).db.aread(lambda c: registry.list_versions(c, name, include_archived=include_archived))

    @get("/{name:str}/versions/{ref:str}", opt=VIEWER)
    async def get_version(self, request: Request, name: FromPath[str], ref: FromPath[str]) -> VersionRecord:
        """A version by number or alias, with its signature, metrics, lineage, card, files, tags and aliases."""
        return await _app(request).db.aread(lambda c: registry.resolve(c, name, ref))

    @get("/{name:str}/versions/{ref:str}/card", opt=VIEWER)
    async def get_card(self, request: Request, name: FromPath[str], ref: FromPath[str], format: FromQuery[Literal["md", "html"]] = "md") -> Response[str]:
        """The model card rendered as Markdown (format=md) or HTML (format=html)."""
        rec = await _app(request).db.aread(lambda c: registry.resolve(c, name, ref))
        if format == "html":
            return Response(cards.html(rec), media_type="text/html; charset=utf-8")
        return Response(cards.markdown(rec), media_type="text/markdown; charset=utf-8")

    @get("/{name:str}/aliases", opt=VIEWER)
    async def alias_history(self, request: Request, name: FromPath[str], alias: FromQuery[str | None] = None) -> list[AliasChange]:
        """Every alias move of the model, oldest first (one alias when `alias` is given)."""
        return await _app(request).db.aread(lambda c: registry.alias_history(c, name, alias))

    @put("/{name:str}/aliases/{alias:str}", opt=OPERATOR, status_code=200)
    async def set_alias(self, request: Request, name: FromPath[str], alias: FromPath[str], data: JSONBody[AliasBody]) -> AliasChange:
        """Create or move an alias (production, staging, any name) to a version."""
        who = actor(request)
        return await _app(request).db.awrite(lambda c: registry.set_alias(c, name, alias, data.version, actor=who))

    @delete("/{name:str}/aliases/{alias:str}", opt=OPERATOR, status_code=200)
    async def delete_alias(self, request: Request, name: FromPath[str], alias: FromPath[str]) -> AliasChange:
        """Remove an alias; the removal is kept in its history."""
        who = actor(request)
        return await _app(request).db.awrite(lambda c: registry.delete_alias(c, name, alias, actor=who))

    # `{key:path}`: a tag key may hold '/' (team/owner), and the server decodes a %2F before routing,
    # so the key is the rest of the path (Litestar gives it with a leading '/').
    @put("/{name:str}/versions/{version:int}/tags/{key:path}", opt=OPERATOR, status_code=200)
    async def set_tag(self, request: Request, name: FromPath[str], version: FromPath[int], key: FromPath[str], data: JSONBody[TagBody]) -> VersionRecord:
        """Set a tag (a mutable label; the version's content stays as registered)."""
        who, key = actor(request), key.removeprefix("/")
        return await _app(request).db.awrite(lambda c: registry.set_tag(c, name, version, key, data.value, actor=who))

    @delete("/{name:str}/versions/{version:int}/tags/{key:path}", opt=OPERATOR, status_code=200)
    async def delete_tag(self, request: Request, name: FromPath[str], version: FromPath[int], key: FromPath[str]) -> VersionRecord:
        """Remove a tag."""
        who, key = actor(request), key.removeprefix("/")
        return await _app(request).db.awrite(lambda c: registry.delete_tag(c, name, version, key, actor=who))

    @post("/{name:str}/versions/{version:int}/archive", opt=OPERATOR, status_code=200)
    async def archive(self, request: Request, name: FromPath[str], version: FromPath[int]) -> VersionRecord:
        """Archive a version: hidden from active listings, no alias may point at it."""
        who = actor(request)
        return await _app(request).db.awrite(lambda c: registry.set_archived(c, name, version, True, actor=who))

    @post("/{name:str}/versions/{version:int}/unarchive", opt=OPERATOR, status_code=200)
    async def unarchive(self, request: Request, name: FromPath[str], version: FromPath[int]) -> VersionRecord:
        """Restore an archived version."""
        who = actor(request)
        return await _app(request).db.awrite(lambda c: registry.set_archived(c, name, version, False, actor=who))
