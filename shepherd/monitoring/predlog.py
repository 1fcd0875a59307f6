"""The prediction log: every served request, written into column buffers and flushed to DuckDB in batches.

The batcher logs each batch as the model ran it (`record()`): the requests' rows go into
preallocated columns (a `Segment` per deployment, version and slot): the numeric inputs and
outputs flattened in the version's layout (`layout.py`) as float64, the request id, the timestamp
and the latency. A batch's inputs were stacked for the model anyway and its outputs come out
stacked, so a batch of any size costs one numpy copy per tensor; a lone request is a batch of one.
No request object is kept. A background thread (`flusher`) detaches the filled segments, wraps
their columns as one Arrow table (without copying a full segment's; a partly filled one's are copied
out, because the store keeps the newest rows in memory for the monitor), and appends it to DuckDB
in one INSERT.

Why columns and not a queue of request tuples: holding a second's worth of request objects
(dicts, arrays, tuples) until the flusher walked them cost the event loop 26-33 µs a request on
the 2-vCPU benchmark VM, and full garbage collections over the held objects stalled it for tens
of milliseconds (p99 38-47 ms against 10 ms without the log). Why per batch: copied per request,
each row cost the event loop 8 µs in place, where the HTTP stack has evicted numpy's code; gathered
per event-loop iteration and stacked again for the copy, 14 µs a request at 8 connections
(benchmarks/README.md, "Prediction log in columns" and "The prediction log copies what the model ran").

Durability: a flush runs when `flush_rows` rows are buffered or `flush_interval_s` has passed,
whichever is first. The batcher's worker logs a batch before it answers it; a run on the event
loop is logged by the loop's next callback, after its answers and before the loop reads any more
input (the copy then overlaps the client's turn-around). Either way a `flush()` asked for after an
answer was seen (feedback for it, say) covers that request. `close()` (SIGTERM, shutdown) flushes
everything still buffered. A crash (SIGKILL, power loss) loses what arrived since the last flush:
at most one interval.

Order: `seq` numbers the rows in the order they were recorded, and within a version also in time
order (`ts`). A version served in two slots at once (a candidate of the primary's own version) fills
two segments side by side; a flush that holds such interleaved segments puts its rows in time order
before numbering them, so that a time window of a version is one range of its seqs, as a count
window is (`EventStore.window_labelled`).

Back-pressure: the buffers hold at most `buffer_rows` rows. When DuckDB cannot keep up, further
requests are dropped and counted (`shepherd_prediction_log_dropped_total`); the request itself is
never delayed. Sampling (`sample_rate`) decides per request.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from shepherd.config import MonitoringConfig
from shepherd.monitoring.layout import Tensor, build_layout
from shepherd.store.events import EventStore, fixed_list

log = structlog.get_logger()
RETENTION_EVERY_S = 60.0
RESULTS_RETENTION_EVERY_S = 3600.0
"""Drift windows and evaluations are kept for days: an hourly pass is precise enough, and each pass scans drift_features."""
SEGMENT_ROWS = 4096
"""Rows per segment at most; fewer for wide layouts, so that a segment stays near SEGMENT_BYTES."""
SEGMENT_BYTES = 1 << 20
TIMESTAMP = pa.timestamp("us", tz="UTC")
Answered = tuple[tuple, "str | None", float, int]
"""One answered request of a batch: (labels, request id, latency in seconds, rows). Labels are
(deployment, model, version, slot); a request id of None means "do not log this one" (it timed out)."""


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

    def write(
        self, run: Sequence[Answered], first: int, end: int, total: int,
        inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], ts_us: int,
    ) -> None:
        """Copy requests in whose rows are rows first..end of the stacked tensors, which have `total`
        rows (the caller made sure they fit the segment).

        One numpy copy per tensor whatever the number of requests. Raises (and writes nothing that
        counts) when a tensor has not `total` rows of the version's width.
        """
        n = self.n
        m = end - first
        stop = n + m
        cols = self.columns
        for dest, placed, tensors in ((self.x, cols.x, inputs), (self.y, cols.y, outputs)):
            for name, where, width in placed:
                a = tensors.get(name)
                if a is None:  # an optional tensor absent from this request: no value
                    dest[n:stop, where] = np.nan
                    continue
                if a.ndim == 0 or len(a) != total:
                    raise ValueError(f"{name}: {a.shape[0] if a.ndim else 0} rows where the requests have {total}")
                if m != total:
                    a = a[first:end]
                dest[n:stop, where] = a.reshape(m, width)
        self.ts[n:stop] = ts_us
        if len(run) == m:  # one row each: the usual case
            self.latency[n:stop] = [r[2] * 1e6 for r in run]
            self.ids.extend([r[1] for r in run])
        else:
            ks = [r[3] for r in run]
            self.latency[n:stop] = np.repeat([r[2] * 1e6 for r in run], ks)
            at = n
            for r in run:
                self.ids.extend([r[1]] * r[3])
                self.row[at:at + r[3]] = np.arange(r[3], dtype=np.int32)
                at += r[3]
        self.n = stop

    def table(self, first_seq: int) -> pa.Table:
        """The filled rows as an Arrow table: the numeric columns of a full segment wrapped, of a
        partly filled one copied. The store keeps ts, x and y after the INSERT (`RecentPredictions`),
        and a view of a few rows would keep the whole preallocated segment alive with them."""
        n = self.n
        deployment, model, version, slot = self.labels
        if n < self.capacity:
            self.ts, self.x, self.y = self.ts[:n].copy(), self.x[:n].copy(), self.y[:n].copy()
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
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._stop = False
        self._seq = events.next_seq()
        self._requested = 0  # flush generations asked for by flush(); the flusher serves them in order
        self._served = 0
        self._last_results_retention = -math.inf  # the first retention pass (at start) does the results too
        self._flushing = 0  # rows detached by the flush under way, not yet in DuckDB
        self._durable_before = time.time_ns() // 1000  # see durable_before(); rows of earlier processes are in DuckDB or lost
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
        self._retention_stop = threading.Event()
        self._retainer = threading.Thread(target=self._retain_loop, name="prediction-log-retention", daemon=True)
        self._retainer.start()

    # -- request path ---------------------------------------------------------------------

    def record(
        self, signature: dict[str, Any], requests: Sequence[Answered], inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
    ) -> int:
        """Log answered requests whose rows are stacked, in order, in `inputs` and `outputs`; returns how many were logged.

        The batcher calls this with a batch as the model ran it; `signature` (the version's) fixes the
        columns. Consecutive requests with the same labels go in with one copy per tensor. A request
        is skipped when sampled out, when its id is None, or (counted) when the buffer is full; a
        smaller one after it may still fit. Never raises: a batch whose tensors do not fit the
        version's columns is counted in `record_errors` and logged, and the request was answered anyway.
        """
        cfg = self.cfg
        sampled = cfg.sample_rate < 1.0
        written = 0
        total = sum(r[3] for r in requests)  # rows of the stacked tensors
        run: list[Answered] = []
        first = row = 0  # the run's first row, and the next request's
        with self._lock:
            ts_us = time.time_ns() // 1000  # under the lock: a flush that detaches later holds every row stamped before it
            room = cfg.buffer_rows - self._rows
            for req in requests:
                labels, request_id, _, k = req
                keep = request_id is not None and not (sampled and random.random() >= cfg.sample_rate)
                if keep and k > room:
                    self.dropped.inc()
                    keep = False
                if run and (not keep or labels != run[0][0]):
                    written += self._put(signature, run, first, total, inputs, outputs, ts_us)
                    run = []
                    room = cfg.buffer_rows - self._rows  # what the run really took: none of a run that failed
                if keep:
                    if not run:
                        first = row
                    run.append(req)
                    room -= k
                row += k
            if run:
                written += self._put(signature, run, first, total, inputs, outputs, ts_us)
            if self._rows >= cfg.flush_rows:
                self._wake.set()
        return written

    def _put(
        self, signature: dict[str, Any], run: list[Answered], first: int, total: int,
        inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], ts_us: int,
    ) -> int:
        """Copy a run of requests of one (deployment, model, version, slot), whose rows start at row `first`
        of the stacked tensors, into its segments (lock held); returns those written."""
        labels = run[0][0]
        i, row = 0, first
        try:
            columns = self._columns.get(labels)
            if columns is None:
                columns = self._columns[labels] = Columns(signature)
            while i < len(run):
                seg = self._open.get(labels)
                k = run[i][3]
                if seg is None or seg.n + k > seg.capacity:
                    if seg is not None:
                        self._full.append(seg)
                    seg = self._open[labels] = Segment(labels, columns, _capacity(columns, k, self.cfg.buffer_rows))
                j, rows, free = i, 0, seg.capacity - seg.n
                while j < len(run) and rows + run[j][3] <= free:
                    rows += run[j][3]
                    j += 1
                seg.write(run[i:j], row, row + rows, total, inputs, outputs, ts_us)
                self._rows += rows
                row += rows
                i = j
        except Exception:  # the log must never fail an answered request; the partial rows are not counted
            self.record_errors.inc(len(run) - i)
            log.exception("prediction_log_record_failed", labels=labels, requests=len(run) - i, first_id=run[i][1])
        return i

    # -- flushing -------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything recorded before this call is in DuckDB (used by feedback and tests).

        Every answered request whose answer reached the caller is covered (the module's "Durability").
        """
        with self._flushed:
            self._requested += 1
            target = self._requested
            self._wake.set()
            return self._flushed.wait_for(lambda: self._served >= target or self._stop, timeout)

    def close(self) -> None:
        """Flush everything and stop the threads (graceful shutdown); serving has stopped by then. A retention
        pass under way is finished, not cut short; none is started."""
        self._stop = True
        self._retention_stop.set()
        self._wake.set()
        self._thread.join()
        self._retainer.join()

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
            with self._flushed:
                self._served = max(self._served, target)
                self._flushed.notify_all()
            # Stopping: records written while the last flush ran (after it detached its segments)
            # are still buffered; flush again until none is left.
            if self._stop and (failed or not self._rows):
                if failed and self._rows:
                    log.error("prediction_log_records_lost_at_close", rows=self._rows)
                return

    def durable_before(self) -> int:
        """Microseconds since the epoch: every row recorded with an earlier timestamp is in DuckDB. The monitor closes
        a time window only when its end is at or before this, so that no row of it is still on the way."""
        with self._lock:
            if not self._rows and not self._flushing:
                return time.time_ns() // 1000  # nothing buffered or being written: rows recorded from now on are later
            return self._durable_before

    def _flush_once(self) -> None:
        with self._lock:
            segments = [*self._full, *self._open.values()]
            self._full, self._open = [], {}
            rows = self._rows
            self._rows = 0
            self._flushing = rows
            detached = time.time_ns() // 1000
        if not rows:
            return
        try:
            parts, seq = [], self._seq
            for seg in segments:
                parts.append(seg.table(seq))
                seq += seg.n
            table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
            if _interleaved(segments):
                table = _in_time_order(table, self._seq)
            self.events.append_predictions(table, {(d, m, int(v)) for d, m, v, _ in {seg.labels for seg in segments}})
        except Exception:
            with self._lock:  # back in front, in order: nothing acknowledged is lost
                self._full[:0] = segments
                self._rows += rows
                self._flushing = 0
            raise
        with self._lock:
            self._flushing = 0
            self._durable_before = detached
        self._seq += rows
        self.rows.inc(rows)

    def _retain_loop(self) -> None:
        """Retention on a thread of its own: at start, then every RETENTION_EVERY_S. On the flusher's thread a long
        DELETE (a large table, the feedback it orphans) held up the flushes behind it, which stretched the crash
        bound (one flush interval) by as much and let the buffers fill. DuckDB appends and deletes in separate
        transactions without conflict: the INSERTs go on meanwhile."""
        while True:
            self._retain()
            if self._retention_stop.wait(RETENTION_EVERY_S):
                return

    def _retain(self) -> None:
        now = time.monotonic()
        cutoff = datetime.now(UTC) - timedelta(days=self.cfg.retention_days) if self.cfg.retention_days else None
        results_due = cutoff is not None and now - self._last_results_retention >= RESULTS_RETENTION_EVERY_S
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


def _interleaved(segments: list[Segment]) -> bool:
    """Whether some version's rows, taken in the flush's segment order, go back in time (see "Order")."""
    last: dict[tuple, int] = {}
    for seg in segments:
        if not seg.n:
            continue
        version = seg.labels[:3]
        if version in last and seg.ts[0] < last[version]:
            return True
        last[version] = int(seg.ts[seg.n - 1])
    return False


def _in_time_order(table: pa.Table, first_seq: int) -> pa.Table:
    """The flush's rows sorted by ts (stable: rows stamped alike keep the order they were recorded in), numbered again from first_seq."""
    table = table.take(pc.sort_indices(table, sort_keys=[("ts", "ascending")]))
    return table.set_column(table.schema.get_field_index("seq"), "seq", pa.array(np.arange(first_seq, first_seq + table.num_rows, dtype=np.int64)))


def _capacity(columns: Columns, k: int, buffer_rows: int) -> int:
    """Rows for a new segment: about SEGMENT_BYTES of x and y, within the buffer limit, and room for this request."""
    per_row = 8 * (columns.x_width + columns.y_width) + 16
    return max(k, min(SEGMENT_ROWS, buffer_rows, max(64, SEGMENT_BYTES // per_row)))
