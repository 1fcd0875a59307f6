"""The request path's time slice (shepherd.sched): set on the calling thread only, keeps its nice
value, reaches the batcher's worker, and never fails a thread where the system has no such call."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from shepherd import sched

SUPPORTED = sched.thread_slice_us() is not None
needs_slices = pytest.mark.skipif(not SUPPORTED, reason="no per-thread time slice here (Linux before 6.12, or not Linux)")


def on_thread(fn):
    """Run `fn` on a new thread and return what it returned (its scheduling changes die with it)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


@needs_slices
def test_slice_is_set_on_the_calling_thread_only_and_keeps_nice():
    default = sched.thread_slice_us()

    def body():
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 7)  # on Linux, per thread
        got = sched.set_thread_slice(250)
        child = on_thread(sched.thread_slice_us)  # threads it starts get the default again
        back = sched.set_thread_slice(0)  # 0: the kernel's default again
        return got, child, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), back

    got, child, nice, back = on_thread(body)
    assert got == 250
    assert child == default
    assert nice == 7
    assert back == default
    assert sched.thread_slice_us() == default  # this thread untouched


@needs_slices
def test_the_kernel_clamps_the_slice():
    assert on_thread(lambda: sched.set_thread_slice(20)) == 100  # 0.1 ms at least


def test_unsupported_systems_change_nothing(monkeypatch):
    monkeypatch.setattr(sched.platform, "machine", lambda: "sparc64")
    assert sched.thread_slice_us() is None
    assert sched.set_thread_slice(100) is None
    sched.request_path(100, "t")  # no error


def test_a_refused_slice_is_logged_not_raised(monkeypatch):
    def refuse(us):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(sched, "set_thread_slice", refuse)
    sched.request_path(100, "t")
    monkeypatch.setattr(sched, "set_thread_slice", lambda us: 1 / 0)
    sched.request_path(100, "t")  # nothing unexpected ends the thread either
    calls = []
    monkeypatch.setattr(sched, "set_thread_slice", calls.append)
    sched.request_path(0, "t")  # 0: leave the thread alone
    assert calls == []


@needs_slices
@pytest.mark.parametrize("slice_us", [100, 0])
def test_the_batcher_worker_asks_for_the_configured_slice(appliance, make_bundle, slice_us):
    appliance.config.serving.request_slice_us = slice_us
    appliance.importer.import_file(make_bundle(), actor="t")
    asyncio.run(appliance.deployments.deploy("d", "tiny", 1, actor="t"))
    worker = appliance.deployments.route("d", 1)[1].batcher._thread
    for _ in range(100):  # the worker sets it as it starts
        got = sched.thread_slice_us(worker.native_id)
        if got == (slice_us or on_thread(sched.thread_slice_us)):
            break
        threading.Event().wait(0.01)
    assert got == (slice_us or on_thread(sched.thread_slice_us))
