"""The prediction log: every served request, buffered in memory and flushed to DuckDB in batches.

The request path calls `record()`, which appends one tuple holding references to the decoded
inputs and the outputs: no copy, no formatting, no I/O, a few microseconds. A background thread
(`flusher`) swaps the buffer out under a lock, flattens each request's tensors into the
version's layout (`layout.py`), builds one Arrow table and appends it to DuckDB in one INSERT.

Durability: a flush runs when `flush_rows` requests are buffered or `flush_interval_s` has
passed, whichever is first. `close()` (SIGTERM, shutdown) flushes everything still buffered.
A crash (SIGKILL, power loss) loses what arrived since the last flush: at most one interval.

Back-pressure: the buffer holds at most `buffer_rows` requests. When DuckDB cannot keep up,
further records are dropped and counted (`shepherd_prediction_log_dropped_total`); the request
itself is never delayed. Sampling (`sample_rate`) decides per request, before anything is kept.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from shepherd.config import MonitoringConfig
from shepherd.monitoring.layout import Layout
from shepherd.store.events import EventStore, fixed_list

log = structlog.get_logger()
RETENTION_EVERY_S = 60.0


class PredictionLog:
    """Buffers records on the event loop; a daemon thread flushes them to the EventStore."""

    def __init__(
        self,
        events: EventStore,
        cfg: MonitoringConfig,
        layout_of: Callable[[str, int, dict[str, Any]], Layout],
        registry: CollectorRegistry,
    ) -> None:
        self.events = events
        self.cfg = cfg
        self.layout_of = layout_of
        # A deque, never swapped: append (event loop) and popleft (flusher) are each atomic, so a
        # record appended while a flush is under way simply waits for the next one. (Swapping a
        # list lost records appended to the old list after the flusher had taken it.)
        self._buf: collections.deque[tuple] = collections.deque()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._stop = False
        self._seq = events.next_seq()
        self._flush_count = 0
        self._requested = 0  # flush generations asked for by flush(); the flusher serves them in order
        self._served = 0
        self._last_retention = 0.0
        self.rows = Counter("shepherd_prediction_log_rows", "Request rows written to the prediction log", registry=registry)
        self.dropped = Counter(
            "shepherd_prediction_log_dropped", "Requests not logged because the buffer was full", registry=registry
        )
        self.failures = Counter("shepherd_prediction_log_flush_failures", "Flushes that failed and were retried", registry=registry)
        self.buffered = Gauge("shepherd_prediction_log_buffered", "Requests waiting for the next flush", registry=registry)
        self.buffered.set_function(lambda: len(self._buf))
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # -- request path ---------------------------------------------------------------------

    def record(
        self, request_id: str, labels: tuple, signature: dict[str, Any],
        inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], latency_s: float,
    ) -> bool:
        """Keep one answered request for the next flush; False when sampled out or dropped."""
        rate = self.cfg.sample_rate
        if rate < 1.0 and random.random() >= rate:
            return False
        buf = self._buf
        if len(buf) >= self.cfg.buffer_rows:
            self.dropped.inc()
            return False
        buf.append((request_id, time.time(), labels, signature, inputs, outputs, latency_s))
        if len(buf) >= self.cfg.flush_rows:
            self._wake.set()
        return True

    # -- flushing -------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything recorded before this call is in DuckDB (used by feedback and tests)."""
        with self._flushed:
            self._requested += 1
            target = self._requested
            self._wake.set()
            return self._flushed.wait_for(lambda: self._served >= target or self._stop, timeout)

    def close(self) -> None:
        """Flush everything and stop the thread (graceful shutdown)."""
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
                    continue
                failed = True  # stopping: one failure at close is final (logged), not retried forever
            self._maybe_retain()
            with self._flushed:
                self._served = max(self._served, target)
                self._flushed.notify_all()
            # Stopping: records appended while the last flush ran (after it took its batch) are
            # still buffered; flush again until none is left.
            if self._stop and (failed or not self._buf):
                if failed and self._buf:
                    log.error("prediction_log_records_lost_at_close", records=len(self._buf))
                return

    def _flush_once(self) -> None:
        buf = self._buf
        batch = [buf.popleft() for _ in range(len(buf))]
        if not batch:
            return
        try:
            table = self._table(batch)
            self.events.append_predictions(table, {(lab[0], lab[1], int(lab[2])) for lab in {r[2] for r in batch}})
        except Exception:
            self._buf.extendleft(reversed(batch))  # back in front, in order: nothing acknowledged is lost
            raise
        self._seq += table.num_rows
        self.rows.inc(table.num_rows)

    def _table(self, batch: list[tuple]) -> pa.Table:
        """One Arrow table for a batch: requests of the same version are flattened together."""
        # Requests carry their version's shared labels tuple (LoadedVersion.labels), so one version's
        # batch is recognised without a pass in Python; mixed batches are grouped by (model, version).
        first = batch[0][2]
        if all(r[2] is first for r in batch):
            groups = {(first[1], int(first[2])): batch}
        else:
            groups: dict[tuple[str, int], list[tuple]] = {}
            for rec in batch:
                labels = rec[2]
                groups.setdefault((labels[1], int(labels[2])), []).append(rec)
        parts = []
        seq = self._seq
        for (model, version), recs in groups.items():
            ids, tss, labels, sigs, ins, outs, lats = zip(*recs)  # one column per field, transposed in C
            layout = self.layout_of(model, version, sigs[0])
            rows = np.fromiter(map(_rows, ins), dtype=np.int64, count=len(recs))
            n = int(rows.sum())
            single = bool((rows == 1).all())  # every request one row: no repeat needed
            x = _flatten(ins, layout.inputs, rows)
            y = _flatten(outs, layout.outputs, rows)

            def per_row(values: Any, kind: pa.DataType, rows: np.ndarray = rows, single: bool = single) -> pa.Array:
                arr = pa.array(values, kind)
                return arr if single else arr.take(pa.array(np.repeat(np.arange(len(values)), rows)))

            same = labels[0]
            if all(lab is same for lab in labels):
                deployment, slot = pa.array([same[0]] * n, pa.string()), pa.array([same[3]] * n, pa.string())
            else:
                deployment = per_row([lab[0] for lab in labels], pa.string())
                slot = per_row([lab[3] for lab in labels], pa.string())
            row_index = np.zeros(n, np.int32) if single else np.concatenate([np.arange(k, dtype=np.int32) for k in rows])
            parts.append(pa.table({
                "seq": pa.array(np.arange(seq, seq + n, dtype=np.int64)),
                "request_id": per_row(ids, pa.string()),
                "row": pa.array(row_index),
                "ts": per_row(np.multiply(tss, 1e6).astype(np.int64), pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "deployment": deployment,
                "model": pa.array([model] * n, pa.string()),
                "version": pa.array(np.full(n, version, dtype=np.int32)),
                "slot": slot,
                "latency_us": per_row(np.multiply(lats, 1e6).astype(np.float32), pa.float32()),
                "x": fixed_list(x), "y": fixed_list(y),
            }))
            seq += n
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _maybe_retain(self) -> None:
        now = time.monotonic()
        if now - self._last_retention < RETENTION_EVERY_S and not self._stop:
            return
        self._last_retention = now
        cutoff = datetime.now(UTC) - timedelta(days=self.cfg.retention_days) if self.cfg.retention_days else None
        try:
            deleted = self.events.apply_retention(cutoff, self.cfg.retention_rows)
        except Exception:
            log.exception("prediction_log_retention_failed")
            return
        if deleted:
            log.info("prediction_log_retention", deleted=deleted)


def _rows(tensors: dict[str, np.ndarray]) -> int:
    for a in tensors.values():
        return a.shape[0] if a.ndim else 1
    return 1


def _flatten(dicts: Sequence[dict[str, np.ndarray]], tensors: list, rows: np.ndarray) -> np.ndarray:
    """Rows of every request, each tensor as (rows, width), side by side as float64."""
    n = int(rows.sum())
    if not tensors:
        return np.empty((n, 0))
    cols = []
    for t in tensors:
        try:
            col = np.concatenate([d[t.name] for d in dicts]).reshape(n, t.width)
        except (KeyError, ValueError):  # a tensor missing from some requests, or 0-d: one request at a time
            col = np.concatenate([
                np.asarray(d[t.name]).reshape(k, t.width) if t.name in d else np.full((k, t.width), np.nan)
                for d, k in zip(dicts, rows)
            ])
        cols.append(col.astype(np.float64, copy=False))
    return cols[0] if len(cols) == 1 else np.hstack(cols)
