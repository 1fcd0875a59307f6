"""Prometheus metrics of the serving path (prometheus_client), labelled by deployment, model, version and slot."""

from __future__ import annotations

from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LABELS = ("deployment", "model", "version", "slot")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Bound(NamedTuple):
    """The per-request metric children of one (deployment, model, version, slot), bound once."""

    success: Any
    failure: Any
    request_seconds: Any
    in_flight: Any
    queue_depth: Any
    queue_seconds: Any
    compute_seconds: Any
    batch_size: Any


class ServingMetrics:
    """One set of serving metrics in its own registry (so tests and several apps never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._bound: dict[tuple[str, str, str, str], Bound] = {}
        self.requests = Counter("shepherd_inference_requests", "Inference requests by outcome.", [*LABELS, "outcome"], registry=r)
        self.request_seconds = Histogram("shepherd_inference_request_seconds", "Whole-request latency, decode to encode.", LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("shepherd_inference_queue_seconds", "Time a request waited in the batch queue.", LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("shepherd_inference_compute_seconds", "ONNX Runtime time per batch.", LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("shepherd_inference_batch_size", "Rows per model run.", LABELS, buckets=BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("shepherd_inference_in_flight", "Requests being served now.", LABELS, registry=r)
        self.queue_depth = Gauge("shepherd_inference_queue_depth", "Requests waiting in the batch queue.", LABELS, registry=r)
        self.swap_seconds = Gauge(
            "shepherd_deployment_swap_seconds",
            "Last slot change of a deployment: from the operation's start to the new slots taking traffic (phase=effective), and to the change being durable in SQLite (phase=durable).",
            ["deployment", "action", "phase"], registry=r,
        )
        self.load_seconds = Gauge("shepherd_model_load_seconds", "Time to load and warm the version in this slot.", LABELS, registry=r)

    def bound(self, labels: tuple[str, str, str, str]) -> Bound:
        """Metric children for `labels`, cached: `.labels()` costs a lock and dict lookups per call."""
        hit = self._bound.get(labels)
        if hit is None:
            hit = Bound(
                self.requests.labels(*labels, "success"),
                self.requests.labels(*labels, "failure"),
                self.request_seconds.labels(*labels),
                self.in_flight.labels(*labels),
                self.queue_depth.labels(*labels),
                self.queue_seconds.labels(*labels),
                self.compute_seconds.labels(*labels),
                self.batch_size.labels(*labels),
            )
            self._bound[labels] = hit
        return hit
