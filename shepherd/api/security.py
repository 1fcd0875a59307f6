"""The one guard every route passes: it authenticates the bearer token and checks the route's role.

A route declares its minimum role with `opt={"role": Role.x}` or is open with `opt={"public": True}`.
A route that declares neither is refused, so a forgotten declaration fails closed.
"""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from shepherd.appliance import Appliance
from shepherd.auth import Principal, Role
from shepherd.errors import Forbidden

VIEWER = {"role": Role.viewer}
OPERATOR = {"role": Role.operator}
ADMIN = {"role": Role.admin}
PUBLIC = {"public": True}


async def require_role(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    if handler.opt.get("public"):
        return
    role = handler.opt.get("role")
    if not isinstance(role, Role):
        raise Forbidden(f"route {connection.url.path} declares no role; refusing")
    appliance: Appliance = connection.app.state.appliance
    principal = await appliance.auth.aauthenticate(connection.headers.get("authorization"))
    principal.require(role)
    connection.state.principal = principal


def actor(connection: ASGIConnection) -> str:
    """The name of the authenticated caller, for the audit log."""
    p: Principal = connection.state.principal
    return p.name
