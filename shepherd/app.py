"""create_app(config) -> Litestar: opens the stores in the lifespan and mounts the controllers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog
from litestar import Litestar, Request, Response, Router
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from shepherd import __version__
from shepherd.api import (
    admin,
    alerts,
    bundles,
    deployments,
    health,
    metrics,
    mlflow,
    models,
    monitoring,
    tracking,
    v2,
)
from shepherd.api.security import PUBLIC, require_role
from shepherd.appliance import Appliance
from shepherd.config import Config
from shepherd.errors import ShepherdError, Unauthenticated

log = structlog.get_logger()


def _shepherd_error(request: Request, exc: ShepherdError) -> Response:
    if exc.status >= 500:
        log.error("request_failed", path=request.url.path, error=exc.message)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return Response(exc.body(), status_code=exc.status, headers=headers)


def _validation_error(request: Request, exc: ValidationException) -> Response:
    problems = []
    for item in exc.extra or []:
        if isinstance(item, dict):
            key = item.get("key") or item.get("source") or "body"
            problems.append(f"{key}: {item.get('message', '')}".strip())
    message = "; ".join(problems) or str(exc.detail)
    field = exc.extra[0].get("key") if exc.extra and isinstance(exc.extra[0], dict) else None
    body = {"error": message, "code": "INVALID_PARAMETER_VALUE"}
    if field:
        body["field"] = field
    return Response(body, status_code=400)


def _http_error(request: Request, exc: HTTPException) -> Response:
    codes = {404: "ENDPOINT_NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}
    return Response({"error": str(exc.detail), "code": codes.get(exc.status_code, "HTTP_ERROR")}, status_code=exc.status_code, headers=exc.headers)


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("request_crashed", path=request.url.path)
    return Response({"error": "internal error; see the server log", "code": "INTERNAL_ERROR"}, status_code=500)


def _operation_id(handler: Any, method: str, components: list[Any]) -> str:
    """A unique OpenAPI operationId from the handler, method and every path component.

    Litestar's default drops a component whose name is contained in an earlier one ("model" in
    "models"), which makes /v2/models/stats and /v2/models/{model}/stats collide.
    """
    parts = [getattr(c, "name", c) for c in components]
    return "".join(p.title() for p in [*parts, method.lower(), handler.handler_name]).replace("_", "").replace("-", "").replace(".", "")


class ShepherdApp(Litestar):
    """Litestar, except that `POST /v2/models/{m}[/versions/{v}]/infer` is answered before Litestar's routing.

    That route is the serving hot path: going through Litestar's router, exception middleware and
    handler pipeline cost more per request than decoding, batching and the model together
    (benchmarks/README.md). `v2.serve_infer` does the same checks and gives the same answers.
    Everything else, including malformed infer paths and other methods, is Litestar's.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = v2.infer_target(scope["path"])
            if target is not None:
                await v2.serve_infer(self.state.appliance, target[0], target[1], scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(config: Config, *, appliance: Appliance | None = None) -> Litestar:
    """The Litestar app for `config`. The lifespan opens (or adopts) the appliance and closes it."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        own = appliance is None
        app.state.appliance = appl = appliance or await anyio.to_thread.run_sync(Appliance, config)
        await anyio.to_thread.run_sync(appl.start)
        try:
            yield
        finally:
            if own:
                await anyio.to_thread.run_sync(appl.close)

    return ShepherdApp(
        route_handlers=[
            health.live, health.ready, models.ModelsController, bundles.import_bundle, admin.AdminController,
            deployments.DeploymentsController, alerts.AlertsController, monitoring.MonitoringController, tracking.TrackingController, metrics.metrics, *v2.ROUTES, *mlflow.routers(),
        ],
        guards=[require_role],
        lifespan=[lifespan],
        request_max_body_size=config.server.max_request_bytes,
        exception_handlers={
            ShepherdError: _shepherd_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        openapi_config=OpenAPIConfig(
            title="Shepherd",
            version=__version__,
            path="/schema",
            operation_id_creator=_operation_id,
            render_plugins=[SwaggerRenderPlugin()],
            openapi_router=Router(path="/schema", route_handlers=[], opt=PUBLIC),
        ),
        logging_config=None,
        debug=False,
    )
