"""The batcher's inline path: when a lone request runs on the event loop, and when it must not."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time

import numpy as np
import pytest

from shepherd.deploy.manager import DeploymentManager
from shepherd.serving.batcher import INLINE_IN_SERVICE, INLINE_ROUND, Batcher, InferenceFailed
from shepherd.serving.inference import RequestTimeout, _expire


class FakeSession:
    """Stands in for ModelSession: y = 2x, records the thread of every run, optional delay or failure."""

    batchable = True
    label = "fake:1"
    output_names = ["y"]

    def __init__(self, warm_seconds: float, warm_rows: int = 1, delay: float = 0.0, fail: bool = False, busy: float = 0.0) -> None:
        self.warm_seconds = warm_seconds
        self.warm_rows = warm_rows
        self.delay = delay  # waiting (no CPU): a device, or the GIL
        self.busy = busy  # computing on the calling thread (CPU)
        self.fail = fail
        self.threads: list[str] = []

    def run(self, feed):
        self.threads.append(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.busy:
            end = time.thread_time() + self.busy
            while time.thread_time() < end:
                pass
        if self.fail:
            raise RuntimeError("boom")
        return [feed["x"] * 2]


def make(session: FakeSession, inline_max_us: int, in_flight: int = 1) -> tuple[Batcher, list]:
    seen: list = []
    b = Batcher(
        session, max_batch_size=8, max_queue_delay_us=0, max_queue_size=8, inline_max_us=inline_max_us,
        observe=lambda batch, started, done, rows: seen.append((len(batch), rows, done - started)),
    )
    b.in_flight = lambda: in_flight
    return b, seen


async def serve(b: Batcher, x: np.ndarray) -> dict:
    """What inference.infer does: inline if allowed, else through the queue."""
    out = b.run_inline({"x": x})
    if out is None:
        out = await b.submit({"x": x}).future
    return out


async def serve_many(b: Batcher, n: int) -> None:
    """`n` lone requests, one after another."""
    for _ in range(n):
        await serve(b, np.ones((1, 3), np.float32))


def test_lone_request_to_a_tiny_model_runs_on_the_calling_thread():
    s = FakeSession(warm_seconds=5e-6)
    b, seen = make(s, inline_max_us=50)
    x = np.arange(3, dtype=np.float32)[None]
    out = asyncio.run(serve(b, x))
    b.stop()
    np.testing.assert_array_equal(out["y"], x * 2)
    assert s.threads == [threading.current_thread().name]
    assert seen and seen[0][:2] == (1, 1), "inline runs are counted like a batch of one"


@pytest.mark.parametrize(
    ("why", "session", "budget", "in_flight", "rows"),
    [
        ("inline is off (0)", FakeSession(5e-6), 0, 1, 1),
        ("the model is slower than the budget", FakeSession(200e-6), 50, 1, 1),
        ("more rows than warm-up measured", FakeSession(5e-6, warm_rows=1), 50, 1, 4),
    ],
)
def test_request_goes_through_the_worker(why, session, budget, in_flight, rows):
    b, _ = make(session, inline_max_us=budget, in_flight=in_flight)
    x = np.ones((rows, 3), dtype=np.float32)
    out = asyncio.run(serve(b, x))
    b.stop()
    np.testing.assert_array_equal(out["y"], x * 2)
    assert session.threads == [b._thread.name], why


def test_queued_work_keeps_order_no_inline_overtaking():
    """With a request already queued, a new one must not overtake it inline or in a loop batch."""
    s = FakeSession(5e-6, delay=0.2)
    b, _ = make(s, inline_max_us=50)

    async def scenario():
        x = np.ones((1, 3), np.float32)
        b.inline_ok = False  # as after a slow spell: these two go to the worker
        first, second = b.submit({"x": x}), b.submit({"x": x})  # the worker sleeps in `first`; `second` waits
        b.inline_ok = True
        assert b.run_inline({"x": x}) is None
        third = b.submit({"x": x})
        await asyncio.gather(first.future, second.future, third.future)

    asyncio.run(scenario())
    b.stop()
    assert set(s.threads) == {b._thread.name}


@pytest.mark.parametrize(
    ("why", "busy", "delay"),
    [
        ("the model computes for 40x the budget on this thread", 2e-3, 0.0),
        ("the run stalls (device, machine) beyond the wall limit", 0.0, 0.6),
    ],
)
def test_inline_turns_itself_off_when_runs_are_slower_than_the_budget(why, busy, delay):
    s = FakeSession(warm_seconds=5e-6)
    b, _ = make(s, inline_max_us=50)  # in-service limit 500 µs of CPU, 5 ms of wall time
    s.busy, s.delay = busy, delay / INLINE_ROUND  # the model turned out slow
    asyncio.run(serve_many(b, 2 * INLINE_ROUND + 10))
    b.stop()
    assert not b.inline_ok, why
    inline_runs = s.threads.count(threading.current_thread().name)
    assert inline_runs == 2 * INLINE_ROUND, "two rounds of mostly slow runs switch inline off; the rest go to the worker"
    assert s.threads[-1] == b._thread.name
    b2, _ = make(FakeSession(5e-6), inline_max_us=50)
    b2.inline_ok, b2._inline_retry_at = False, time.monotonic() - 1  # switched off a while ago
    assert asyncio.run(serve(b2, np.ones((1, 3), np.float32))) is not None and b2.inline_ok, "after the pause a new round is tried"
    b2.stop()


@pytest.mark.parametrize(
    ("why", "session", "budget"),
    [
        # waiting (the GIL held by a background thread) is not the model's fault: 4x the 500 µs limit in wall time, no CPU
        ("a run that only waits", FakeSession(warm_seconds=5e-6, delay=2e-3), 50),
        # served runs find cold caches (37 µs for a 7 µs warm-up): up to INLINE_IN_SERVICE x the budget is still inline
        ("a run computing for half the in-service limit", FakeSession(warm_seconds=5e-6, busy=(INLINE_IN_SERVICE // 2) * 1e-4), 100),
    ],
)
def test_runs_within_the_in_service_limits_keep_inline_on(why, session, budget):
    b, _ = make(session, inline_max_us=budget)
    asyncio.run(serve_many(b, 2 * INLINE_ROUND + 5))
    b.stop()
    assert b.inline_ok and set(session.threads) == {threading.current_thread().name}, why


def test_requests_arriving_together_run_as_one_loop_batch():
    """Not alone, to an inline model: the requests submitted in one loop iteration run as one batch on the loop."""
    s = FakeSession(warm_seconds=5e-6)
    b, seen = make(s, inline_max_us=50, in_flight=5)

    async def scenario():
        xs = [np.full((1, 3), i, np.float32) for i in range(5)]
        outs = await asyncio.gather(*(serve(b, x) for x in xs))
        for x, out in zip(xs, outs):
            np.testing.assert_array_equal(out["y"], x * 2)

    asyncio.run(scenario())
    b.stop()
    assert s.threads == [threading.current_thread().name], "one merged run, on the event loop's thread"
    assert [(n, rows) for n, rows, _ in seen] == [(5, 5)]


def test_loop_batches_respect_max_batch_size_and_split_by_shape():
    """A loop batch is cut at max_batch_size rows and never merges requests whose shapes differ beyond axis 0."""
    s = FakeSession(warm_seconds=5e-6, warm_rows=4)
    b, seen = make(s, inline_max_us=50, in_flight=10)  # max_batch_size 8

    async def scenario():
        loop_futures = [b.submit({"x": np.ones((3, 3), np.float32)}).future for _ in range(4)]  # 12 rows: 3 + 3, then 3 + 3
        loop_futures.append(b.submit({"x": np.ones((1, 5), np.float32)}).future)  # another shape: its own run
        return await asyncio.gather(*loop_futures)

    outs = asyncio.run(scenario())
    b.stop()
    assert [o["y"].shape for o in outs] == [(3, 3)] * 4 + [(1, 5)]
    assert [(n, rows) for n, rows, _ in seen] == [(2, 6), (2, 6), (1, 1)]
    assert set(s.threads) == {threading.current_thread().name}


def test_a_batch_wakes_the_event_loop_once():
    """The worker answers a whole batch with one call_soon_threadsafe, not one per request."""
    s = FakeSession(warm_seconds=1.0)  # never inline
    b = Batcher(s, max_batch_size=8, max_queue_delay_us=200_000, max_queue_size=16, observe=None)
    b.in_flight = lambda: 6
    wakeups = []

    async def scenario():
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a, **k: wakeups.append(a[0]) or original(*a, **k)
        xs = [np.full((1, 3), i, np.float32) for i in range(6)]
        pending = [b.submit({"x": x}) for x in xs]
        outs = await asyncio.gather(*(p.future for p in pending))
        for x, out in zip(xs, outs):
            np.testing.assert_array_equal(out["y"], x * 2)

    asyncio.run(scenario())
    b.stop()
    assert len(s.threads) == 1 and len(wakeups) == 1, (s.threads, wakeups)


def test_a_few_slow_inline_runs_do_not_turn_it_off():
    """Occasional slow runs (a background thread holding the GIL) leave inline on: the median decides."""
    s = FakeSession(warm_seconds=5e-6)
    b, _ = make(s, inline_max_us=1000)
    slow = {3, 17, 40}

    async def scenario():
        for i in range(2 * INLINE_ROUND):
            s.delay = 3e-3 if i in slow else 0.0
            await serve(b, np.ones((1, 3), np.float32))

    asyncio.run(scenario())
    b.stop()
    assert b.inline_ok and set(s.threads) == {threading.current_thread().name}


def test_inline_failure_raises_inference_failed():
    s = FakeSession(5e-6, fail=True)
    b, seen = make(s, inline_max_us=50)
    with pytest.raises(InferenceFailed, match="fake:1: inference failed"):
        asyncio.run(serve(b, np.ones((1, 3), np.float32)))
    b.stop()
    assert len(seen) == 1


class Recorder:
    """Stands in for the prediction log: what the batcher hands over, whether any request was answered by then, and when the answer was."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, np.ndarray, np.ndarray, bool, str, float]] = []

    def __call__(self, batch, inputs, outputs, answered_at) -> None:
        answered = any(p.future is not None and p.future.done() for p in batch)
        self.calls.append(([p.request_id for p in batch], inputs["x"].copy(), outputs["y"].copy(), answered, threading.current_thread().name,
                           answered_at))


@pytest.mark.parametrize("how", ["loop batch", "worker", "inline"])
def test_each_batch_is_logged_stacked_as_the_model_ran_it(how):
    """The log gets the batch's ids and tensors stacked (one copy per tensor) and the time of the answer; the worker logs
    before it answers, a run on the event loop right after its answers and before the loop reads any input that came later."""
    s = FakeSession(warm_seconds=1.0 if how == "worker" else 5e-6)
    n = 1 if how == "inline" else 4
    b = Batcher(s, max_batch_size=8, max_queue_delay_us=200_000, max_queue_size=16, inline_max_us=50)
    b.in_flight = lambda: n
    rec = b.record = Recorder()
    xs = [np.full((1, 3), i, np.float32) for i in range(n)]

    async def scenario():
        loop = asyncio.get_running_loop()
        server, client = socket.socketpair()
        logged_when_read: asyncio.Future = loop.create_future()
        loop.add_reader(server, lambda: logged_when_read.done() or logged_when_read.set_result(len(rec.calls)))
        try:
            if how == "inline":
                outs = [b.run_inline({"x": xs[0]}, request_id="r0")]
                logged_at_once = len(rec.calls)
            else:
                pending = [b.submit({"x": x}, request_id=f"r{i}") for i, x in enumerate(xs)]
                outs = await asyncio.gather(*(p.future for p in pending))
                logged_at_once = None
            got = time.perf_counter()
            client.send(b"the next request")  # input that reaches the server after the answers
            return outs, got, logged_at_once, await logged_when_read
        finally:
            loop.remove_reader(server)
            server.close()
            client.close()

    outs, got, logged_at_once, logged_when_read = asyncio.run(scenario())
    b.stop()
    assert [o["y"].tolist() for o in outs] == [(x * 2).tolist() for x in xs]
    assert logged_when_read == 1 and len(rec.calls) == 1
    ids, x, y, answered, thread, answered_at = rec.calls[0]
    assert ids == [f"r{i}" for i in range(n)]
    np.testing.assert_array_equal(x, np.concatenate(xs))
    np.testing.assert_array_equal(y, np.concatenate(xs) * 2)
    assert answered_at <= got  # the logged latency ends at the answer, not when the log got the batch
    if how == "worker":
        assert not answered and thread != threading.current_thread().name
    else:
        assert thread == threading.current_thread().name
        assert answered if how == "loop batch" else logged_at_once == 0  # off the answer's path


def test_a_request_answered_before_its_timer_fires_is_logged_and_one_expired_before_its_run_is_not():
    """A loop batch logs after its answers, as the loop's next callback. A request timer that fires in between
    (the same loop iteration) finds the request answered: it stays answered and logged. One whose timer fired
    before the run gets 504, is not run, and is not logged."""

    class Log:
        def __init__(self) -> None:
            self.ids: list = []

        def record(self, signature, answered, inputs, outputs):
            self.ids.extend(a[1] for a in answered)

    s = FakeSession(warm_seconds=5e-6)
    b = Batcher(s, max_batch_size=8, max_queue_delay_us=0, max_queue_size=16, inline_max_us=50)
    b.in_flight = lambda: 3
    predlog = Log()
    b.record = functools.partial(DeploymentManager._record, predlog, {})  # the real rule: a dropped request is not logged
    xs = [np.full((1, 3), i, np.float32) for i in range(3)]

    async def scenario():
        loop = asyncio.get_running_loop()
        pending = [b.submit({"x": x}, request_id=f"r{i}") for i, x in enumerate(xs)]  # the loop batch is queued first
        _expire(pending[0], "d", 0.1)  # timed out before the batch ran
        loop.call_soon(_expire, pending[1], "d", 0.1)  # fires after the batch's answers, before its record
        outs = await asyncio.gather(*(p.future for p in pending), return_exceptions=True)
        return outs, [p.dropped for p in pending]

    outs, dropped = asyncio.run(scenario())
    b.stop()
    assert isinstance(outs[0], RequestTimeout)
    assert [o["y"].tolist() for o in outs[1:]] == [(x * 2).tolist() for x in xs[1:]]
    assert dropped == [True, False, False]
    assert predlog.ids == ["r1", "r2"]
    assert len(s.threads) == 1  # one run, of the two live requests


def test_when_the_merged_run_fails_only_the_requests_that_succeeded_alone_are_logged():
    """One bad request fails the merged run; the others are run and logged one by one, the bad one not at all."""

    class Picky(FakeSession):
        def run(self, feed):
            if (feed["x"] < 0).any():
                raise RuntimeError("negative")
            return super().run(feed)

    s = Picky(warm_seconds=5e-6)
    b = Batcher(s, max_batch_size=8, max_queue_delay_us=0, max_queue_size=16, inline_max_us=50)
    b.in_flight = lambda: 3
    rec = b.record = Recorder()
    xs = [np.full((1, 3), v, np.float32) for v in (1, -1, 2)]

    async def scenario():
        pending = [b.submit({"x": x}, request_id=f"r{i}") for i, x in enumerate(xs)]
        return await asyncio.gather(*(p.future for p in pending), return_exceptions=True)

    outs = asyncio.run(scenario())
    b.stop()
    assert isinstance(outs[1], InferenceFailed) and not isinstance(outs[0], Exception)
    assert [(c[0], c[1].tolist()) for c in rec.calls] == [(["r0"], xs[0].tolist()), (["r2"], xs[2].tolist())]


def test_a_failing_log_never_fails_the_request():
    s = FakeSession(5e-6)
    b, _ = make(s, inline_max_us=50)

    def broken(batch, inputs, outputs, answered_at):
        raise RuntimeError("log broken")

    b.record = broken
    out = asyncio.run(serve(b, np.ones((1, 3), np.float32)))
    b.stop()
    np.testing.assert_array_equal(out["y"], np.full((1, 3), 2, np.float32))
