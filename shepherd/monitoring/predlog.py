"""The prediction log: every served request, written into column buffers and flushed to DuckDB in batches.

The request path calls `record()`. The request's rows go into preallocated columns (a `Segment`
per deployment, version and slot): the numeric inputs and outputs flattened in the version's
layout (`layout.py`) as float64, the request id, the timestamp and the latency. On the event loop,
`record()` only keeps the request until the end of the loop's iteration; then all the requests
answered in that iteration are copied in together, one numpy copy per tensor for a wave of one-row
requests (`_drain`). No request object outlives the loop iteration that answered it. A background
thread (`flusher`) detaches the filled segments, wraps their columns as one Arrow table without
copying them, and appends it to DuckDB in one INSERT.

Why columns and not a queue of request tuples: holding a second's worth of request objects
(dicts, arrays, tuples) until the flusher walked them cost the event loop 26-33 µs a request on
the 2-vCPU benchmark VM, and full garbage collections over the held objects stalled it for tens
of milliseconds (p99 38-47 ms against 10 ms without the log). Copying a row into columns costs
1.5-3 µs in a warm loop, but 8 µs in place in the server, where the HTTP stack has evicted numpy's
indexing code; hence the copy per wave (benchmarks/README.md, "Prediction log in columns" and
"The monitor's kernels over all windows at once").

Durability: a flush runs when `flush_rows` rows are buffered or `flush_interval_s` has passed,
whichever is first. `close()` (SIGTERM, shutdown) flushes everything still buffered. A crash
(SIGKILL, power loss) loses what arrived since the last flush: at most one interval.

Back-pressure: the buffers hold at most `buffer_rows` rows. When DuckDB cannot keep up, further
records are dropped and counted (`shepherd_prediction_log_dropped_total`); the request itself is
never delayed. Sampling (`sample_rate`) decides per request, before anything is kept.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from shepherd.config import MonitoringConfig
from shepherd.monitoring.layout import Tensor, build_layout
from shepherd.serving.codec import request_rows
from shepherd.store.events import EventStore, fixed_list

log = structlog.get_logger()
RETENTION_EVERY_S = 60.0
RESULTS_RETENTION_EVERY_S = 3600.0
"""Drift windows and evaluations are kept for days: an hourly pass is precise enough, and each pass scans drift_features."""
SEGMENT_ROWS = 4096
"""Rows per segment at most; fewer for wide layouts, so that a segment stays near SEGMENT_BYTES."""
SEGMENT_BYTES = 1 << 20
TIMESTAMP = pa.timestamp("us", tz="UTC")
Record = tuple[str, dict[str, np.ndarray], dict[str, np.ndarray], float, int]
"""One answered request: (request id, inputs, outputs, latency in seconds, timestamp in µs since the epoch)."""


class Columns:
    """Where a version's tensors go in a logged row: (name, columns, width) for x and for y."""

    __slots__ = ("x", "y", "x_width", "y_width")

    def __init__(self, signature: dict[str, Any]) -> None:
        layout = build_layout(signature)  # the monitor's layout: the same tensors in the same order
        self.x, self.x_width = _placed(layout.inputs)
        self.y, self.y_width = _placed(layout.outputs)


def _placed(tensors: list[Tensor]) -> tuple[list[tuple[str, slice, int]], int]:
    out, pos = [], 0
    for t in tensors:
        out.append((t.name, slice(pos, pos + t.width), t.width))
        pos += t.width
    return out, pos


class Segment:
    """Preallocated columns for the rows of one (deployment, model, version, slot); filled on the request path."""

    __slots__ = ("labels", "columns", "n", "ids", "row", "ts", "latency", "x", "y")

    def __init__(self, labels: tuple, columns: Columns, capacity: int) -> None:
        self.labels = labels
        self.columns = columns
        self.n = 0
        self.ids: list[str] = []  # one per row
        self.row = np.zeros(capacity, np.int32)  # the row's index inside its request: 0 unless a request has several
        self.ts = np.empty(capacity, np.int64)  # microseconds since the epoch
        self.latency = np.empty(capacity, np.float32)  # microseconds
        self.x = np.empty((capacity, columns.x_width))
        self.y = np.empty((capacity, columns.y_width))

    @property
    def capacity(self) -> int:
        return len(self.ts)

    def write(self, record: Record, k: int) -> None:
        """Copy one request's k rows in (the caller made sure they fit)."""
        request_id, inputs, outputs, latency_s, ts_us = record
        n = self.n
        cols = self.columns
        if k == 1:  # with scalar indexing: about 2 µs for 30 features and two outputs
            _fill_one(self.x, n, cols.x, inputs)
            _fill_one(self.y, n, cols.y, outputs)
            self.ts[n] = ts_us
            self.latency[n] = latency_s * 1e6
            self.ids.append(request_id)
        else:
            end = n + k
            _fill(self.x, n, end, cols.x, inputs)
            _fill(self.y, n, end, cols.y, outputs)
            self.ts[n:end] = ts_us
            self.latency[n:end] = latency_s * 1e6
            self.ids.extend([request_id] * k)
            self.row[n:end] = np.arange(k, dtype=np.int32)
        self.n = n + k

    def write_rows(self, records: list[Record]) -> bool:
        """Copy several one-row requests in with one numpy copy per tensor; False (nothing written) unless
        every tensor of every request is present with one row's values (the caller then writes them one by one)."""
        cols = self.columns
        count = len(records)
        merged = []
        for side, placed in ((1, cols.x), (2, cols.y)):
            for name, where, width in placed:
                parts = [r[side].get(name) for r in records]
                if any(a is None or a.size != width for a in parts):
                    return False
                merged.append((self.x if side == 1 else self.y, where, np.concatenate(parts, axis=None).reshape(count, width)))
        n = self.n
        end = n + count
        for dest, where, values in merged:
            dest[n:end, where] = values
        self.ts[n:end] = [r[4] for r in records]
        self.latency[n:end] = [r[3] * 1e6 for r in records]
        self.ids.extend([r[0] for r in records])
        self.n = end
        return True

    def table(self, first_seq: int) -> pa.Table:
        """The filled rows as an Arrow table; the numeric columns are wrapped, not copied."""
        n = self.n
        deployment, model, version, slot = self.labels
        return pa.table({
            "seq": pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64)),
            "request_id": pa.array(self.ids, pa.string()),
            "row": pa.array(self.row[:n]),
            "ts": pa.array(self.ts[:n], TIMESTAMP),
            "deployment": pa.repeat(pa.scalar(deployment, pa.string()), n),
            "model": pa.repeat(pa.scalar(model, pa.string()), n),
            "version": pa.array(np.full(n, int(version), dtype=np.int32)),
            "slot": pa.repeat(pa.scalar(slot, pa.string()), n),
            "latency_us": pa.array(self.latency[:n]),
            "x": fixed_list(self.x[:n]), "y": fixed_list(self.y[:n]),
        })


def _fill(dest: np.ndarray, n: int, end: int, placed: list[tuple[str, slice, int]], tensors: dict[str, np.ndarray]) -> None:
    k = end - n
    for name, where, width in placed:
        a = tensors.get(name)
        if a is None:  # an optional tensor absent from this request: no value
            dest[n:end, where] = np.nan
        else:
            dest[n:end, where] = a.reshape(k, width)


def _fill_one(dest: np.ndarray, n: int, placed: list[tuple[str, slice, int]], tensors: dict[str, np.ndarray]) -> None:
    """_fill for a one-row request: a (1, width) tensor goes in as it is, a (1, a, b) one is flattened first."""
    for name, where, width in placed:
        a = tensors.get(name)
        if a is None:
            dest[n, where] = np.nan
        else:
            try:
                dest[n, where] = a
            except ValueError:
                dest[n, where] = a.reshape(width)


class PredictionLog:
    """Column buffers written on the event loop; a daemon thread flushes them to the EventStore."""

    def __init__(self, events: EventStore, cfg: MonitoringConfig, registry: CollectorRegistry) -> None:
        self.events = events
        self.cfg = cfg
        # The lock guards the open and full segments against the flusher detaching them while a
        # record is being written; it is held for a copy on one side and a swap on the other.
        self._lock = threading.Lock()
        self._open: dict[tuple, Segment] = {}  # labels -> the segment being filled
        self._full: list[Segment] = []  # filled segments (and those put back by a failed flush), oldest first
        self._rows = 0  # rows in _open and _full
        self._columns: dict[tuple, Columns] = {}
        self._pending: list[tuple[tuple, dict[str, Any], Record]] = []  # this event-loop iteration's requests
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._stop = False
        self._seq = events.next_seq()
        self._requested = 0  # flush generations asked for by flush(); the flusher serves them in order
        self._served = 0
        self._last_retention = -math.inf  # the first flush applies retention at once
        self._last_results_retention = -math.inf
        self.rows = Counter("shepherd_prediction_log_rows", "Request rows written to the prediction log", registry=registry)
        self.dropped = Counter(
            "shepherd_prediction_log_dropped", "Requests not logged because the buffer was full", registry=registry
        )
        self.failures = Counter("shepherd_prediction_log_flush_failures", "Flushes that failed and were retried", registry=registry)
        self.record_errors = Counter(
            "shepherd_prediction_log_record_errors", "Requests not logged because their tensors did not fit the version's columns",
            registry=registry,
        )
        self.buffered = Gauge("shepherd_prediction_log_buffered", "Rows waiting for the next flush", registry=registry)
        self.buffered.set_function(lambda: self._rows)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # -- request path ---------------------------------------------------------------------

    def record(
        self, request_id: str, labels: tuple, signature: dict[str, Any],
        inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], latency_s: float,
    ) -> bool:
        """Log one answered request; False when sampled out or (outside an event loop) dropped.

        `labels` is (deployment, model, version, slot); `signature` the version's, which fixes its columns.
        On an event loop the request is kept until the end of the loop's iteration, and then the
        iteration's requests are copied into the columns together (`_drain`): one numpy copy per
        tensor for a whole wave of answered requests instead of several per request. Copied one by
        one in place, a row cost the loop 8 µs (benchmarks/README.md). Elsewhere it is copied at once.
        """
        cfg = self.cfg
        if cfg.sample_rate < 1.0 and random.random() >= cfg.sample_rate:
            return False
        item = (request_id, inputs, outputs, latency_s, time.time_ns() // 1000)
        loop = asyncio.events._get_running_loop()
        if loop is None:
            return self._write(labels, signature, [item]) == 1
        pending = self._pending
        pending.append((labels, signature, item))
        if len(pending) == 1:
            loop.call_soon(self._drain)
        return True

    def _drain(self) -> None:
        """Copy the requests kept during one event-loop iteration into the columns, a group per version and slot."""
        pending, self._pending = self._pending, []
        groups: dict[tuple, tuple[dict[str, Any], list[Record]]] = {}
        for labels, signature, item in pending:
            groups.setdefault(labels, (signature, []))[1].append(item)
        for labels, (signature, items) in groups.items():
            try:
                self._write(labels, signature, items)
            except Exception:  # never lose the other groups; these requests were answered already
                self.record_errors.inc(len(items))
                log.exception("prediction_log_record_failed", labels=labels, requests=len(items))

    def _write(self, labels: tuple, signature: dict[str, Any], records: list[Record]) -> int:
        """Copy requests of one (deployment, model, version, slot) into its segments; returns those written."""
        cfg = self.cfg
        columns = self._columns.get(labels)
        if columns is None:
            columns = self._columns[labels] = Columns(signature)
        ks = [request_rows(r[1]) for r in records]
        written = 0
        with self._lock:
            i = 0
            while i < len(records):
                k = ks[i]
                if self._rows + k > cfg.buffer_rows:  # not this request; a smaller one after it may fit
                    self.dropped.inc()
                    i += 1
                    continue
                seg = self._open.get(labels)
                if seg is None or seg.n + k > seg.capacity:
                    if seg is not None:
                        self._full.append(seg)
                    seg = self._open[labels] = Segment(labels, columns, _capacity(columns, k, cfg.buffer_rows))
                # the one-row requests that follow, as many as the buffer and this segment take, in one copy
                j = i
                room = min(seg.capacity - seg.n, cfg.buffer_rows - self._rows)
                while j < len(records) and ks[j] == 1 and j - i < room:
                    j += 1
                j = max(j, i + 1)
                try:
                    merged = j - i > 1 and seg.write_rows(records[i:j])
                except Exception:  # an odd one among them: one by one, below, finds it
                    merged = False
                if merged:
                    self._rows += j - i
                    written += j - i
                else:  # each of them fits: the run was sized to the segment and the buffer
                    for r in range(i, j):
                        try:
                            seg.write(records[r], ks[r])
                        except Exception:  # the log must never fail an answered request; the partial row is not counted
                            self.record_errors.inc()
                            log.exception("prediction_log_record_failed", request_id=records[r][0])
                        else:
                            self._rows += ks[r]
                            written += 1
                i = j
            if self._rows >= cfg.flush_rows:
                self._wake.set()
        return written

    # -- flushing -------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything recorded before this call is in DuckDB (used by feedback and tests).

        Called on the event loop, it first copies in the requests kept for the end of the iteration.
        (From another thread those are in the columns already: an iteration ends before the loop
        reads the next request, the one that led to this call.)
        """
        if self._pending and asyncio.events._get_running_loop() is not None:
            self._drain()
        with self._flushed:
            self._requested += 1
            target = self._requested
            self._wake.set()
            return self._flushed.wait_for(lambda: self._served >= target or self._stop, timeout)

    def close(self) -> None:
        """Flush everything and stop the thread (graceful shutdown); serving has stopped by then."""
        if self._pending:  # an event loop that stopped before the end of its last iteration
            self._drain()
        self._stop = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            if not self._stop:
                self._wake.wait(self.cfg.flush_interval_s)
                self._wake.clear()
            with self._flushed:
                target = self._requested
            failed = False
            try:
                self._flush_once()
            except Exception:
                self.failures.inc()
                log.exception("prediction_log_flush_failed")
                if not self._stop:
                    time.sleep(min(self.cfg.flush_interval_s, 1.0))
                    self._wake.set()  # retry now, not after a whole interval; a waiting flush() is still owed
                    continue
                failed = True  # stopping: one failure at close is final (logged), not retried forever
            self._maybe_retain()
            with self._flushed:
                self._served = max(self._served, target)
                self._flushed.notify_all()
            # Stopping: records written while the last flush ran (after it detached its segments)
            # are still buffered; flush again until none is left.
            if self._stop and (failed or not self._rows):
                if failed and self._rows:
                    log.error("prediction_log_records_lost_at_close", rows=self._rows)
                return

    def _flush_once(self) -> None:
        with self._lock:
            segments = [*self._full, *self._open.values()]
            self._full, self._open = [], {}
            rows = self._rows
            self._rows = 0
        if not rows:
            return
        try:
            parts, seq = [], self._seq
            for seg in segments:
                parts.append(seg.table(seq))
                seq += seg.n
            table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
            self.events.append_predictions(table, {(d, m, int(v)) for d, m, v, _ in {seg.labels for seg in segments}})
        except Exception:
            with self._lock:  # back in front, in order: nothing acknowledged is lost
                self._full[:0] = segments
                self._rows += rows
            raise
        self._seq += rows
        self.rows.inc(rows)

    def _maybe_retain(self) -> None:
        now = time.monotonic()
        if now - self._last_retention < RETENTION_EVERY_S and not self._stop:
            return
        self._last_retention = now
        cutoff = datetime.now(UTC) - timedelta(days=self.cfg.retention_days) if self.cfg.retention_days else None
        results_due = cutoff is not None and (now - self._last_results_retention >= RESULTS_RETENTION_EVERY_S or self._stop)
        try:
            deleted = self.events.apply_retention(cutoff, self.cfg.retention_rows)
            results = 0
            if results_due:
                self._last_results_retention = now
                results = self.events.apply_results_retention(cutoff)
        except Exception:
            log.exception("prediction_log_retention_failed")
            return
        if deleted or results:
            log.info("prediction_log_retention", deleted=deleted, results_deleted=results)


def _capacity(columns: Columns, k: int, buffer_rows: int) -> int:
    """Rows for a new segment: about SEGMENT_BYTES of x and y, within the buffer limit, and room for this request."""
    per_row = 8 * (columns.x_width + columns.y_width) + 16
    return max(k, min(SEGMENT_ROWS, buffer_rows, max(64, SEGMENT_BYTES // per_row)))
