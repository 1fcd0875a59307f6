"""The serving metrics' own collector exposes exactly what prometheus_client's Counter, Gauge and Histogram would."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shepherd.serving.metrics import BATCH_BUCKETS, LABELS, LATENCY_BUCKETS, ServingMetrics

A = ("dep", "model", "3", "primary")
B = ("dep", "model", "2", "previous")


def _samples(text: str) -> dict[tuple, float]:
    """Every sample but prometheus_client's `_created` timestamps, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _oracle(requests: list[tuple[tuple, bool, float]], batches: list[tuple[tuple, list[float], float, int, int | None]]) -> str:
    """The same observations through prometheus_client's own metric types."""
    r = CollectorRegistry()
    count = Counter("shepherd_inference_requests", "x", [*LABELS, "outcome"], registry=r)
    hist = {
        name: Histogram(f"shepherd_inference_{name}", "x", LABELS, buckets=buckets, registry=r)
        for name, buckets in (("request_seconds", LATENCY_BUCKETS), ("queue_seconds", LATENCY_BUCKETS), ("compute_seconds", LATENCY_BUCKETS), ("batch_size", BATCH_BUCKETS))
    }
    in_flight = Gauge("shepherd_inference_in_flight", "x", LABELS, registry=r)
    depth = Gauge("shepherd_inference_queue_depth", "x", LABELS, registry=r)
    for labels in {lab for lab, *_ in requests} | {lab for lab, *_ in batches}:
        in_flight.labels(*labels)
        depth.labels(*labels)
        for outcome in ("success", "failure"):
            count.labels(*labels, outcome)
        for h in hist.values():
            h.labels(*labels)
    for labels, ok, seconds in requests:
        count.labels(*labels, "success" if ok else "failure").inc()
        hist["request_seconds"].labels(*labels).observe(seconds)
    for labels, waits, compute, rows, qd in batches:
        for w in waits:
            hist["queue_seconds"].labels(*labels).observe(w)
        hist["compute_seconds"].labels(*labels).observe(compute)
        hist["batch_size"].labels(*labels).observe(rows)
        if qd is not None:
            depth.labels(*labels).set(qd)
    return generate_latest(r).decode()


seconds = st.one_of(st.sampled_from(LATENCY_BUCKETS), st.floats(0, 20, allow_nan=False))
labels = st.sampled_from([A, B])


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(st.tuples(labels, st.booleans(), seconds), max_size=30),
    batches=st.lists(st.tuples(labels, st.lists(seconds, min_size=1, max_size=5), seconds, st.integers(1, 2000), st.one_of(st.none(), st.integers(0, 50))), max_size=20),
)
def test_exposition_equals_prometheus_client_types(requests, batches):
    """Counts, every cumulative bucket (values on a bound count in it), sums and gauges match the library's own types."""
    m = ServingMetrics()
    for lab, ok, secs in requests:
        m.series(lab).request_done(ok, secs)
    for lab, waits, compute, rows, qd in batches:
        m.series(lab).batch_done(waits, compute, rows, qd)
    ours, theirs = _samples(generate_latest(m.registry).decode()), _samples(_oracle(requests, batches))
    ours = {k: v for k, v in ours.items() if k[0].startswith("shepherd_inference_")}
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert abs(ours[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_in_flight_and_text_format():
    """In-flight is what the series holds; the counter has the `_total` suffix and a TYPE line, labels sorted."""
    m = ServingMetrics()
    s = m.series(A)
    s.in_flight += 2
    s.request_done(True, 0.001)
    text = generate_latest(m.registry).decode()
    assert "# TYPE shepherd_inference_requests_total counter" in text
    assert 'shepherd_inference_requests_total{deployment="dep",model="model",outcome="success",slot="primary",version="3"} 1.0' in text
    assert 'shepherd_inference_in_flight{deployment="dep",model="model",slot="primary",version="3"} 2.0' in text
    assert 'shepherd_inference_request_seconds_bucket{deployment="dep",le="0.001",model="model",slot="primary",version="3"} 1.0' in text
    assert 'shepherd_inference_request_seconds_bucket{deployment="dep",le="0.0005",model="model",slot="primary",version="3"} 0.0' in text


def test_batches_from_two_threads_lose_nothing():
    """The batcher's thread and the event loop may both record runs of one version: every one is counted."""
    m = ServingMetrics()
    s = m.series(A)
    def work():
        for _ in range(20000):
            s.batch_done([0.0001, 0.0002], 0.0003, 2, None)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(s.compute.counts) == 80000 and sum(s.queue.counts) == 160000 and sum(s.batch.counts) == 80000
