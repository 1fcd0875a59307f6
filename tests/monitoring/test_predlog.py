"""The prediction log's column buffers, without the appliance: what a request writes is what DuckDB holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shepherd.config import MonitoringConfig
from shepherd.monitoring import predlog as predlog_mod
from shepherd.monitoring.predlog import PredictionLog
from shepherd.store.events import EventStore

SIG = {
    "inputs": [
        {"name": "a", "datatype": "FP32", "shape": [-1, 2, 3]},  # 6 columns, flattened
        {"name": "b", "datatype": "INT64", "shape": [-1]},  # 1 column; absent from some requests
        {"name": "text", "datatype": "BYTES", "shape": [-1]},  # not monitored
    ],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}, {"name": "scores", "datatype": "FP32", "shape": [-1, 2]}],
}
A = ("dep", "m", "1", "primary")
B = ("dep", "m", "2", "candidate")


@pytest.fixture
def store(tmp_path: Path):
    events = EventStore(tmp_path / "events.duckdb")
    yield events
    events.close()


def _log(store: EventStore, **cfg) -> PredictionLog:
    return PredictionLog(store, MonitoringConfig(**{"flush_interval_s": 3600, **cfg}), CollectorRegistry())


def _request(rng: np.random.Generator, k: int, with_b: bool = True) -> tuple[dict, dict]:
    inputs = {"a": rng.random((k, 2, 3), dtype=np.float32), "text": np.array([b"x"] * k, dtype=object)}
    if with_b:
        inputs["b"] = rng.integers(0, 100, k)
    outputs = {"label": rng.integers(0, 2, k), "scores": rng.random((k, 2), dtype=np.float32)}
    return inputs, outputs


def _record_all(log: PredictionLog, calls: list[tuple], on_loop: bool) -> list[bool]:
    """record() each call: directly, or on an event loop in waves of 7 answered in one loop iteration."""
    if not on_loop:
        return [log.record(*c) for c in calls]

    async def waves() -> list[bool]:
        out: list[bool] = []
        for i in range(0, len(calls), 7):
            out += [log.record(*c) for c in calls[i:i + 7]]
            await asyncio.sleep(0)  # the iteration ends: its requests are copied in together
        return out

    return asyncio.run(waves())


@pytest.mark.parametrize("on_loop", [False, True], ids=["direct", "loop-waves"])
def test_rows_land_in_order_with_their_values_across_segments_and_versions(store: EventStore, monkeypatch, on_loop):
    """One- and multi-row requests of two versions, over many small segments: each row's id, index, x, y and labels.

    On an event loop, the one-row requests of a wave that have every tensor go in with one copy per tensor.
    """
    monkeypatch.setattr(predlog_mod, "SEGMENT_ROWS", 4)  # force many segment roll-overs
    merged = []
    write_rows = predlog_mod.Segment.write_rows
    monkeypatch.setattr(predlog_mod.Segment, "write_rows", lambda seg, records: merged.append(write_rows(seg, records)) or merged[-1])
    log = _log(store)
    rng = np.random.default_rng(0)
    expected = []  # (labels, request id, row, x, y) in record order
    calls = []
    for i in range(60):
        labels = A if i % 3 else B
        k = [1, 1, 3, 1, 2, 1, 1][i % 7]
        inputs, outputs = _request(rng, k, with_b=i % 9 != 0)
        calls.append((f"r{i}", labels, SIG, inputs, outputs, 0.002))
        for j in range(k):
            b = [float(inputs["b"][j])] if "b" in inputs else [np.nan]
            x = [*inputs["a"][j].ravel().astype(np.float64), *b]
            y = [float(outputs["label"][j]), *outputs["scores"][j].astype(np.float64)]
            expected.append((labels, f"r{i}", j, x, y))
    assert all(_record_all(log, calls, on_loop))
    assert any(merged) == on_loop  # waves of one-row requests were copied in together
    assert log.flush()
    log.close()
    got = store.cursor().execute(
        'SELECT seq, request_id, "row", deployment, model, version, slot, x, y, latency_us, ts FROM predictions ORDER BY seq'
    ).fetchall()
    assert len(got) == len(expected)
    assert [g[0] for g in got] == list(range(got[0][0], got[0][0] + len(got)))  # seq has no gaps
    for labels in (A, B):  # within a version, rows keep the order they were recorded in
        mine = [e for e in expected if e[0] == labels]
        rows = [g for g in got if (g[3], g[4], str(g[5]), g[6]) == labels]
        assert [(r[1], r[2]) for r in rows] == [(e[1], e[2]) for e in mine]
        for r, e in zip(rows, mine):
            np.testing.assert_array_equal(np.array(r[7], dtype=float), np.array(e[3]))  # NaN where b was absent
            np.testing.assert_allclose(r[8], e[4], rtol=1e-7)
            assert r[9] == pytest.approx(2000.0)
        assert [r[10] for r in rows] == sorted(r[10] for r in rows)


def test_buffer_limit_counts_rows_and_drops_whole_requests(store: EventStore):
    """buffer_rows bounds rows: a request that would cross it is not recorded at all, and is counted."""
    log = _log(store, buffer_rows=5)
    rng = np.random.default_rng(1)
    assert log.record("first", A, SIG, *_request(rng, 3), 0.001)
    assert not log.record("second", A, SIG, *_request(rng, 3), 0.001)  # 3 + 3 > 5
    assert log.record("third", A, SIG, *_request(rng, 2), 0.001)  # 3 + 2 = 5
    assert log.dropped._value.get() == 1 and log.buffered.collect()[0].samples[0].value == 5
    assert log.flush()
    assert log.record("after", A, SIG, *_request(rng, 3), 0.001)  # the flush freed the buffer
    log.close()
    ids = [r[0] for r in store.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    assert ids == ["first"] * 3 + ["third"] * 2 + ["after"] * 3


def test_a_wave_on_the_event_loop_keeps_the_buffer_limit_per_request(store: EventStore):
    """Requests answered in one loop iteration are dropped one by one at the limit: a later one that fits is kept."""
    log = _log(store, buffer_rows=5)
    rng = np.random.default_rng(4)
    calls = [(f"r{i}", A, SIG, *_request(rng, k), 0.001) for i, k in enumerate([1, 1, 1, 3, 1, 1, 1])]
    assert all(_record_all(log, calls, on_loop=True))  # on a loop, dropping is decided when the wave is copied in
    assert log.dropped._value.get() == 2 and log.buffered.collect()[0].samples[0].value == 5
    log.close()
    ids = [r[0] for r in store.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    assert ids == ["r0", "r1", "r2", "r4", "r5"]


def test_a_failed_append_puts_the_rows_back_before_newer_ones(store: EventStore, monkeypatch):
    """Rows of a failed flush go back in front of rows recorded meanwhile; the next flush writes all, in order."""
    log = _log(store)
    rng = np.random.default_rng(2)
    real = store.append_predictions
    calls = []

    def flaky(table, versions):
        calls.append(table.num_rows)
        if len(calls) == 1:
            log.record("during", A, SIG, *_request(rng, 1), 0.001)  # arrives while the failing flush runs
            raise RuntimeError("disk full")
        return real(table, versions)

    monkeypatch.setattr(store, "append_predictions", flaky)
    for i in range(3):
        log.record(f"r{i}", A, SIG, *_request(rng, 1), 0.001)
    assert log.flush()
    log.close()
    ids = [r[0] for r in store.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    assert ids == ["r0", "r1", "r2", "during"] and calls[0] == 3
    assert log.failures._value.get() == 1


@pytest.mark.parametrize("on_loop", [False, True], ids=["direct", "loop-waves"])
def test_a_request_that_does_not_fit_its_columns_is_counted_not_raised(store: EventStore, on_loop):
    """A tensor whose size disagrees with the signature is not logged (and counted); the rows around it are,
    also when they were answered in the same loop iteration."""
    log = _log(store)
    rng = np.random.default_rng(3)
    inputs, outputs = _request(rng, 1)
    bad = dict(outputs, scores=np.zeros((1, 3), np.float32))  # the signature says 2 scores a row
    calls = [("before", A, SIG, inputs, outputs, 0.001), ("bad", A, SIG, inputs, bad, 0.001), ("after", A, SIG, inputs, outputs, 0.001)]
    recorded = _record_all(log, calls, on_loop)
    assert recorded == ([True, True, True] if on_loop else [True, False, True])  # on a loop it is found when copied in
    assert log.record_errors._value.get() == 1
    assert log.flush()
    log.close()
    ids = [r[0] for r in store.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    assert ids == ["before", "after"]


def test_results_retention_keeps_the_newest_window_and_evaluation_of_each_version(store: EventStore):
    """Old drift windows, their feature rows and old evaluations go; each version's newest window and evaluation stay."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    old, new = now - timedelta(days=40), now - timedelta(days=1)
    cur = store.cursor()
    windows = [("d", 1, 0, old), ("d", 1, 1, old), ("d", 1, 2, new), ("d", 2, 0, old), ("d", 2, 1, old), ("e", 1, 0, old)]
    for dep, version, wid, end in windows:
        cur.execute(
            "INSERT INTO drift_windows VALUES (?, 'm', ?, ?, ?, ?, 0, 0, 10, 1, 1, 0, 0.0, false, ?)",
            [dep, version, wid, end - timedelta(hours=1), end, end],
        )
        cur.execute(
            "INSERT INTO drift_features (deployment, version, window_id, feature, role, kind, n, has_data, drifted) "
            "VALUES (?, ?, ?, 'f', 'input', 'numeric', 10, true, false)",
            [dep, version, wid],
        )
    for dep, version, at in [("d", 1, old), ("d", 1, new), ("d", 2, old - timedelta(days=1)), ("d", 2, old)]:
        cur.execute("INSERT INTO performance VALUES (?, 'm', ?, ?, 'classification', 10, '{}', NULL, NULL, NULL, NULL)", [dep, version, at])

    deleted = store.apply_results_retention(now - timedelta(days=30))

    kept = sorted(cur.execute("SELECT deployment, version, window_id FROM drift_windows").fetchall())
    assert kept == [("d", 1, 2), ("d", 2, 1), ("e", 1, 0)]  # d/2 and e/1: old, but their newest
    assert sorted(cur.execute("SELECT deployment, version, window_id FROM drift_features").fetchall()) == kept
    evaluations = sorted((d, v, at) for d, v, at in cur.execute("SELECT deployment, version, computed_at FROM performance").fetchall())
    assert [(d, v) for d, v, _ in evaluations] == [("d", 1), ("d", 2)] and evaluations[1][2] == old
    assert deleted == 3 + 2
