"""How the threads that answer requests ask Linux to run them: a short time slice.

On the 2-vCPU machines a woken event loop waited out whatever burst of background work (a
prediction-log flush, a drift pass, a DuckDB INSERT) held its CPU, whatever that work's nice
value: Linux's EEVDF scheduler lets the running task finish its slice (1.4 ms by default on two
CPUs) before a woken one runs. Since Linux 6.12 a thread can ask for its own
slice (`sched_setattr`, `sched_runtime` for SCHED_OTHER, 0.1 to 100 ms), and a thread that wakes
with a shorter slice than the running one preempts it at once (benchmarks/README.md, "A short
time slice for the request path").

So the threads that wait for requests and answer them (the event loop, each version's batcher
worker) ask for `serving.request_slice_us`, and background threads keep the kernel's default.
Only the thread itself is changed: its nice value and policy stay, and the threads it starts
later (model loads, worker threads for blocking calls) get the default slice again
(SCHED_FLAG_RESET_ON_FORK; which also starts them at nice 0 if this thread's nice is negative). Older kernels accept the call and ignore the slice (it reads back as 0), other
systems have no such call; either way the request path runs as it did.

The standard library has no `sched_setattr` and no maintained package wraps it, so this calls
it through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import structlog

log = structlog.get_logger()

_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
"""(sched_setattr, sched_getattr) by machine: x86_64's table and the generic one arm64 uses (64-bit processes only)."""
SCHED_FLAG_RESET_ON_FORK = 0x01


class _SchedAttr(ctypes.Structure):
    """struct sched_attr, SCHED_ATTR_SIZE_VER1 (56 bytes)."""

    _fields_ = [
        ("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32), ("sched_util_max", ctypes.c_uint32),
    ]


def _syscalls() -> tuple[ctypes.CDLL, int, int] | None:
    is_64bit = ctypes.sizeof(ctypes.c_void_p) == 8  # a 32-bit process on a 64-bit kernel has other numbers
    numbers = _SYSCALLS.get(platform.machine()) if sys.platform == "linux" and is_64bit else None
    if numbers is None:
        return None
    return ctypes.CDLL(None, use_errno=True), *numbers


def _call(fn: ctypes._CFuncPtr, *args: object) -> None:
    if fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def thread_slice_us(tid: int = 0) -> float | None:
    """The time slice of thread `tid` (0: the calling thread) in microseconds; None where the system
    does not say (not Linux, or a kernel before 6.12, which reads SCHED_OTHER's slice back as 0)."""
    calls = _syscalls()
    if calls is None:
        return None
    return _get_attr(calls, tid).sched_runtime / 1000 or None


def _get_attr(calls: tuple, tid: int) -> _SchedAttr:
    """sched_getattr of thread `tid` (0: the calling thread)."""
    libc, _, get = calls
    attr = _SchedAttr()
    _call(libc.syscall, get, tid, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    return attr


def set_thread_slice(us: int) -> float | None:
    """Ask for a time slice of `us` microseconds for the calling thread (0: the kernel's default).

    Returns the slice the kernel now reports (it clamps to 100..100,000 µs), or None where the
    system has no per-thread slice. Keeps the thread's policy and nice value; threads it starts
    from now on get the default slice. Raises OSError when the kernel refuses.
    """
    calls = _syscalls()
    if calls is None:
        return None
    libc, set_, _ = calls
    attr = _get_attr(calls, 0)
    if attr.sched_policy not in (os.SCHED_OTHER, os.SCHED_BATCH):  # SCHED_IDLE or real-time: no slice to ask for
        return None
    attr.size = ctypes.sizeof(attr)
    attr.sched_flags = SCHED_FLAG_RESET_ON_FORK
    attr.sched_runtime = us * 1000
    _call(libc.syscall, set_, 0, ctypes.byref(attr), 0)
    return thread_slice_us()


def request_path(us: int, thread: str) -> None:
    """`set_thread_slice(us)` for a thread that answers requests; logs what it got, never raises."""
    if not us:
        return
    try:
        got = set_thread_slice(us)
    except Exception as err:  # the first call of a batcher worker: it must not end the thread
        log.warning("request_slice_not_set", thread=thread, slice_us=us, error=str(err))
        return
    log.debug("request_slice", thread=thread, asked_us=us, slice_us=got)
