"""Open Inference Protocol health routes; open to everyone."""

from __future__ import annotations

from litestar import Request, Response, get

from shepherd.api.security import PUBLIC


@get("/v2/health/live", opt=PUBLIC, sync_to_thread=False, tags=["health"])
def live() -> dict[str, bool]:
    """The process is up and answering."""
    return {"live": True}


@get("/v2/health/ready", opt=PUBLIC, sync_to_thread=False, tags=["health"])
def ready(request: Request) -> Response[dict[str, bool]]:
    """The stores are open and recovered; 503 until then."""
    ok = bool(request.app.state.appliance.ready)
    return Response({"ready": ok}, status_code=200 if ok else 503)
