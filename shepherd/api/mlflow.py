"""MLflow-compatible routes: /api/2.0/mlflow/..., /ajax-api/2.0/mlflow/..., and the artifact proxy.

Thin: every route reads the request's fields (JSON body, or the query string for GET) and calls
the matching handler of shepherd.tracking.mlflow.MlflowApi in a worker thread (awaited directly
where the handler is a coroutine: the logging calls). Successes are 200 with a JSON body; errors
use MLflow's {"error_code", "message"} shape, which the client reads. Reads need a viewer token,
writes an operator token (the client sends MLFLOW_TRACKING_TOKEN as a bearer token).
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog
from litestar import Request, Response, Router, route
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import FromPath
from litestar.response import File

from shepherd.api.security import OPERATOR, VIEWER, actor
from shepherd.appliance import Appliance
from shepherd.errors import InvalidInput, PayloadTooLarge, ShepherdError
from shepherd.tracking.mlflow import ROUTES, MlflowApi, check_fields

log = structlog.get_logger()
LIST_FIELDS = {"experiment_ids", "order_by", "run_ids"}
HTTP_CODES = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST",
              405: "ENDPOINT_NOT_FOUND", 409: "RESOURCE_ALREADY_EXISTS", 413: "INVALID_PARAMETER_VALUE"}


def _api(request: Request) -> MlflowApi:
    appl: Appliance = request.app.state.appliance
    return appl.mlflow


def _mlflow_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ShepherdError):
        status, code, message = exc.status, exc.code, exc.message
    elif isinstance(exc, HTTPException):
        status, code, message = exc.status_code, HTTP_CODES.get(exc.status_code, "INTERNAL_ERROR"), str(exc.detail)
    else:
        log.error("mlflow_request_failed", method=request.method, path=request.url.path, exc_info=exc)
        status, code, message = 500, "INTERNAL_ERROR", "internal error; see the server log"
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response({"error_code": code, "message": message}, status_code=status, headers=headers)


async def _fields(request: Request) -> dict[str, Any]:
    if request.method == "GET":
        out: dict[str, Any] = {}
        for key, value in request.query_params.multi_items():
            if key in LIST_FIELDS:
                out.setdefault(key, []).append(value)
            else:
                out[key] = value
        return out
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise InvalidInput(f"request body is not valid JSON ({err})", field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object", field="body")
    return body


def _handler(method: str, path: str, name: str, writes: bool, *, public_schema: bool) -> Any:
    async def handle(request: Request) -> Response:
        fields = await _fields(request)
        fields.update({k: v for k, v in request.path_params.items()})
        check_fields(fields)
        who = actor(request)
        api = _api(request)
        fn = getattr(api, name)
        result = await fn(fields, who) if inspect.iscoroutinefunction(fn) else await anyio.to_thread.run_sync(fn, fields, who)
        return Response(result, status_code=200)

    handle.__name__ = name.replace("-", "_")
    handle.__doc__ = f"MLflow {method} {path}"
    return route(path, http_method=[method], opt=OPERATOR if writes else VIEWER, status_code=200, include_in_schema=public_schema)(handle)


# -- artifact proxy -----------------------------------------------------------------------


async def _put_artifact(request: Request, path: str) -> Response:
    appl: Appliance = request.app.state.appliance
    limit = appl.config.bundles.max_member_bytes
    tmp_dir = appl.config.data_dir / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="artifact-")
    tmp = Path(name)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"artifact exceeds bundles.max_member_bytes ({limit})", field="body")
                await anyio.to_thread.run_sync(out.write, chunk)
        await anyio.to_thread.run_sync(appl.tracker.put_artifact, path.lstrip("/"), tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return Response({}, status_code=200)


async def _get_artifact(request: Request, path: str) -> Any:
    appl: Appliance = request.app.state.appliance
    rel = path.lstrip("/")

    def locate() -> Path:
        hit = appl.mlflow.registry_file(rel)
        if hit is not None:
            return appl.blobs.path(hit[0])
        return appl.tracker.artifact_file(rel)[0]

    blob = await anyio.to_thread.run_sync(locate)
    return File(path=blob, filename=rel.rsplit("/", 1)[-1], media_type="application/octet-stream", content_disposition_type="attachment")


def _artifact_routes(prefix: str, public_schema: bool) -> list[Any]:
    base = f"{prefix}/2.0/mlflow-artifacts/artifacts"

    @route(f"{base}/{{path:path}}", http_method=["PUT"], opt=OPERATOR, include_in_schema=public_schema, status_code=200)
    async def upload_artifact(request: Request, path: FromPath[str]) -> Response:
        """Upload one artifact file (the body) to this path."""
        return await _put_artifact(request, path)

    @route(f"{base}/{{path:path}}", http_method=["GET"], opt=VIEWER, include_in_schema=public_schema)
    async def download_artifact(request: Request, path: FromPath[str]) -> Any:
        """Download one artifact file."""
        return await _get_artifact(request, path)

    @route(f"{base}/{{path:path}}", http_method=["DELETE"], opt=OPERATOR, include_in_schema=public_schema, status_code=200)
    async def delete_artifact(request: Request, path: FromPath[str]) -> Response:
        """Delete an artifact file or directory."""
        appl: Appliance = request.app.state.appliance
        await anyio.to_thread.run_sync(appl.tracker.delete_artifacts, path.lstrip("/"))
        return Response({}, status_code=200)

    @route(base, http_method=["GET"], opt=VIEWER, include_in_schema=public_schema)
    async def list_artifacts(request: Request) -> Response:
        """List the direct children of ?path= (files with sizes, directories)."""
        appl: Appliance = request.app.state.appliance
        rel = (request.query_params.get("path") or "").strip("/")

        def work() -> list[dict[str, Any]]:
            reg = appl.mlflow.list_registry(rel)
            return reg if reg is not None else appl.tracker.list_artifacts(rel)

        files = await anyio.to_thread.run_sync(work)
        return Response({"files": files} if files else {}, status_code=200)

    return [upload_artifact, download_artifact, delete_artifact, list_artifacts]


@route("/api/3.0/mlflow/server-info", http_method=["GET"], opt=VIEWER, include_in_schema=False)
async def server_info() -> Response:
    """What the mlflow client asks before some downloads: no multipart, SQL-backed."""
    return Response(
        {"store_type": "SqlStore", "workspaces_enabled": False, "multipart_uploads_enabled": False, "multipart_downloads_enabled": False},
        status_code=200,
    )


def routers() -> list[Router]:
    errors = {ShepherdError: _mlflow_error, ValidationException: _mlflow_error, HTTPException: _mlflow_error, Exception: _mlflow_error}
    out = []
    for prefix, public in (("/api", True), ("/ajax-api", False)):
        handlers = [_handler(m, p, n, w, public_schema=public) for m, p, n, w in ROUTES]
        out.append(Router(path=f"{prefix}/2.0/mlflow", route_handlers=handlers, tags=["mlflow"], exception_handlers=errors))
        out.append(Router(path="/", route_handlers=_artifact_routes(prefix, public), tags=["mlflow"], exception_handlers=errors))
    out.append(Router(path="/", route_handlers=[server_info], tags=["mlflow"], exception_handlers=errors))
    return out
