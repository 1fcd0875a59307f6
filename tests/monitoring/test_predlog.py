"""The prediction log's column buffers, without the appliance: what a request writes is what DuckDB holds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from shepherd.config import MonitoringConfig
from shepherd.monitoring import predlog as predlog_mod
from shepherd.monitoring.predlog import PredictionLog
from shepherd.serving.codec import request_rows
from shepherd.store.events import EventStore, RecentPredictions
from tests.conftest import at_once

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


def _one(log: PredictionLog, request_id: str | None, labels: tuple, inputs: dict, outputs: dict, latency_s: float = 0.001) -> int:
    """Log one request alone (a batch of one), as the batcher does for a lone request."""
    return log.record(SIG, [(labels, request_id, latency_s, request_rows(inputs))], inputs, outputs)


def _stacked(calls: list[tuple]) -> tuple[list, dict, dict]:
    """A batch as the batcher hands it over: the requests, and their tensors stacked in order."""
    requests = [(labels, rid, lat, request_rows(inputs)) for rid, labels, inputs, _, lat in calls]
    inputs = {n: np.concatenate([c[2][n] for c in calls]) for n in calls[0][2]}
    outputs = {n: np.concatenate([c[3][n] for c in calls]) for n in calls[0][3]}
    return requests, inputs, outputs


def _record_all(log: PredictionLog, calls: list[tuple], batched: bool) -> int:
    """Log each call alone, or in batches of up to 7 consecutive calls that have the same inputs (as the batcher forms them)."""
    if not batched:
        return sum(_one(log, rid, labels, inputs, outputs, lat) for rid, labels, inputs, outputs, lat in calls)
    written, i = 0, 0
    while i < len(calls):
        j = i + 1
        while j < len(calls) and j - i < 7 and calls[j][2].keys() == calls[i][2].keys():
            j += 1
        written += log.record(SIG, *_stacked(calls[i:j]))
        i = j
    return written


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batches"])
def test_rows_land_in_order_with_their_values_across_segments_and_versions(store: EventStore, monkeypatch, batched):
    """One- and multi-row requests of two versions, over many small segments: each row's id, index, x, y and labels.

    In batches that mix versions, each run of one version's requests goes in with one copy per tensor.
    """
    monkeypatch.setattr(predlog_mod, "SEGMENT_ROWS", 4)  # force many segment roll-overs
    runs = []
    write = predlog_mod.Segment.write
    monkeypatch.setattr(predlog_mod.Segment, "write", lambda seg, run, *a: runs.append(len(run)) or write(seg, run, *a))
    log = _log(store)
    rng = np.random.default_rng(0)
    expected = []  # (labels, request id, row, x, y) in record order
    calls = []
    for i in range(60):
        labels = A if i % 3 else B
        k = [1, 1, 3, 1, 2, 1, 1][i % 7]
        inputs, outputs = _request(rng, k, with_b=i % 9 != 0)
        calls.append((f"r{i}", labels, inputs, outputs, 0.002))
        for j in range(k):
            b = [float(inputs["b"][j])] if "b" in inputs else [np.nan]
            x = [*inputs["a"][j].ravel().astype(np.float64), *b]
            y = [float(outputs["label"][j]), *outputs["scores"][j].astype(np.float64)]
            expected.append((labels, f"r{i}", j, x, y))
    assert _record_all(log, calls, batched) == 60
    assert (max(runs) > 1) == batched  # several requests in one copy
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


def test_a_version_served_in_two_slots_at_once_is_numbered_in_time_order(store: EventStore):
    """Version 1 as primary and as candidate at once, with version 2 beside it, in one flush: two segments of
    version 1 side by side. Its rows are numbered in the order they were recorded (which is time order), so a
    range of ts is a range of seq, as time windows need; the monitor's reads from memory still equal DuckDB's."""
    candidate_1 = (*A[:3], "candidate")
    log = _log(store)
    rng = np.random.default_rng(4)
    order, values = [], {}
    for i in range(30):
        labels = [A, candidate_1, B][i % 3] if i < 24 else A
        inputs, outputs = _request(rng, 1 + (i % 5 == 0))
        _one(log, f"r{i}", labels, inputs, outputs)
        order.append((f"r{i}", labels))
        for j in range(len(inputs["a"])):
            values[(f"r{i}", j)] = (float(inputs["a"][j, 0, 0]), float(outputs["scores"][j, 1]))
        time.sleep(1e-4)  # distinct timestamps
    assert log.flush()
    got = store.cursor().execute('SELECT seq, request_id, ts, slot, version, "row", x[1], y[3] FROM predictions ORDER BY seq').fetchall()
    assert [g[0] for g in got] == list(range(1, len(got) + 1))
    assert [g[2] for g in got] == sorted(g[2] for g in got)
    assert list(dict.fromkeys(g[1] for g in got)) == [rid for rid, _ in order]  # every row of a request together, in record order
    assert {(g[1], g[3], str(g[4])) for g in got} == {(rid, labels[3], labels[2]) for rid, labels in order}
    assert {(g[1], g[5]): (g[6], g[7]) for g in got} == values  # each row moved with its values
    _check_reads(store, [0, 5, 17])
    log.close()


def _ids(store: EventStore) -> list[str]:
    return [r[0] for r in store.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]


def test_buffer_limit_counts_rows_and_drops_whole_requests(store: EventStore):
    """buffer_rows bounds rows: a request that would cross it is not recorded at all, and is counted."""
    log = _log(store, buffer_rows=5)
    rng = np.random.default_rng(1)
    assert _one(log, "first", A, *_request(rng, 3))
    assert not _one(log, "second", A, *_request(rng, 3))  # 3 + 3 > 5
    assert _one(log, "third", A, *_request(rng, 2))  # 3 + 2 = 5
    assert log.dropped._value.get() == 1 and log.buffered.collect()[0].samples[0].value == 5
    assert log.flush()
    assert _one(log, "after", A, *_request(rng, 3))  # the flush freed the buffer
    log.close()
    assert _ids(store) == ["first"] * 3 + ["third"] * 2 + ["after"] * 3


def test_a_batch_keeps_the_buffer_limit_per_request(store: EventStore):
    """A batch is dropped request by request at the limit: a later, smaller one that fits is kept, with its own rows."""
    log = _log(store, buffer_rows=5)
    rng = np.random.default_rng(4)
    calls = [(f"r{i}", A, *_request(rng, k), 0.001) for i, k in enumerate([1, 1, 1, 3, 1, 1, 1])]
    assert log.record(SIG, *_stacked(calls)) == 5
    assert log.dropped._value.get() == 2 and log.buffered.collect()[0].samples[0].value == 5
    log.close()
    assert _ids(store) == ["r0", "r1", "r2", "r4", "r5"]
    x = [r[0] for r in store.cursor().execute("SELECT x FROM predictions ORDER BY seq").fetchall()]
    want = [calls[i][2]["a"][0].ravel().astype(np.float64) for i in (0, 1, 2, 4, 5)]  # the rows after the gap are r4's and r5's
    np.testing.assert_array_equal(np.array(x)[:, :6], np.array(want))


def test_requests_without_an_id_and_sampled_out_ones_are_skipped(store: EventStore, monkeypatch):
    """A request id of None (timed out while its batch ran) is not logged; sampling decides per request of a batch."""
    log = _log(store, sample_rate=0.5)
    draws = iter([0.1, 0.9, 0.2, 0.3])  # keep, drop, keep, keep (the None request draws nothing)
    monkeypatch.setattr(predlog_mod.random, "random", lambda: next(draws))
    rng = np.random.default_rng(5)
    calls = [(rid, A, *_request(rng, 1), 0.001) for rid in ["a", "b", None, "c", "d"]]
    assert log.record(SIG, *_stacked(calls)) == 3
    log.close()
    assert _ids(store) == ["a", "c", "d"]


def test_a_failed_append_puts_the_rows_back_before_newer_ones(store: EventStore, monkeypatch):
    """Rows of a failed flush go back in front of rows recorded meanwhile; the next flush writes all, in order."""
    log = _log(store)
    rng = np.random.default_rng(2)
    real = store.append_predictions
    calls = []

    def flaky(table, versions):
        calls.append(table.num_rows)
        if len(calls) == 1:
            _one(log, "during", A, *_request(rng, 1))  # arrives while the failing flush runs
            raise RuntimeError("disk full")
        return real(table, versions)

    monkeypatch.setattr(store, "append_predictions", flaky)
    for i in range(3):
        _one(log, f"r{i}", A, *_request(rng, 1))
    assert log.flush()
    log.close()
    ids = [r[0] for r in store.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    assert ids == ["r0", "r1", "r2", "during"] and calls[0] == 3
    assert log.failures._value.get() == 1


def test_a_request_that_does_not_fit_its_columns_is_counted_not_raised(store: EventStore):
    """A tensor whose size disagrees with the signature is not logged (and counted); the requests around it are.

    In a batch every request shares the stacked tensor, so a misfit fails the batch, not its neighbours.
    """
    log = _log(store)
    rng = np.random.default_rng(3)
    inputs, outputs = _request(rng, 1)
    bad = dict(outputs, scores=np.zeros((1, 3), np.float32))  # the signature says 2 scores a row
    assert [_one(log, rid, A, inputs, out) for rid, out in [("before", outputs), ("bad", bad), ("after", outputs)]] == [1, 0, 1]
    assert log.record(SIG, *_stacked([("bad1", A, inputs, bad, 0.001), ("bad2", A, inputs, bad, 0.001)])) == 0
    assert log.record(SIG, *_stacked([("last1", A, inputs, outputs, 0.001), ("last2", A, inputs, outputs, 0.001)])) == 2
    # an output with more rows than the requests (no batch axis) is a misfit too, not silently cut to size
    wide = dict(outputs, label=np.zeros(3, np.int64))
    assert log.record(SIG, [(A, "odd", 0.001, 1)], inputs, wide) == 0
    assert log.record_errors._value.get() == 4
    assert log.flush()
    log.close()
    assert _ids(store) == ["before", "after", "last1", "last2"]


def test_seq_never_starts_again_after_retention_deleted_every_row(store: EventStore):
    """Every row is older than retention_days and goes; the version's newest drift window stays. A log started after that
    numbers its rows past the window's last seq, so the monitor, which resumes after it, reads them."""
    from shepherd.monitoring.monitor import FEATURE_SCHEMA

    log = _log(store)
    rng = np.random.default_rng(8)
    for i in range(5):
        _one(log, f"old{i}", A, *_request(rng, 1))
    log.close()
    store.cursor().execute("UPDATE predictions SET ts = ts - INTERVAL 40 DAY")
    first, last, start, end = store.cursor().execute("SELECT min(seq), max(seq), min(ts), max(ts) FROM predictions").fetchone()
    store.save_windows([{"deployment": "dep", "model": "m", "version": 1, "window_id": 1, "start_ts": start, "end_ts": end,
                         "first_seq": first, "last_seq": last, "n_rows": 5, "n_features": 7, "n_evaluated": 7, "n_drifted": 0,
                         "share": 0.0, "drifted": False, "computed_at": end}], FEATURE_SCHEMA.empty_table())
    log = _log(store, retention_days=30)  # its retention pass at start deletes all five rows
    deadline = time.monotonic() + 10
    while store.cursor().execute("SELECT count(*) FROM predictions").fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    log.close()

    assert store.next_seq() == last + 1
    store.recent = RecentPredictions(store.next_seq())  # as a process that starts now
    log = _log(store)
    _one(log, "new", A, *_request(rng, 1))
    assert log.flush()
    log.close()
    _, last_seq, _ = store.last_window("dep", "m", 1)
    assert last_seq == last
    assert store.window_rows("dep", "m", 1, last_seq, 10).column("seq").to_pylist() == [last + 1]  # the monitor's next read finds it


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


def _sql_rows(store: EventStore, deployment: str, version: int, after_seq: int, limit: int) -> list[tuple]:
    """What DuckDB holds for the monitor's read of new rows: (seq, ts, x, y) in seq order."""
    return store.cursor().execute(
        "SELECT seq, ts, x, y FROM predictions WHERE deployment = ? AND version = ? AND seq > ? ORDER BY seq LIMIT ?",
        [deployment, version, after_seq, limit],
    ).fetchall()


def _as_rows(table) -> list[tuple]:
    d = table.to_pydict()
    return [(s, t, list(x), list(y)) for s, t, x, y in zip(d["seq"], d["ts"], d["x"], d["y"])]


def _same_rows(a: list[tuple], b: list[tuple]) -> bool:
    """Equal seq, ts and values, NaN equal to NaN."""
    return len(a) == len(b) and all(
        ra[0] == rb[0] and ra[1] == rb[1] and np.array_equal(ra[2], rb[2], equal_nan=True) and np.array_equal(ra[3], rb[3])
        for ra, rb in zip(a, b))


def _flushes(log: PredictionLog, rng: np.random.Generator, plan: list[list[tuple]]) -> None:
    """One flush per entry of `plan`: each entry lists the labels of its requests, in order."""
    for n, flush in enumerate(plan):
        for i, labels in enumerate(flush):
            inputs, outputs = _request(rng, 1 + (i % 3 == 0), with_b=i % 4 != 1)
            _one(log, f"f{n}-{i}", labels, inputs, outputs)
        assert log.flush()


def _check_reads(store: EventStore, after: list[int], limits=(1, 3, 7, 1000)) -> None:
    for labels in (A, B):
        dep, version = labels[0], int(labels[2])
        for after_seq in after:
            for limit in limits:
                want = _sql_rows(store, dep, version, after_seq, limit)
                assert _same_rows(_as_rows(store.window_rows(dep, labels[1], version, after_seq, limit)), want), (labels, after_seq, limit)
                got = store.outputs_since(dep, labels[1], version, after_seq, limit)
                assert got.column_names == ["seq", "y"]
                assert [(s, list(y)) for s, y in zip(*got.to_pydict().values())] == [(w[0], list(w[3])) for w in want]


def test_the_monitors_reads_of_new_rows_come_from_memory_and_equal_duckdbs(store: EventStore):
    """Rows of one version per flush (kept as they were appended) and of two (split per version),
    read back from memory for any start and limit: the same rows as DuckDB's, and DuckDB is not asked."""
    log = _log(store)
    first = store.next_seq()
    _flushes(log, np.random.default_rng(1), [[A] * 5, [A, B, A, B, B], [B] * 4, [B, A] * 3, [A]])
    last = store.next_seq() - 1
    assert first == 1  # a new log: the monitor's first read is after seq 0
    store.recent.hits = store.recent.misses = 0
    _check_reads(store, list(range(first - 1, last + 2)))
    assert store.recent.misses == 0 and store.recent.hits > 0
    _check_reads(store, [first - 3])  # below the first seq this process appended: DuckDB, for all memory knows
    assert store.recent.misses > 0
    log.close()


def test_rows_evicted_from_memory_or_older_than_the_process_are_read_from_duckdb(store: EventStore, tmp_path: Path):
    """Past the memory bound the oldest rows go, and reads that reach back to them go to DuckDB;
    so do reads of rows another process appended; the answers never change."""
    log = _log(store)
    rng = np.random.default_rng(2)
    _flushes(log, rng, [[A] * 4, [B] * 4])
    before = store.next_seq()  # rows below were appended before the "restart" below
    store.recent = RecentPredictions(before, max_bytes=3000)  # as a process that starts now, with little memory
    _flushes(log, rng, [[A, B] * 3, [A] * 6, [B] * 6, [A] * 6])
    end = store.next_seq()
    store.recent.hits = store.recent.misses = 0
    _check_reads(store, [0, before - 2])  # reach back past the rows this "process" appended
    assert store.recent.hits == 0  # every one of those went to DuckDB
    assert store.recent._floor, "nothing was evicted: the bound did not apply"
    _check_reads(store, list(range(before, end + 1)))  # evicted or not, every answer as DuckDB's
    assert store.recent.hits > 0 and store.recent.misses > 0
    log.close()


def test_deleted_rows_leave_memory_too(store: EventStore):
    """Retention deletes the oldest rows; none of them is then read from memory."""
    log = _log(store)
    first = store.next_seq()
    _flushes(log, np.random.default_rng(3), [[A, B] * 4, [A] * 4])
    assert store.apply_retention(None, keep_rows=5) > 0
    store.recent.hits = store.recent.misses = 0
    _check_reads(store, [first - 1, first + 2])
    assert store.recent.hits == 0
    _flushes(log, np.random.default_rng(4), [[B, A] * 2])  # new rows are kept again
    _check_reads(store, [store.next_seq() - 3])
    assert store.recent.hits > 0
    log.close()


def _appended(seqs: list[int], versions: list[int] | None = None) -> pa.Table:
    """An appended table as RecentPredictions sees it: deployment "d", each row's version (1 unless given)."""
    n = len(seqs)
    return pa.table({"seq": pa.array(seqs, pa.int64()), "ts": pa.array(np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
                     "deployment": ["d"] * n, "model": ["m"] * n, "version": pa.array(versions or [1] * n, pa.int32()),
                     "x": pa.array([[float(s)] for s in seqs]), "y": pa.array([[0.0] for _ in seqs])})


def test_an_append_whose_seq_goes_back_drops_every_row_kept():
    """Rows kept in memory are all rows above their floor only while seq increases; otherwise memory starts again."""
    recent = RecentPredictions(10)
    recent.add(_appended([10, 11, 12]), {("d", "m", 1)})
    assert recent.rows("d", "m", 1, 9, 10).column("seq").to_pylist() == [10, 11, 12]
    assert recent.rows("d", "m", 1, 8, 10) is None  # seq 9 and below: not this process's
    recent.add(_appended([11, 13]), {("d", "m", 1)})  # goes back: memory cannot vouch for anything up to 13
    assert recent.rows("d", "m", 1, 9, 10) is None and recent.rows("d", "m", 1, 12, 10) is None
    assert recent.rows("d", "m", 1, 13, 10).num_rows == 0  # above it: complete (nothing yet)
    recent.add(_appended([14, 16, 15]), {("d", "m", 1)})  # not increasing within the append
    assert recent.rows("d", "m", 1, 13, 10) is None and recent.rows("d", "m", 1, 16, 10).num_rows == 0


def test_memory_never_answers_for_rows_it_may_not_hold():
    """A gap after the rows kept (rows in between may be in DuckDB only), and rows of a version the
    caller did not name: reads that would need them go to DuckDB."""
    recent = RecentPredictions(10)
    recent.add(_appended([10, 11]), {("d", "m", 1)})
    recent.add(_appended([15, 16]), {("d", "m", 1)})  # 12-14 never came here
    assert recent.rows("d", "m", 1, 9, 10) is None and recent.rows("d", "m", 1, 13, 10) is None
    assert recent.rows("d", "m", 1, 14, 10).column("seq").to_pylist() == [15, 16]  # from the gap on: complete
    recent.add(_appended([17, 18, 19], [1, 2, 1]), {("d", "m", 1)})  # version 2's row 18 unnamed
    assert recent.rows("d", "m", 1, 14, 10) is None and recent.rows("d", "m", 2, 17, 10) is None
    assert recent.rows("d", "m", 1, 19, 10).num_rows == 0  # after them: complete again
    recent.add(_appended([20, 21], [1, 2]), {("d", "m", 1), ("d", "m", 2)})  # both named: kept, apart
    assert recent.rows("d", "m", 1, 19, 10).column("seq").to_pylist() == [20]
    assert recent.rows("d", "m", 2, 19, 10).column("seq").to_pylist() == [21]


def test_a_failure_to_keep_rows_in_memory_neither_fails_nor_repeats_the_flush(store: EventStore, monkeypatch):
    """The INSERT has committed when the rows go to memory: a failure there must not make the
    flusher put the rows back (and insert them twice); memory forgets, reads go to DuckDB."""
    log = _log(store)
    rng = np.random.default_rng(5)
    _flushes(log, rng, [[A] * 3])

    def broken(table, versions):
        raise MemoryError("no room")

    monkeypatch.setattr(store.recent, "add", broken)
    _flushes(log, rng, [[A, B] * 3])
    monkeypatch.undo()
    seqs = [r[0] for r in store.cursor().execute("SELECT seq FROM predictions ORDER BY seq").fetchall()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 3 + 6 + 3  # every row once (requests of 2 rows: i % 3 == 0)
    assert log.failures._value.get() == 0
    store.recent.hits = store.recent.misses = 0
    _check_reads(store, [0, 3])
    assert store.recent.hits == 0  # nothing answered from a memory that missed rows
    _flushes(log, rng, [[B, A]])  # rows appended later are kept again
    _check_reads(store, [store.next_seq() - 3])
    assert store.recent.hits > 0
    log.close()


def test_a_partly_filled_segment_is_copied_out_and_a_full_one_wrapped():
    """The store keeps a flushed table's ts, x and y: a few rows must not keep a whole preallocated segment alive."""
    rng = np.random.default_rng(5)
    for capacity, rows in ((8, 3), (4, 4)):
        seg = predlog_mod.Segment(A, predlog_mod.Columns(SIG), capacity)
        inputs, outputs = _request(rng, rows)
        seg.write([(A, "r", 0.001, rows)], 0, rows, rows, inputs, outputs, 123)
        seg.n = rows
        buffers = (seg.ts, seg.x, seg.y)
        t = seg.table(1)
        x = t.column("x").chunk(0).values.to_numpy()
        shared = [np.shares_memory(x, buffers[1]), np.shares_memory(t.column("ts").to_numpy(), buffers[0])]
        assert shared == [rows == capacity] * 2, (capacity, rows)
        np.testing.assert_array_equal(x.reshape(rows, -1), buffers[1][:rows])


def test_windows_are_stored_all_or_nothing(store: EventStore):
    """save_windows is one script (BEGIN, two INSERTs, COMMIT): when the second INSERT fails, the
    first is rolled back, the error reaches the caller, and the next save works."""
    from datetime import UTC, datetime

    at = datetime(2026, 12, 7, tzinfo=UTC)
    window = {"deployment": "dep", "model": "m", "version": 1, "window_id": 1, "start_ts": at, "end_ts": at, "first_seq": 1,
              "last_seq": 10, "n_rows": 10, "n_features": 1, "n_evaluated": 1, "n_drifted": 0, "share": 0.0, "drifted": False,
              "computed_at": at}
    schema = store.cursor().sql("SELECT * FROM drift_features").to_arrow_table().schema
    feature = {"deployment": "dep", "version": 1, "window_id": 1, "feature": "a", "role": "input", "kind": "numeric", "n": 10,
               "has_data": True, "drifted": False}
    good = pa.Table.from_pylist([{name: feature.get(name) for name in schema.names}], schema=schema)
    bad = good.drop_columns(["drifted"])  # the second INSERT cannot bind it

    def count(table: str) -> int:
        return store.cursor().execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    held = store.cursor()  # the failing save's own cursor, kept: no transaction may be left open on it
    store.cursor = lambda: held
    with pytest.raises(duckdb.Error):
        store.save_windows([window], bad)
    held.execute("BEGIN")  # fails while a transaction (even an aborted one) is still open
    held.execute("ROLLBACK")
    del store.cursor
    assert (count("drift_windows"), count("drift_features")) == (0, 0)
    store.save_windows([window], good)
    assert (count("drift_windows"), count("drift_features")) == (1, 1)


def test_labels_sent_twice_at_once_are_both_taken(store: EventStore):
    """Two writes of the same new (request_id, row) at the same moment (a client resending while its
    first send is in flight): DuckDB's optimistic transactions would fail one of them; the store
    takes both, one after the other, so one inserts, the other replaces, and one of the labels stays."""
    rounds, replaced = 40, [[0] * 40 for _ in range(2)]

    def send(k: int, i: int) -> None:
        replaced[k][i] = store.upsert_feedback([(f"r{i}", 0)], [float(k)])

    assert at_once(send, 2, rounds) == []
    assert all(replaced[0][i] + replaced[1][i] == 1 for i in range(rounds))
    rows = dict(store.cursor().execute("SELECT request_id, label FROM feedback").fetchall())
    assert set(rows) == {f"r{i}" for i in range(rounds)} and set(rows.values()) <= {0.0, 1.0}
    assert store.feedback_generation == 2 * rounds


def test_each_write_of_labels_is_stamped_after_the_one_before(store: EventStore, monkeypatch):
    """received_at is stamped in the writes' turn and always moves on, even when the clock stands still or goes back, so
    the error stream (labels received after the newest it read) misses none of them."""
    from datetime import UTC, datetime, timedelta

    from shepherd.store import events as events_mod

    log = _log(store)
    rng = np.random.default_rng(9)
    for i in range(4):
        _one(log, f"r{i}", A, *_request(rng, 1))
    assert log.flush()
    log.close()
    clock = [datetime(2030, 1, 1, tzinfo=UTC)]

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return clock[0]

    monkeypatch.setattr(events_mod, "datetime", Clock)
    store.upsert_feedback([("r0", 0)], [1.0])
    store.upsert_feedback([("r1", 0)], [1.0])  # the clock has not moved
    clock[0] -= timedelta(seconds=5)  # and now goes back
    store.upsert_feedback([("r2", 0), ("r3", 0)], [0.0, 1.0])
    stamps = dict(store.cursor().execute("SELECT request_id, received_at FROM feedback").fetchall())
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    assert [stamps[f"r{i}"] for i in range(4)] == [t0, t0 + timedelta(microseconds=1), *[t0 + timedelta(microseconds=2)] * 2]
    assert store.labelled_since("dep", "m", 1, stamps["r0"]).column("seq").to_pylist() == [2, 3, 4]


def test_a_failed_commit_reports_its_own_error(store: EventStore):
    """When COMMIT fails, DuckDB has already ended the transaction: the error that reaches the caller
    is the COMMIT's, not the ROLLBACK's "no transaction is active", and the cursor is usable."""
    from datetime import UTC, datetime

    from shepherd.store.events import _transaction

    at = datetime(2026, 12, 7, tzinfo=UTC)
    mine, other = store.cursor(), store.cursor()
    with pytest.raises(duckdb.TransactionException, match="Failed to commit") as failure:
        with _transaction(mine):
            mine.execute("INSERT INTO feedback VALUES ('r', 0, 1.0, ?)", [at])
            other.execute("INSERT INTO feedback VALUES ('r', 0, 2.0, ?)", [at])  # commits first: same key
    assert "rollback" not in str(failure.value)
    mine.execute("BEGIN")  # no transaction was left open
    mine.execute("ROLLBACK")
    assert store.cursor().execute("SELECT label FROM feedback").fetchall() == [(2.0,)]


def test_a_reference_is_stored_once_when_two_arrive_at_once(store: EventStore):
    """Two saves of the same version's reference at the same moment (the monitor and a request both
    profiling the bundle): one is stored, the other is told so, and neither fails."""
    from datetime import UTC, datetime

    rounds, stored = 20, [[None] * 20 for _ in range(2)]

    def save(k: int, v: int) -> None:
        stored[k][v] = store.save_reference("m", v, "bundle", 10, f"actor{k}", bytes([k]), datetime.now(UTC))

    assert at_once(save, 2, rounds) == []
    for v in range(rounds):
        assert sorted([stored[0][v], stored[1][v]]) == [False, True]
        winner = 0 if stored[0][v] else 1
        assert store.reference("m", v)["profile"] == bytes([winner])


def test_a_long_retention_pass_does_not_hold_up_the_flushes(store: EventStore, monkeypatch):
    """Retention runs on a thread of its own: while a pass is stuck in its DELETE, requests are still flushed on
    time (the crash bound is one flush interval however long retention takes), and close() waits for the pass."""
    import threading

    started, release = threading.Event(), threading.Event()
    real = store.apply_retention

    def slow(older_than, keep_rows):
        started.set()
        assert release.wait(30)
        return real(older_than, keep_rows)

    monkeypatch.setattr(store, "apply_retention", slow)
    log = _log(store, retention_rows=2)
    assert started.wait(10), "no retention pass at start"
    rng = np.random.default_rng(5)
    for i in range(4):
        assert _one(log, f"r{i}", A, *_request(rng, 1)) == 1
    assert log.flush(timeout=10), "a flush waited for the retention pass"
    assert store.cursor().execute("SELECT count(*) FROM predictions").fetchone()[0] == 4
    closing = threading.Thread(target=log.close)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive(), "close() did not wait for the retention pass under way"
    release.set()
    closing.join(10)
    assert not closing.is_alive()
    assert store.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall() == [("r2",), ("r3",)]


def test_an_export_names_its_columns_when_every_version_has_the_same_names(store: EventStore, tmp_path: Path):
    """One layout across the range: a column per feature and output. Versions that differ (or one whose names are
    unknown): the stored lists, as they are. The file's metadata names each version's features either way."""
    log = _log(store)
    _flushes(log, np.random.default_rng(6), [[A, B, A]])
    log.close()
    x = [f"a[{i}]" for i in range(6)] + ["b"]
    same = {1: (x, ["label", "scores[0]", "scores[1]"]), 2: (x, ["label", "scores[0]", "scores[1]"])}
    other = {1: same[1], 2: (x, ["label", "p0", "p1"])}

    def export(names, name):
        dest = tmp_path / name
        assert store.export_parquet(dest, "dep", None, None, names=lambda m, v: names.get(v)) == 4  # the first request has 2 rows
        rel = duckdb.sql(f"SELECT * FROM read_parquet('{dest}') ORDER BY seq")
        (meta,) = duckdb.sql(f"SELECT decode(value) FROM parquet_kv_metadata('{dest}')").fetchall()[0]
        return rel.columns, rel.fetchall(), json.loads(meta)

    cols, rows, meta = export(same, "same.parquet")
    assert cols[9:-2] == [f"x.{n}" for n in x] + ["y.label", "y.scores[0]", "y.scores[1]"]
    stored = store.cursor().execute("SELECT x, y FROM predictions ORDER BY seq").fetchall()
    np.testing.assert_array_equal([r[9:-2] for r in rows], [[*sx, *sy] for sx, sy in stored])  # NaN: an absent input
    assert meta == {"m:1": {"x": x, "y": same[1][1]}, "m:2": {"x": x, "y": same[2][1]}}
    for names, file in ((other, "other.parquet"), ({1: same[1]}, "unknown.parquet")):
        cols, rows, meta = export(names, file)
        assert cols[9:11] == ["x", "y"]
        np.testing.assert_array_equal([[*r[9], *r[10]] for r in rows], [[*sx, *sy] for sx, sy in stored])
        assert meta == {f"m:{v}": {"x": n[0], "y": n[1]} for v, n in names.items()}


def test_an_export_is_one_snapshot_while_rows_arrive(store: EventStore, tmp_path: Path):
    """Rows of another version logged while an export runs (here: between its choice of columns and its COPY) are not in
    the file: its columns, its metadata, the rows written and the count returned all come from one snapshot."""
    log = _log(store)
    rng = np.random.default_rng(10)
    _flushes(log, rng, [[A, A]])
    x = [f"a[{i}]" for i in range(6)] + ["b"]
    named = []

    def names(model: str, version: int):
        if not named:  # rows of version 2 arrive mid-export, from another thread's flush
            _flushes(log, rng, [[B, B, B]])
        named.append(version)
        return x, ["label", "scores[0]", "scores[1]"]

    dest = tmp_path / "mid.parquet"
    assert store.export_parquet(dest, "dep", None, None, names=names) == 3  # the first request has 2 rows
    log.close()
    assert named == [1]
    versions = [v for (v,) in duckdb.sql(f"SELECT version FROM read_parquet('{dest}')").fetchall()]
    assert versions == [1, 1, 1]
    (meta,) = duckdb.sql(f"SELECT decode(value) FROM parquet_kv_metadata('{dest}')").fetchall()[0]
    assert list(json.loads(meta)) == ["m:1"]
    assert store.cursor().execute("SELECT count(*) FROM predictions").fetchone()[0] == 3 + 4


def test_retention_days_deletes_older_rows_and_their_labels_at_start(store: EventStore):
    """retention_days: a log that starts deletes the rows older than that many days, and the labels of those rows
    (not the others'), without waiting for a minute or a flush."""
    import time
    from datetime import UTC, datetime

    log = _log(store, retention_days=0)
    rng = np.random.default_rng(7)
    for i in range(6):
        _one(log, f"r{i}", A, *_request(rng, 1))
    log.close()
    store.cursor().execute("UPDATE predictions SET ts = ts - INTERVAL 40 DAY WHERE request_id IN ('r0', 'r1', 'r2')")
    store.upsert_feedback([("r1", 0), ("r4", 0)], [1.0, 0.0])
    store.recent.reset()  # as a process that starts now

    log = _log(store, retention_days=30)
    deadline = time.monotonic() + 10
    while store.cursor().execute("SELECT count(*) FROM predictions").fetchone()[0] != 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    log.close()
    ids = [r for (r,) in store.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    assert ids == ["r3", "r4", "r5"]
    assert store.cursor().execute("SELECT request_id FROM feedback").fetchall() == [("r4",)]
