"""How long a task that wakes on a CPU waits behind a CPU-bound task there, by the busy task's policy.

    .venv/bin/python benchmarks/wakeup.py [--duty 0.15] [--seconds 6] [--policies none,normal,nice,idle,batch]
                                         [--slice-us 100]

A diagnostic with no peer (benchmarks/README.md, "Background work and the one-connection p99").
It asks what a lower priority buys the prediction log's flusher and the drift kernels on this
machine's kernel, without Shepherd in the way:

- a responder process on CPU 0 blocks in `read()` on a pipe, like an event loop in `epoll_wait`;
- a client on CPU 1 writes its clock into the pipe every 200 µs, and the responder records how
  long after the write it woke and ran;
- a burner process on CPU 0 sorts arrays for `duty` of every 100 ms (in bursts, as a flush does)
  under the policy measured: `none` (no burner), `normal`, `nice` (nice 19), `idle` (SCHED_IDLE)
  or `batch` (SCHED_BATCH).

`--slice-us` gives the responder that CPU time slice (`shepherd.sched`, Linux 6.12+), as Shepherd
gives its event loop (`serving.request_slice_us`): the other side of the question, what a short
slice for the woken task buys whatever the busy task's policy.

It prints the wake-up latency's p50, p99, p99.9 and maximum, and how many wake-ups waited over 1 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import struct
import time

import numpy as np

POLICIES = ("none", "normal", "nice", "idle", "batch")
INTERVAL_S = 200e-6


def burner(policy: str, duty: float) -> None:
    os.sched_setaffinity(0, {0})
    if policy == "nice":
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    elif policy == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif policy == "batch":
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    a = np.random.default_rng(0).random(200_000)
    while True:
        start = time.perf_counter()
        while time.perf_counter() - start < duty * 0.1:
            np.sort(a)
        time.sleep(0.1 * (1 - duty))


def responder(fd: int, out: mp.connection.Connection, slice_us: int) -> None:
    os.sched_setaffinity(0, {0})
    if slice_us:
        from shepherd import sched

        sched.set_thread_slice(slice_us)
    waits = []
    while True:
        data = os.read(fd, 8)
        if len(data) < 8:
            break
        (sent,) = struct.unpack("q", data)
        if sent < 0:
            break
        waits.append(time.perf_counter_ns() - sent)  # CLOCK_MONOTONIC: the same clock in every process
    out.send(waits)


def measure(policy: str, duty: float, seconds: float, slice_us: int = 0) -> np.ndarray:
    """Wake-up latencies in µs with a burner of `policy` beside the responder on CPU 0."""
    r, w = os.pipe()
    mine, theirs = mp.Pipe()
    resp = mp.Process(target=responder, args=(r, theirs, slice_us))
    resp.start()
    burn = mp.Process(target=burner, args=(policy, duty), daemon=True) if policy != "none" else None
    if burn:
        burn.start()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    try:
        time.sleep(0.5)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            os.write(w, struct.pack("q", time.perf_counter_ns()))
            t = time.perf_counter()
            while time.perf_counter() - t < INTERVAL_S:  # spin: a sleep would put the client's own wake-ups in the figures
                pass
        os.write(w, struct.pack("q", -1))
        waits = np.array(mine.recv(), dtype=np.float64) / 1e3
    finally:
        os.sched_setaffinity(0, before)
        resp.join(5)
        if burn:
            burn.kill()
            burn.join()
        os.close(r)
        os.close(w)
    return waits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duty", type=float, default=0.15, help="share of every 100 ms the burner is busy (default 0.15)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per policy (default 6)")
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"comma list from {', '.join(POLICIES)}")
    ap.add_argument("--slice-us", type=int, default=0, help="the responder's CPU time slice in µs (Linux 6.12+; default 0: the kernel's)")
    args = ap.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if bad := set(policies) - set(POLICIES):
        ap.error(f"unknown policy: {', '.join(sorted(bad))}")
    if not 0 < args.duty < 1:
        ap.error("--duty must be between 0 and 1")
    if (os.cpu_count() or 1) < 2:
        ap.error("needs at least 2 CPUs")
    if args.slice_us:
        from shepherd import sched

        if sched.thread_slice_us() is None:
            ap.error("--slice-us: this kernel has no per-thread time slice (Linux 6.12 or later is needed)")
    slice_note = f"; responder at a {args.slice_us} µs slice" if args.slice_us else ""
    print(f"kernel {os.uname().release}; burner busy {args.duty:.0%} of every 100 ms; {args.seconds:g} s per policy{slice_note}\n")
    print("| burner policy | wake-ups | p50 µs | p99 µs | p99.9 µs | max µs | over 1 ms |")
    print("|---------------|----------|--------|--------|----------|--------|-----------|")
    for policy in policies:
        w = measure(policy, args.duty, args.seconds, args.slice_us)
        print(f"| {policy:<13} | {len(w):8,} | {np.percentile(w, 50):6.1f} | {np.percentile(w, 99):6.1f} | "
              f"{np.percentile(w, 99.9):8.1f} | {w.max():6.0f} | {int((w > 1000).sum()):9,} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
