"""Prometheus metrics of the serving path (prometheus_client), labelled by deployment, model, version and slot.

The per-request series are plain numbers in a `Series` per (deployment, model, version, slot),
exposed through a custom prometheus_client collector (the library's documented extension point):
prometheus_client's Histogram takes a lock and walks its buckets in Python on every observe, and
a request updates four histograms, two gauges and a counter. Here a request costs a few attribute
updates and one `bisect`; the exposition (names, `_bucket`/`_sum`/`_count`, label order, number
format) is prometheus_client's own. Rare events (load time, swap time) stay ordinary Gauges.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LABELS = ("deployment", "model", "version", "slot")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Buckets:
    """One histogram's counts: `counts[i]` observations in (bounds[i-1], bounds[i]], the last one above every bound."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # Prometheus buckets are `le`: a value on a bound counts in it
        self.total += value

    def exposition(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) pairs ending with +Inf, and the sum."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            running += n
            out.append((floatToGoString(bound), running))
        return out, self.total


class Series:
    """The per-request metrics of one (deployment, model, version, slot).

    `in_flight`, the outcome counts and `request` change only on the event loop (inference.infer).
    A batch's figures (`batch_done`) come from the batcher's thread or the event loop, so they are
    updated under `lock`, which the collector also takes to read them.
    """

    __slots__ = ("labels", "lock", "success", "failure", "in_flight", "queue_depth", "request", "queue", "compute", "batch")

    def __init__(self, labels: tuple[str, str, str, str]) -> None:
        self.labels = labels
        self.lock = threading.Lock()
        self.success = 0
        self.failure = 0
        self.in_flight = 0
        self.queue_depth = 0
        self.request = Buckets(LATENCY_BUCKETS)
        self.queue = Buckets(LATENCY_BUCKETS)
        self.compute = Buckets(LATENCY_BUCKETS)
        self.batch = Buckets(BATCH_BUCKETS)

    def request_done(self, ok: bool, seconds: float) -> None:
        if ok:
            self.success += 1
        else:
            self.failure += 1
        self.request.observe(seconds)

    def batch_done(self, waits: list[float], compute_seconds: float | None, rows: int, depth: int | None) -> None:
        """One model run: its requests' queue waits, its time and rows (None: only the waits), and the queue depth (None: unchanged)."""
        with self.lock:
            for wait in waits:
                self.queue.observe(wait)
            if compute_seconds is not None:
                self.compute.observe(compute_seconds)
                self.batch.observe(rows)
            if depth is not None:
                self.queue_depth = depth


_FAMILIES = (
    ("shepherd_inference_request_seconds", "Whole-request latency, decode to encode.", "request"),
    ("shepherd_inference_queue_seconds", "Time a request waited in the batch queue.", "queue"),
    ("shepherd_inference_compute_seconds", "ONNX Runtime time per batch.", "compute"),
    ("shepherd_inference_batch_size", "Rows per model run.", "batch"),
)


class _SeriesCollector(Collector):
    def __init__(self, series: dict[tuple[str, str, str, str], Series]) -> None:
        self.series = series

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        return self._families(list(self.series.values()))

    def _families(self, series: list[Series] = ()) -> Iterator[Metric]:  # type: ignore[assignment]
        requests = CounterMetricFamily("shepherd_inference_requests", "Inference requests by outcome.", labels=[*LABELS, "outcome"])
        in_flight = GaugeMetricFamily("shepherd_inference_in_flight", "Requests being served now.", labels=LABELS)
        depth = GaugeMetricFamily("shepherd_inference_queue_depth", "Requests waiting in the batch queue.", labels=LABELS)
        hists = [(HistogramMetricFamily(name, doc, labels=LABELS), attr) for name, doc, attr in _FAMILIES]
        for s in series:
            with s.lock:
                requests.add_metric([*s.labels, "success"], s.success)
                requests.add_metric([*s.labels, "failure"], s.failure)
                in_flight.add_metric(s.labels, s.in_flight)
                depth.add_metric(s.labels, s.queue_depth)
                for family, attr in hists:
                    buckets, total = getattr(s, attr).exposition()
                    family.add_metric(s.labels, buckets, total)
        yield requests
        yield from (family for family, _ in hists)
        yield in_flight
        yield depth


class ServingMetrics:
    """One set of serving metrics in its own registry (so tests and several apps never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._series: dict[tuple[str, str, str, str], Series] = {}
        r.register(_SeriesCollector(self._series))
        self.swap_seconds = Gauge(
            "shepherd_deployment_swap_seconds",
            "Last slot change of a deployment: from the operation's start to the new slots taking traffic (phase=effective), and to the change being durable in SQLite (phase=durable).",
            ["deployment", "action", "phase"], registry=r,
        )
        self.load_seconds = Gauge("shepherd_model_load_seconds", "Time to load and warm the version in this slot.", LABELS, registry=r)

    def series(self, labels: tuple[str, str, str, str]) -> Series:
        """The Series for `labels`, created on first use (and exposed from then on)."""
        hit = self._series.get(labels)
        if hit is None:
            hit = self._series.setdefault(labels, Series(labels))
        return hit
