"""Alert routes: list alerts, acknowledge one."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from litestar import Controller, Request, get, post
from litestar.params import FromPath, FromQuery, QueryParameter

from shepherd.api.security import OPERATOR, VIEWER, actor
from shepherd.appliance import Appliance
from shepherd.monitoring.alerts import AlertManager, AlertRecord


def _alerts(request: Request) -> AlertManager:
    appliance: Appliance = request.app.state.appliance
    return appliance.alerts


class AlertsController(Controller):
    path = "/api/v1/alerts"
    tags = ["alerts"]

    @get("/", opt=VIEWER)
    async def list_alerts(
        self,
        request: Request,
        deployment: FromQuery[str | None] = None,
        level: FromQuery[Literal["warning", "critical", "emergency"] | None] = None,
        unacknowledged: FromQuery[bool] = False,
        after: Annotated[int, QueryParameter(ge=0, le=2**63 - 1)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[AlertRecord]:
        """Alerts with id > after, oldest first; filter by deployment, exact level, and unacknowledged only."""
        mgr = _alerts(request)
        return await anyio.to_thread.run_sync(
            lambda: mgr.list(deployment=deployment, level=level, unacknowledged=unacknowledged, after_id=after, limit=limit)
        )

    @post("/{alert_id:int}/ack", opt=OPERATOR, status_code=200)
    async def acknowledge(self, request: Request, alert_id: FromPath[int]) -> AlertRecord:
        """Acknowledge an alert (audited): its incident closes, so the next occurrence raises a new alert."""
        who = actor(request)
        mgr = _alerts(request)
        return await anyio.to_thread.run_sync(lambda: mgr.acknowledge(alert_id, who))
