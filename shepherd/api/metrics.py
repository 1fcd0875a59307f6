"""GET /metrics: Prometheus text format from the appliance's own registry."""

from __future__ import annotations

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shepherd.api.security import VIEWER


@get("/metrics", opt=VIEWER, sync_to_thread=False, tags=["metrics"], include_in_schema=True)
def metrics(request: Request) -> Response[bytes]:
    """Request counts, latency/queue/compute histograms, batch sizes, in-flight and queue depth, load times."""
    registry = request.app.state.appliance.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
