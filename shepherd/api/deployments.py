"""Deployment routes: deploy into candidate, promote, roll back, undeploy, inspect."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody

from shepherd.api.security import OPERATOR, VIEWER, actor
from shepherd.appliance import Appliance
from shepherd.deploy.manager import DeploymentManager
from shepherd.serving.slots import SLOTS, Deployment
from shepherd.store.deployments import DeploymentRecord


class DeployBody(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    """Registered model name."""
    version: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    """Version to load and warm into the candidate slot."""


class SlotView(msgspec.Struct, kw_only=True):
    slot: str
    version: int
    loaded: bool
    providers: list[str]
    in_flight: int
    load_seconds: float | None


class DeploymentView(msgspec.Struct, kw_only=True):
    name: str
    model: str
    slots: list[SlotView]


def view(dep: Deployment) -> DeploymentView:
    slots = []
    for name, s in zip(SLOTS, dep.slots):
        if s is None:
            continue
        lv = s.loaded
        slots.append(
            SlotView(
                slot=name, version=s.version, loaded=lv is not None,
                providers=lv.session.providers if lv else [], in_flight=lv.in_flight if lv else 0,
                load_seconds=round(lv.load_seconds, 4) if lv else None,
            )
        )
    return DeploymentView(name=dep.name, model=dep.model, slots=slots)


def _mgr(request: Request) -> DeploymentManager:
    appliance: Appliance = request.app.state.appliance
    return appliance.deployments


class DeploymentsController(Controller):
    path = "/api/v1/deployments"
    tags = ["deployments"]

    @get("/", opt=VIEWER, sync_to_thread=False)
    def list_deployments(self, request: Request) -> list[DeploymentView]:
        """Every deployment with the version, providers and in-flight count of each slot."""
        return [view(d) for d in sorted(_mgr(request).deployments.values(), key=lambda d: d.name)]

    @get("/{name:str}", opt=VIEWER, sync_to_thread=False)
    def get_deployment(self, request: Request, name: FromPath[str]) -> DeploymentView:
        """One deployment's slots."""
        return view(_mgr(request).get(name))

    @post("/{name:str}/deploy", opt=OPERATOR, status_code=200)
    async def deploy(self, request: Request, name: FromPath[str], data: JSONBody[DeployBody]) -> DeploymentRecord:
        """Load and warm a version into the candidate slot (creating the deployment if new). It takes no traffic yet."""
        return await _mgr(request).deploy(name, data.model, data.version, actor=actor(request))

    @post("/{name:str}/promote", opt=OPERATOR, status_code=200)
    async def promote(self, request: Request, name: FromPath[str]) -> DeploymentRecord:
        """candidate becomes primary; the old primary becomes previous."""
        return await _mgr(request).promote(name, actor=actor(request))

    @post("/{name:str}/rollback", opt=OPERATOR, status_code=200)
    async def rollback(self, request: Request, name: FromPath[str]) -> DeploymentRecord:
        """Swap primary and previous (no load when previous is warm)."""
        return await _mgr(request).rollback(name, actor=actor(request))

    @delete("/{name:str}", opt=OPERATOR, status_code=200)
    async def undeploy(self, request: Request, name: FromPath[str]) -> DeploymentRecord:
        """Remove the deployment; its versions are released once in-flight requests finish."""
        return await _mgr(request).undeploy(name, actor=actor(request))
