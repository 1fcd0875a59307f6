"""Dynamic batching in Triton's style: one worker thread per loaded version, a bounded queue,
a maximum batch size (rows) and a maximum queue delay after the first request of a batch.

The event loop only enqueues and awaits a future; the worker thread concatenates compatible
requests along the first axis, runs ONNX Runtime (which releases the GIL) and splits the outputs.

Two exceptions, for a model whose warm-up median is at most `inline_max_us`: `run_inline`, where
a lone request runs on the calling thread, and loop batches (`submit`), where requests that arrive
together run as one merged batch from a callback on their event loop. "Lone" means nothing else is in flight for the
version after the caller has yielded to the event loop once (inference.infer does), so the
requests that arrived together start first and batch. Handing a request to the worker and back costs two
thread wake-ups (on the 2-vCPU benchmark VM the event loop's CPU per request rose from ~80 to
~320 µs at one connection), many times what such a model needs, and with nothing else in flight
there is nothing to batch it with; under load, the worker's hand-offs and GIL waits per batch
cost more than the batch. A version whose runs on the loop mostly compute (CPU time) for more than
INLINE_IN_SERVICE times the budget, or stall beyond INLINE_WALL_FACTOR times that, goes back to the
worker for a while.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog

from shepherd import sched
from shepherd.errors import ShepherdError
from shepherd.serving.codec import request_rows
from shepherd.serving.engine import ModelSession

log = structlog.get_logger()
_STOP = object()
INLINE_ROUND = 64
INLINE_RETRY_S = 30.0
# In service a run costs several times its warm-up median: warm-up runs back to back with ONNX
# Runtime's code and data in the CPU caches, a served request finds them evicted by the HTTP stack.
# Measured on the 2-vCPU benchmark VM for the 30-feature classifier: 7 µs warm, 37 µs median in
# service (benchmarks/README.md). The in-service check therefore allows this multiple of the budget.
INLINE_IN_SERVICE = 10
# A run on the loop is judged by the CPU time of the calling thread, not the wall clock: ONNX Runtime
# releases the GIL, and getting it back from a busy background thread (the prediction log's flusher)
# can take a switch interval, which says nothing about the model. Wall time still counts beyond this
# multiple of the limit (a device or machine that stalls the run itself).
INLINE_WALL_FACTOR = 10


class Overloaded(ShepherdError):
    """The slot's queue is full: the request is refused at once rather than left to wait."""

    status = 503
    code = "OVERLOADED"


class InferenceFailed(ShepherdError):
    """ONNX Runtime failed on a request that passed validation."""

    status = 500
    code = "INFERENCE_FAILED"


class Pending:
    """One request on its way through a batcher. `loop` None: an inline run, which needs no future.

    `request_id` and `started` (when the request arrived, perf_counter) are for the prediction log.
    """

    __slots__ = ("inputs", "rows", "future", "loop", "enqueued", "dropped", "labels", "request_id", "started")

    def __init__(
        self, inputs: dict[str, np.ndarray], loop: asyncio.AbstractEventLoop | None, labels: tuple,
        request_id: str | None = None, started: float | None = None,
    ) -> None:
        self.inputs = inputs
        self.rows = request_rows(inputs)
        self.future: asyncio.Future = loop.create_future() if loop is not None else None  # type: ignore[assignment]
        self.loop = loop
        self.enqueued = time.perf_counter()
        self.dropped = False
        self.labels = labels
        self.request_id = request_id
        self.started = self.enqueued if started is None else started


def _key(p: Pending) -> tuple:
    """Requests batch together only when every input agrees beyond the first axis."""
    return tuple((n, a.dtype.str, a.shape[1:]) for n, a in p.inputs.items())


def _settle_all(answers: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for fut, value, error in answers:
        if fut.done():  # timed out meanwhile
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


class Batcher:
    """Queue and worker for one ModelSession."""

    def __init__(
        self,
        session: ModelSession,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        inline_max_us: int = 0,
        slice_us: int = 0,
        observe: Callable[[list[Pending], float, float, int], None] | None = None,
        record: Callable[[list[Pending], dict[str, np.ndarray], dict[str, np.ndarray], float], None] | None = None,
    ) -> None:
        self.session = session
        self.max_rows = max_batch_size if session.batchable else 1
        self.delay = max_queue_delay_us / 1e6
        self.queue: queue.Queue = queue.Queue(max_queue_size)
        self.observe = observe
        # The prediction log: called with requests that succeeded, their rows stacked as the model
        # ran them (inputs, outputs), and when the model answered them (perf_counter); before they
        # are answered on the worker, right after on the event loop (_record_after_answer).
        self.record = record
        self.inline_budget = inline_max_us / 1e6
        self.inline_limit = self.inline_budget * INLINE_IN_SERVICE
        self.inline_wall_limit = self.inline_limit * INLINE_WALL_FACTOR
        # Inline runs are checked in rounds of INLINE_ROUND: when most runs of two rounds in a row
        # took longer than the in-service limit (the median is over it: a model slower than warm-up showed, a
        # busy GPU or machine), the version stops running inline for INLINE_RETRY_S, then new rounds
        # decide again. A few slow runs (a background thread holding the GIL) do not count.
        self.inline_ok = session.warm_seconds <= self.inline_budget
        self._inline_runs = 0
        self._inline_over = 0
        self._inline_retry_at = 0.0
        self._slow_rounds = 0
        # Requests admitted for this version and not yet answered (set by LoadedVersion). The worker
        # waits for more only while some of them are not in the batch yet: a lone request runs at
        # once instead of paying max_queue_delay_us, and under load batches still fill.
        self.in_flight: Callable[[], int] | None = None
        self._carry: Pending | None = None
        # Loop batches: requests to an inline model that arrive together, run as one batch by a
        # callback on their event loop (see submit).
        self._loop_batch: list[Pending] = []
        self.slice_us = slice_us  # the worker's time slice (shepherd.sched): it wakes for each batch
        self._thread = threading.Thread(target=self._work, name=f"batcher:{session.label}", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self.queue.qsize()

    def submit(self, inputs: dict[str, np.ndarray], labels: tuple = (), request_id: str | None = None, started: float | None = None) -> Pending:
        """Enqueue a validated request; its `future` resolves to {output name: array}. Raises Overloaded.

        A request to a model that runs inline joins the event loop's current loop batch instead of the
        queue (when nothing is queued, so it cannot overtake): the requests submitted in this loop
        iteration run together, as one batch, from a callback on the loop. For such a model the
        worker's two thread hand-offs and GIL waits per batch cost many times the batch itself.
        """
        loop = asyncio.get_running_loop()
        p = Pending(inputs, loop, labels, request_id, started)
        if self.inline_ok and p.rows <= self.session.warm_rows and self._carry is None and self.queue.empty():
            pending = self._loop_batch
            if not pending:
                loop.call_soon(self._run_loop_batch, pending)
                pending.append(p)
                return p
            if pending[0].loop is loop:
                pending.append(p)
                return p
        try:
            self.queue.put_nowait(p)
        except queue.Full:
            raise Overloaded(f"{self.session.label}: {self.queue.maxsize} requests already queued; retry later") from None
        return p

    def run_inline(
        self, inputs: dict[str, np.ndarray], labels: tuple = (), request_id: str | None = None, started: float | None = None,
    ) -> dict[str, np.ndarray] | None:
        """Run a lone request now, on this thread; None when it must go through the queue instead.

        Only when inline runs are on for this model, the caller's request is the only one admitted
        (`in_flight` counts it), nothing is queued, and the request has no more rows than warm-up ran.
        """
        if not self.inline_ok and self.inline_budget and self._inline_retry_at and time.monotonic() >= self._inline_retry_at:
            self.inline_ok, self._inline_retry_at = True, 0.0  # a fresh round decides again (the machine may have been busy)
        if not self.inline_ok or self.in_flight is None or self.in_flight() > 1 or self._carry is not None or not self.queue.empty():
            return None
        p = Pending(inputs, None, labels, request_id, started)
        if p.rows > self.session.warm_rows:
            return None
        started, cpu = time.perf_counter(), time.thread_time()
        result, error = self._run_one(p)
        done = time.perf_counter()
        self._account(done - started, time.thread_time() - cpu)
        self._observe([p], started, done, p.rows)
        if error is not None:
            raise error
        self._record_after_answer([p], [result], [error], p.inputs, result, done)
        return result

    def _account(self, wall: float, cpu: float) -> None:
        """Count one run on the event loop (lone or a loop batch) against the in-service limits."""
        self._inline_runs += 1
        self._inline_over += cpu > self.inline_limit or wall > self.inline_wall_limit
        if self._inline_runs == INLINE_ROUND:
            slow = self._inline_over * 2 > INLINE_ROUND
            self._slow_rounds = self._slow_rounds + 1 if slow else 0
            if self._slow_rounds >= 2:  # one slow round can be a background flush; two in a row is the model
                self._slow_rounds = 0
                self.inline_ok = False
                self._inline_retry_at = time.monotonic() + INLINE_RETRY_S
                log.warning("inline_disabled", model=self.session.label, over_budget=self._inline_over, runs=INLINE_ROUND,
                            limit_us=self.inline_limit * 1e6)
            self._inline_runs = self._inline_over = 0

    def _run_loop_batch(self, batch: list[Pending]) -> None:
        """Run the requests submitted in one loop iteration, as few batches as max_batch_size allows."""
        if batch is self._loop_batch:
            self._loop_batch = []  # later submissions start the next loop batch
        live = [p for p in batch if not p.dropped]
        i = 0
        while i < len(live):
            group, rows, key = [live[i]], live[i].rows, _key(live[i])
            i += 1
            while i < len(live) and rows + live[i].rows <= self.max_rows and _key(live[i]) == key:
                group.append(live[i])
                rows += live[i].rows
                i += 1
            started, cpu = time.perf_counter(), time.thread_time()
            results, errors, feed, outs = self._compute(group, rows)
            done = time.perf_counter()
            self._account(done - started, time.thread_time() - cpu)
            self._observe(group, started, done, rows)
            _settle_all(list(zip((p.future for p in group), results, errors)))
            self._record_after_answer(group, results, errors, feed, outs, done)

    def stop(self) -> None:
        """Finish what is queued, then end the worker thread."""
        self.queue.put(_STOP)
        self._thread.join()

    def _next(self, timeout: float | None) -> Any:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return self.queue.get(timeout=timeout) if timeout is None or timeout > 0 else self.queue.get_nowait()

    def _work(self) -> None:
        sched.request_path(self.slice_us, self._thread.name)
        while True:
            first = self._next(None)
            if first is _STOP:
                return
            if first.dropped:
                continue
            batch, rows, stop, key = [first], first.rows, False, _key(first)
            deadline = time.perf_counter() + self.delay
            while rows < self.max_rows:
                if self.in_flight is not None and self.in_flight() <= len(batch) and self.queue.empty() and self._carry is None:
                    break  # nobody else is coming: do not wait
                try:
                    nxt = self._next(deadline - time.perf_counter())
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                if nxt.dropped:
                    continue
                if _key(nxt) != key or rows + nxt.rows > self.max_rows:
                    self._carry = nxt
                    break
                batch.append(nxt)
                rows += nxt.rows
            self._execute(batch, rows)
            if stop:
                return

    def _run_one(self, p: Pending) -> tuple[dict[str, np.ndarray] | None, BaseException | None]:
        try:
            return dict(zip(self.session.output_names, self.session.run(p.inputs))), None
        except Exception as err:
            log.error("inference_failed", model=self.session.label, error=str(err))
            return None, InferenceFailed(f"{self.session.label}: inference failed ({type(err).__name__})")

    def _observe(self, batch: list[Pending], started: float, done: float, rows: int) -> None:
        if self.observe:
            try:
                self.observe(batch, started, done, rows)
            except Exception:  # metrics must never stop the worker
                log.exception("batch_observe_failed", model=self.session.label)

    def _record_after_answer(
        self, batch: list[Pending], results: list, errors: list, feed: dict | None, outs: dict | None, answered: float,
    ) -> None:
        """`_record` for a run on the event loop, as the loop's next callback: after the run's requests
        are answered, and before the loop reads any more input.

        With one client at a time the loop would otherwise copy the batch into the log while the
        client waits for its answer; after it, the copy overlaps the client's turn-around. The
        logged latency still ends at `answered`, when the run ended. Nothing that reaches the server
        after an answer (feedback for it, a flush) can overtake its record: a callback queued by the
        loop runs before the loop polls its sockets again.
        """
        if self.record is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called off an event loop: nothing to wait for
            self._record(batch, results, errors, feed, outs, answered)
            return
        loop.call_soon(self._record, batch, results, errors, feed, outs, answered)

    def _record(self, batch: list[Pending], results: list, errors: list, feed: dict | None, outs: dict | None, answered: float) -> None:
        """Hand the batch's successful requests to the prediction log: stacked when the model ran them so, else one by one.

        `answered` (perf_counter) is when the model answered them: their logged latency ends there.
        """
        if self.record is None:
            return
        try:
            if feed is not None and outs is not None:
                self.record(batch, feed, outs, answered)
                return
            for p, result, error in zip(batch, results, errors):
                if error is None:
                    self.record([p], p.inputs, result, answered)
        except Exception:  # the log must never fail an answered request
            log.exception("prediction_log_record_failed", model=self.session.label)

    def _execute(self, batch: list[Pending], rows: int) -> None:
        started = time.perf_counter()
        results, errors, feed, outs = self._compute(batch, rows)
        self._record(batch, results, errors, feed, outs, time.perf_counter())
        self._finish(batch, results, errors, started, rows)

    def _compute(self, batch: list[Pending], rows: int) -> tuple[list, list, dict | None, dict | None]:
        """Run a batch: one merged run, split per request. Never raises.

        Returns (results, errors) in batch order, and the stacked inputs and outputs when one run
        answered every request (else None, None).
        """
        if len(batch) == 1:
            result, error = self._run_one(batch[0])
            return [result], [error], (batch[0].inputs if error is None else None), result
        try:
            names = self.session.output_names
            feed = {n: np.concatenate([p.inputs[n] for p in batch]) for n in batch[0].inputs}
            outs = self.session.run(feed)
            if any(o.ndim == 0 or o.shape[0] != rows for o in outs):
                # an output without a batch axis: run each request on its own
                results = [dict(zip(names, self.session.run(p.inputs))) for p in batch]
                return results, [None] * len(batch), None, None
            cuts = np.cumsum([p.rows for p in batch])[:-1]
            split = [np.split(o, cuts) for o in outs]
            results = [dict(zip(names, parts)) for parts in zip(*split)]
            return results, [None] * len(batch), feed, dict(zip(names, outs))
        except Exception:  # run each request alone, so one bad request cannot fail the others
            results, errors = map(list, zip(*(self._run_one(p) for p in batch)))
            return results, errors, None, None

    def _finish(self, batch: list[Pending], results: list, errors: list, started: float, rows: int) -> None:
        # Count first, answer second: statistics read after a response already include it.
        self._observe(batch, started, time.perf_counter(), rows)
        # One wake-up of each event loop per batch, not one per request (each costs the loop a syscall).
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any, BaseException | None]]] = {}
        for p, res, error in zip(batch, results, errors):
            by_loop.setdefault(p.loop, []).append((p.future, res, error))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, answers)
            except RuntimeError:  # its event loop has closed (shutdown): nobody is waiting any more
                pass
