"""Open Inference Protocol (KServe V2) REST routes, plus Triton's model configuration,
statistics and repository extensions, so tritonclient and perf_analyzer work unchanged.

V2 model names are deployment names; versions are the numbers of the registry's versions.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.types import Receive, Scope, Send

from shepherd import __version__
from shepherd.api.security import OPERATOR, VIEWER, actor
from shepherd.appliance import Appliance
from shepherd.auth import Role
from shepherd.errors import Conflict, NotFound, PayloadTooLarge, ShepherdError, Unauthenticated
from shepherd.serving import inference
from shepherd.serving.slots import LoadedVersion
from shepherd.store import registry

log = structlog.get_logger()
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration", "model_repository"]
HEADER = "inference-header-content-length"


def _app(request: Request) -> Appliance:
    return request.app.state.appliance


def _versioned(path: str) -> list[str]:
    return [f"/v2/models/{{model:str}}{path}", f"/v2/models/{{model:str}}/versions/{{version:str}}{path}"]


@get("/v2", opt=VIEWER, sync_to_thread=False, tags=["v2"])
def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it supports."""
    return {"name": "shepherd", "version": __version__, "extensions": EXTENSIONS}


def _loaded(request: Request, model: str, version: str | None) -> tuple[str, LoadedVersion]:
    return _app(request).deployments.route(model, inference.parse_version(version))


@get(_versioned(""), opt=VIEWER, sync_to_thread=False, tags=["v2"])
def model_metadata(request: Request, model: FromPath[str], version: FromPath[str | None] = None) -> dict[str, Any]:
    """Name, loaded versions, platform and the input/output signature."""
    _, loaded = _loaded(request, model, version)
    dep = _app(request).deployments.get(model)
    versions = sorted({str(s.version) for s in dep.slots if s is not None and s.loaded is not None}, key=int)
    sig = loaded.signature
    return {"name": model, "versions": versions, "platform": "onnxruntime_onnx", "inputs": sig["inputs"], "outputs": sig["outputs"]}


@get(_versioned("/ready"), opt=VIEWER, sync_to_thread=False, tags=["v2"])
def model_ready(request: Request, model: FromPath[str], version: FromPath[str | None] = None) -> dict[str, Any]:
    """200 when the model (version) can take requests now; 404 or 503 otherwise."""
    _loaded(request, model, version)
    return {"name": model, "ready": True}


@post(_versioned("/infer"), opt=VIEWER, status_code=200, tags=["v2"])
async def infer(request: Request, model: FromPath[str], version: FromPath[str | None] = None) -> Response[bytes]:
    """Run inference: JSON, or Triton's binary tensor extension when Inference-Header-Content-Length is set."""
    appl = _app(request)
    header_length = request.headers.get(HEADER)  # the codec checks it strictly
    body = await request.body()
    result = await inference.infer_for(appl, model, version, body, header_length)
    if result.header_length is None:
        return Response(result.body, media_type="application/json")
    return Response(result.body, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(result.header_length)})


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version or None) when `path` is `/v2/models/{m}/infer` or `/v2/models/{m}/versions/{v}/infer`, else None."""
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path[11:-6].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


async def serve_infer(appl: Appliance, model: str, version: str | None, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer POST .../infer without Litestar's routing and per-request handler pipeline (see app.ShepherdApp).

    Litestar's route around this path cost ~100 µs a request, more than decoding, batching and the
    model together (benchmarks/README.md, "Where Shepherd's time goes"). This does what `infer`
    above does (viewer token, body limit, the same `inference.infer`, the same error bodies) and
    answers directly; `infer` stays the documented route and the one the OpenAPI schema shows.
    """
    headers = dict(scope["headers"])
    try:
        principal = await appl.auth.aauthenticate(headers.get(b"authorization", b"").decode("latin-1") or None)
        principal.require(Role.viewer)
        limit = appl.config.server.max_request_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body exceeds server.max_request_bytes ({limit})", field="body")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds server.max_request_bytes ({limit})", field="body")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        header = headers.get(HEADER.encode())
        result = await inference.infer_for(appl, model, version, b"".join(chunks), None if header is None else header.decode("latin-1"))
    except ShepherdError as err:
        extra = [(b"www-authenticate", b"Bearer")] if isinstance(err, Unauthenticated) else []
        await _send(send, err.status, msgspec.json.encode(err.body()), b"application/json", extra)
        return
    except Exception:
        log.exception("request_crashed", path=scope["path"])
        await _send(send, 500, b'{"error":"internal error; see the server log","code":"INTERNAL_ERROR"}', b"application/json", [])
        return
    if result.header_length is None:
        await _send(send, 200, result.body, b"application/json", [])
    else:
        extra = [(b"inference-header-content-length", str(result.header_length).encode())]
        await _send(send, 200, result.body, b"application/octet-stream", extra)


async def _send(send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


TRITON_TYPES = {"BOOL": "TYPE_BOOL", "BYTES": "TYPE_STRING"} | {
    t: f"TYPE_{t}" for t in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16")
}


@get(_versioned("/config"), opt=VIEWER, sync_to_thread=False, tags=["v2"])
def model_config(request: Request, model: FromPath[str], version: FromPath[str | None] = None) -> dict[str, Any]:
    """Triton-style model configuration: max_batch_size, inputs and outputs (dims without the batch axis when batching)."""
    _, loaded = _loaded(request, model, version)
    cfg = _app(request).config.serving
    batching = loaded.session.batchable
    def tensors(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": t["name"], "data_type": TRITON_TYPES[t["datatype"]], "dims": t["shape"][1:] if batching else t["shape"]} for t in specs]
    return {
        "name": model,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": cfg.max_batch_size if batching else 0,
        "input": tensors(loaded.signature["inputs"]),
        "output": tensors(loaded.signature["outputs"]),
        "dynamic_batching": {"max_queue_delay_microseconds": cfg.max_queue_delay_us} if batching else None,
        "instance_group": [{"kind": "KIND_GPU" if any(p != "CPUExecutionProvider" for p in loaded.session.providers) else "KIND_CPU", "count": 1}],
    }


def _stat(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def _model_stats(name: str, lv: LoadedVersion) -> dict[str, Any]:
    s = lv.stats
    return {
        "name": name,
        "version": str(lv.version),
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": _stat(s.success_count, s.success_ns),
            "fail": _stat(s.fail_count, s.fail_ns),
            "queue": _stat(s.queue_count, s.queue_ns),
            "compute_input": _stat(0, 0),
            "compute_infer": _stat(s.compute_count, s.compute_ns),
            "compute_output": _stat(0, 0),
            "cache_hit": _stat(0, 0),
            "cache_miss": _stat(0, 0),
        },
        "batch_stats": [],
    }


@get(["/v2/models/stats", *_versioned("/stats")], opt=VIEWER, sync_to_thread=False, tags=["v2"])
def model_statistics(request: Request, model: FromPath[str | None] = None, version: FromPath[str | None] = None) -> dict[str, Any]:
    """Triton's statistics extension: per loaded version, {count, ns} for success, fail, queue and compute."""
    mgr = _app(request).deployments
    out = []
    if model is None:
        for name, dep in sorted(mgr.deployments.items()):
            out += [_model_stats(name, lv) for lv in dep.slots.loaded()]
    elif version is None:
        out = [_model_stats(model, lv) for lv in mgr.get(model).slots.loaded()]
    else:
        out = [_model_stats(model, _loaded(request, model, version)[1])]
    return {"model_stats": out}


@post("/v2/repository/index", opt=VIEWER, status_code=200, tags=["v2"])
async def repository_index(request: Request) -> list[dict[str, str]]:
    """Every registered model: READY when a deployment of that name has a loaded primary."""
    appl = _app(request)
    models = await appl.db.aread(registry.list_models)
    out = []
    for m in models:
        dep = appl.deployments.deployments.get(m.name)
        primary = dep.slots.primary if dep else None
        if primary is not None and primary.loaded is not None:
            out.append({"name": m.name, "version": str(primary.version), "state": "READY", "reason": ""})
        else:
            out.append({"name": m.name, "version": str(m.latest_version or ""), "state": "UNAVAILABLE", "reason": "not deployed"})
    return out


@post("/v2/repository/models/{model:str}/load", opt=OPERATOR, status_code=200, tags=["v2"])
async def repository_load(request: Request, model: FromPath[str]) -> dict[str, Any]:
    """Deploy and promote the model's `production` alias (else its latest version) under a deployment of the same name."""
    appl = _app(request)
    mgr = appl.deployments
    dep = mgr.deployments.get(model)
    if dep is not None and dep.slots.primary is not None and dep.slots.primary.loaded is not None:
        return {"name": model, "version": str(dep.slots.primary.version), "state": "READY"}
    def pick(c: Any) -> int:
        info = registry.get_model(c, model)
        if "production" in info.aliases:
            return info.aliases["production"]
        active = registry.list_versions(c, model, include_archived=False)
        if not active:
            raise Conflict(f"model {model!r} has no active version to load")
        return active[-1].version
    version = await appl.db.aread(pick)
    who = actor(request)
    await mgr.deploy(model, model, version, actor=who)
    await mgr.promote(model, actor=who)
    return {"name": model, "version": str(version), "state": "READY"}


@post("/v2/repository/models/{model:str}/unload", opt=OPERATOR, status_code=200, tags=["v2"])
async def repository_unload(request: Request, model: FromPath[str]) -> dict[str, Any]:
    """Undeploy the deployment of that name."""
    mgr = _app(request).deployments
    if model not in mgr.deployments:
        raise NotFound(f"model {model!r} is not loaded")
    await mgr.undeploy(model, actor=actor(request))
    return {"name": model, "state": "UNAVAILABLE"}


ROUTES = [server_metadata, model_metadata, model_ready, infer, model_config, model_statistics, repository_index, repository_load, repository_unload]

