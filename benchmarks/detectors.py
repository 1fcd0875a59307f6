"""Shepherd's streaming drift detectors vs river's, per update, on the same seeded streams, in one run.

    .venv/bin/python benchmarks/detectors.py [--n 1000000] [--rounds 5] [--detectors adwin,ph,ddm]
                                             [--streams abrupt,gradual] [--quick]

For ADWIN, Page-Hinkley and DDM (default parameters on both sides), on each seeded stream:

  river          `for x in xs: d.update(x); if d.drift_detected: hits.append(i)` with river's
                 detector (river.drift.ADWIN -- whose window lives in river's Rust extension --,
                 river.drift.PageHinkley, river.drift.binary.DDM -- pure Python)
  shepherd       the same loop, same Python list of floats, with Shepherd's detector
  shepherd-many  `d.update_many(xs)` on the float64 array (one compiled loop; returns the indices)

  (floor)        the same loop with a detector whose update() does nothing and returns itself:
                 the interpreter's share of a per-update loop; river's time over this floor is the
                 largest speed-up any update() called from Python could show

Every target gets a fresh detector per repetition; one warm-up pass each (Numba compiled or loaded
from its cache) and then `--rounds` repetitions in rotating order; medians are reported as
updates/s, with the speed-up over river as the median (min-max) of the per-round ratios. All
three must give the same drift indices, or the script prints MISMATCH and exits with status 2.
The target is >= 5x river per update for the loop and for update_many (both verdicts printed).

Streams (length --n; seeded with --seed):
  ADWIN, Page-Hinkley: Gaussian noise (sd 1) around a level that
    abrupt   jumps every n/8 values through 0, 2, -1, 3, 0.5, -2, 1, 4
    gradual  moves as 2 sin(2 pi t / (n/3)) + 3 t / n (a slow oscillation and a ramp)
  DDM: 0/1 errors (1 = error) with an error rate that
    abrupt   steps every n/8 values through 0.1, 0.3, 0.15, 0.4, 0.1, 0.25, 0.05, 0.35
    gradual  oscillates as 0.25 + 0.15 sin(2 pi t / (n/5))
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DETECTORS = ("adwin", "ph", "ddm")
STREAMS = ("abrupt", "gradual")


def make_stream(binary: bool, shape: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    seg = np.minimum((t * 8 // n).astype(np.int64), 7)
    if binary:
        rate = {
            "abrupt": np.array([0.1, 0.3, 0.15, 0.4, 0.1, 0.25, 0.05, 0.35])[seg],
            "gradual": 0.25 + 0.15 * np.sin(2 * np.pi * t / (n / 5)),
        }[shape]
        return (rng.random(n) < rate).astype(np.float64)
    level = {
        "abrupt": np.array([0.0, 2.0, -1.0, 3.0, 0.5, -2.0, 1.0, 4.0])[seg],
        "gradual": 2.0 * np.sin(2 * np.pi * t / (n / 3)) + 3.0 * t / n,
    }[shape]
    return level + rng.normal(0.0, 1.0, n)


def pairs() -> dict[str, tuple[str, Callable[[], object], Callable[[], object]]]:
    from river import drift

    from shepherd.monitoring.detectors import ADWIN, DDM, PageHinkley

    return {
        "adwin": ("ADWIN", drift.ADWIN, ADWIN),
        "ph": ("PageHinkley", drift.PageHinkley, PageHinkley),
        "ddm": ("DDM", drift.binary.DDM, DDM),
    }


class NullDetector:
    """update() does nothing: timing the loop with it measures the loop itself."""

    drift_detected = False

    def update(self, x: float) -> NullDetector:
        return self


def loop(det, xs: list[float]) -> list[int]:
    """The per-update loop, identical for river's and Shepherd's detectors."""
    hits = []
    for i, x in enumerate(xs):
        det.update(x)
        if det.drift_detected:
            hits.append(i)
    return hits


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine_line() -> str:
    cpu = "?"
    try:
        cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE).group(1)
    except (OSError, AttributeError):
        pass
    mem = "?"
    try:
        kb = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE).group(1))
        mem = f"{kb / 1024**2:.1f} GiB"
    except (OSError, AttributeError):
        pass
    return f"machine: {os.cpu_count()} CPUs ({cpu}), {mem} RAM, {platform.system()} {platform.release()}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def rate(n: int, s: float) -> str:
    r = n / s
    return f"{r / 1e6:.2f} M/s" if r >= 1e6 else f"{r / 1e3:.0f} k/s"


def ratio(a: list[float], b: list[float]) -> tuple[float, str]:
    """Median and 'median (min-max)' of the per-round ratios a/b."""
    r = [x / y for x, y in zip(a, b)]
    m = statistics.median(r)
    return m, f"{m:.1f}x ({min(r):.1f}-{max(r):.1f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="values per stream (default 1,000,000)")
    ap.add_argument("--rounds", type=int, default=5, help="timed repetitions per target (default 5)")
    ap.add_argument("--detectors", default=",".join(DETECTORS), help=f"comma list of {','.join(DETECTORS)}")
    ap.add_argument("--streams", default=",".join(STREAMS), help=f"comma list of {','.join(STREAMS)}")
    ap.add_argument("--quick", action="store_true", help="n = 100,000 and 3 rounds")
    ap.add_argument("--seed", type=int, default=20261123)
    args = ap.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 100_000)
        args.rounds = min(args.rounds, 3)
    dets = [d for d in args.detectors.split(",") if d]
    streams = [s for s in args.streams.split(",") if s]
    if set(dets) - set(DETECTORS) or set(streams) - set(STREAMS):
        ap.error("unknown detector or stream")
    t_start = time.perf_counter()
    print(machine_line() + f"; load average at the start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"python {platform.python_version()}; river {version('river')}, numba {version('numba')}, "
          f"numpy {version('numpy')}, shepherd {version('shepherd')}")
    table_rows = []
    verdicts = []
    mismatch = False
    all_pairs = pairs()
    for key in dets:
        name, river_cls, our_cls = all_pairs[key]
        t = time.perf_counter()
        our_cls().update_many(np.zeros(100))  # compile / load both kernels
        our_cls().update(0.0)
        compile_s = time.perf_counter() - t
        for shape in streams:
            arr = make_stream(key == "ddm", shape, args.n, args.seed)
            xs = arr.tolist()
            targets = {
                "river": lambda c=river_cls, xs=xs: loop(c(), xs),
                "shepherd": lambda c=our_cls, xs=xs: loop(c(), xs),
                "shepherd-many": lambda c=our_cls, arr=arr: c().update_many(arr).tolist(),
                "(floor)": lambda xs=xs: loop(NullDetector(), xs),
            }
            hits = {k: fn() for k, fn in targets.items()}  # warm-up, and the detections to compare
            del hits["(floor)"]
            print(f"\n== {name}, {shape} stream of {args.n:,} values (kernels ready in {compile_s:.2f} s)")
            print(f"  drift indices: river {len(hits['river'])} detections, first {hits['river'][:6]}")
            for k in ("shepherd", "shepherd-many"):
                if hits[k] != hits["river"]:
                    mismatch = True
                    first = next((i for i, (a, b) in enumerate(zip(hits[k], hits["river"])) if a != b),
                                 min(len(hits[k]), len(hits["river"])))
                    print(f"  MISMATCH: {k} gives {len(hits[k])} detections, river {len(hits['river'])}; "
                          f"first difference at detection #{first}: {hits[k][first:first + 3]} vs "
                          f"{hits['river'][first:first + 3]}")
            times: dict[str, list[float]] = {k: [] for k in targets}
            order = list(targets)
            for r in range(args.rounds):
                for k in order[r % len(order):] + order[:r % len(order)]:
                    t = time.perf_counter()
                    targets[k]()
                    times[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            sp_loop, sp_loop_s = ratio(times["river"], times["shepherd"])
            sp_many, sp_many_s = ratio(times["river"], times["shepherd-many"])
            for k in targets:
                print(f"  {k:14s} {rate(args.n, med[k]):>10s}  ({med[k] / args.n * 1e9:.0f} ns/update, "
                      f"median of {args.rounds}; min {min(times[k]):.3f} s, max {max(times[k]):.3f} s)")
            ceiling, ceiling_s = ratio(times["river"], times["(floor)"])
            print(f"  speed-up over river: update loop {sp_loop_s}, update_many {sp_many_s}; "
                  f"ceiling for any update() loop (river / loop floor) {ceiling_s}")
            same = all(hits[k] == hits["river"] for k in hits)
            table_rows.append([name, shape, str(len(hits["river"])), "yes" if same else "NO",
                               rate(args.n, med["river"]), rate(args.n, med["shepherd"]), sp_loop_s,
                               rate(args.n, med["shepherd-many"]), sp_many_s, f"{med['(floor)'] / args.n * 1e9:.0f} ns",
                               f"{ceiling:.1f}x"])
            verdicts.append((name, shape, sp_loop, sp_many))
    print(f"\n== summary ({args.n:,} values per stream, medians of {args.rounds} rounds)")
    print(table(["detector", "stream", "detections", "same indices", "river", "Shepherd update()",
                 "update() / river", "Shepherd update_many()", "update_many() / river", "loop floor",
                 "ceiling (river / floor)"], table_rows))
    print()
    for name, shape, sp_loop, sp_many in verdicts:
        print(f"target >= 5x river, {name} {shape}: update() loop {'MET' if sp_loop >= 5 else 'MISSED'} ({sp_loop:.1f}x), "
              f"update_many() {'MET' if sp_many >= 5 else 'MISSED'} ({sp_many:.1f}x)")
    print(f"\ntotal run time {time.perf_counter() - t_start:.0f} s; load average at the end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on the machine skews the figures)")
    if mismatch:
        print("MISMATCH: Shepherd's detections differ from river's (see above)")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
