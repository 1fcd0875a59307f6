"""How much of the event loop's GIL time the prediction log's flush and the monitor's tick take, in process.

    .venv/bin/python benchmarks/gil_handoffs.py [--rows 25000] [--window-rows 1000] [--rounds 3]

A diagnostic, not a peer comparison. The real appliance (the 30-feature classifier from
benchmarks/serving.py, imported as a signed bundle, deployed and promoted) serves `--rows`
one-row requests through `inference.infer_for`. Then a busy Python thread stands in for the
event loop, and the script runs one flush (`PredictionLog._flush_once`) and one monitor tick
(`Monitor.tick`, with one kernel thread as in the server). The busy thread counts how often it
lost the GIL for more than 100 µs ("losses"), for how long in all ("lost"), its longest single
wait and how many waits passed 1 ms (a request delayed that long weighs heavily in wrk's
corrected percentiles, benchmarks/README.md). The switch
interval is 0.5 ms, as in the server. For the tick, the losses, lost time and longest wait are also attributed
to its parts: queries, kernels, storing the results and the streaming detectors.

Each GIL hand-off costs the serving event loop more than the time it loses (benchmarks/README.md),
so fewer and shorter background GIL holds are the aim.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import serving  # noqa: E402
from shepherd import config as config_mod  # noqa: E402
from shepherd.appliance import Appliance  # noqa: E402
from shepherd.service import GIL_SWITCH_INTERVAL_S, settle_heap  # noqa: E402
from shepherd.serving import inference  # noqa: E402

GAP_S = 1e-4


class BusyThread:
    """A Python loop that notes every gap of more than GAP_S between two of its iterations."""

    def __init__(self) -> None:
        self.stop = False
        self.losses = 0
        self.lost = 0.0
        self.longest = 0.0  # the longest single gap: a C call that held the GIL throughout, or a chain of hand-offs
        self.long = 0  # gaps over 1 ms
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        clock = time.perf_counter
        last = clock()
        while not self.stop:
            now = clock()
            if now - last > GAP_S:
                self.losses += 1
                self.lost += now - last
                self.longest = max(self.longest, now - last)
                self.long += now - last > 1e-3
            last = now

    def __enter__(self) -> BusyThread:
        self.thread.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self.thread.join()


def measure(label: str, fn: Callable[[], Any]) -> None:
    with BusyThread() as busy:
        losses, lost, cpu0, wall0 = busy.losses, busy.lost, time.thread_time(), time.perf_counter()
        busy.longest, busy.long = 0.0, 0  # not the busy thread's own start
        fn()
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        print(f"{label:24s} GIL losses {busy.losses - losses:4d}  lost {(busy.lost - lost) * 1e3:6.1f} ms  "
              f"longest {busy.longest * 1e3:5.2f} ms  over 1 ms {busy.long:3d}  own CPU {cpu * 1e3:6.1f} ms  wall {wall * 1e3:6.1f} ms",
              flush=True)


def attributed_tick(appl: Appliance) -> None:
    """One tick with the busy thread's losses split by the tick's parts (outermost part only)."""
    from shepherd.monitoring import monitor as mon

    losses: collections.Counter[str] = collections.Counter()
    lost: collections.Counter[str] = collections.Counter()
    longest: dict[str, float] = {}
    depth = [0]
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, label: str, busy: BusyThread) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return original(*args, **kwargs)
            depth[0] += 1
            n0, t0 = busy.losses, busy.lost
            busy.longest = 0.0
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
                losses[label] += busy.losses - n0
                lost[label] += (busy.lost - t0) * 1e3
                longest[label] = max(longest.get(label, 0.0), busy.longest * 1e3)

        patched.append((owner, name, original))
        setattr(owner, name, wrapper)

    with BusyThread() as busy:
        for name in ("window_rows", "last_window", "outputs_since", "versions_logged"):
            wrap(appl.events, name, f"query {name}", busy)
        wrap(mon.kernels, "numeric_drift_windows", "kernels", busy)
        wrap(mon.kernels, "categorical_drift_windows", "kernels", busy)
        wrap(mon, "list_matrix", "list_matrix", busy)
        wrap(appl.monitor, "_store", "store results", busy)
        wrap(appl.monitor, "_streams_step", "streaming detectors", busy)
        n0, t0 = busy.losses, busy.lost
        busy.longest = 0.0
        try:
            appl.monitor.tick()
        finally:
            for owner, name, original in patched:
                setattr(owner, name, original)
        print(f"  tick: {busy.losses - n0} losses, {(busy.lost - t0) * 1e3:.1f} ms lost; by part: "
              + ", ".join(f"{k} {losses[k]} / {lost[k]:.1f} ms (longest {longest[k]:.2f})" for k, _ in lost.most_common()), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=25_000, help="requests served before each flush and tick")
    ap.add_argument("--window-rows", type=int, default=1000, help="drift window size (the default policy's)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    import numba

    numba.set_num_threads(1)  # the monitor thread's kernel threads on a 2-CPU machine
    tmp = Path(tempfile.mkdtemp())
    assets = serving.prepare(tmp, True)
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "default.toml").write_text(f"[drift]\nwindow_rows = {args.window_rows}\n")
    cfg = config_mod.parse({
        "storage": {"data_dir": str(tmp / "data")}, "bundles": {"trusted_keys_dir": str(assets.keys)},
        "logging": {"level": "warning"},
        "monitoring": {"interval_s": 3600, "flush_interval_s": 3600, "flush_rows": 10_000_000, "buffer_rows": 10_000_000,
                       "policies_dir": str(policies)},
    })
    appl = Appliance(cfg)
    appl.start()
    try:
        appl.importer.import_file(assets.bundles[0], actor="bench")

        async def deploy() -> None:
            await appl.deployments.deploy("cancer", "cancer", 1, actor="bench")
            await appl.deployments.promote("cancer", actor="bench")

        asyncio.run(deploy())
        from shepherd.monitoring import kernels

        kernels.warm_up()
        bodies = [serving.infer_body(r) for r in assets.rows]

        async def serve(n: int) -> None:
            for i in range(n):
                await inference.infer_for(appl, "cancer", None, bodies[i % len(bodies)], None)

        asyncio.run(serve(args.rows))
        appl.predlog._flush_once()
        appl.monitor.tick()  # builds the reference profile; not measured
        settle_heap()  # as `shepherd serve` does: the set-up's objects leave the collector, young collections become rare
        windows = args.rows // args.window_rows
        for _ in range(args.rounds):
            asyncio.run(serve(args.rows))
            measure(f"flush {args.rows} rows", appl.predlog._flush_once)
            measure(f"tick {windows} windows", appl.monitor.tick)
            asyncio.run(serve(args.rows))
            appl.predlog._flush_once()
            attributed_tick(appl)
    finally:
        appl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
