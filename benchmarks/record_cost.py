"""What logging a served batch costs the thread that serves it, in process: two trees side by side.

    .venv/bin/python benchmarks/record_cost.py --base DIR [--batches 1,4,8] [--requests 200000] [--repeats 3]

A diagnostic with no peer (benchmarks/README.md, "The log's write, in process and served"). It
times the deployment manager's hook, the call the batcher makes for every batch the model
answered (`DeploymentManager._record`), over `--requests` one-row requests to the serving
benchmark's model signature (30 FP32 inputs; a label and two probabilities out) in batches of
each size in `--batches`, into a real `PredictionLog` whose flusher never runs during the timing
(the rows stay buffered). Garbage collection is set as `shepherd serve` sets it
(`service.settle_heap`).

Each tree runs in a fresh interpreter with its `shepherd` package first on the path: `--base DIR`
(a `git worktree` of an older commit, say) and this checkout. Prints µs of the serving thread per
request for both, the best of `--repeats`, and base / this. In process the log's code and data
stay in the CPU caches; served between HTTP requests they do not, so `ab.py` is what says what a
change is worth to the server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import functools, gc, json, sys, tempfile, time
from pathlib import Path
import numpy as np
from prometheus_client import CollectorRegistry
from shepherd.config import MonitoringConfig
from shepherd.deploy.manager import DeploymentManager
from shepherd.monitoring.predlog import PredictionLog
from shepherd.serving.batcher import Pending
from shepherd.serving.inference import new_request_id
from shepherd.service import settle_heap
from shepherd.store.events import EventStore

SIG = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 30]}],
       "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                   {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]}
size, requests, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
labels = ("bench", "cancer", "1", "primary")
best = float("inf")
for _ in range(repeats):
    with tempfile.TemporaryDirectory() as d:
        store = EventStore(Path(d) / "events.duckdb")
        cfg = MonitoringConfig(flush_interval_s=3600, flush_rows=10**7, buffer_rows=10**7)
        log = PredictionLog(store, cfg, CollectorRegistry())
        hook = functools.partial(DeploymentManager._record, log, SIG)
        batches = []
        for _ in range(requests // size):
            ps = [Pending({"X": rng.random((1, 30), dtype=np.float32)}, None, labels, new_request_id(), 0.0) for _ in range(size)]
            feed = {"X": np.concatenate([p.inputs["X"] for p in ps])}
            outs = {"label": rng.integers(0, 2, size), "probabilities": rng.random((size, 2), dtype=np.float32)}
            batches.append((ps, feed, outs))
        settle_heap()
        started = time.perf_counter()
        for ps, feed, outs in batches:
            hook(ps, feed, outs, 1.0)
        best = min(best, (time.perf_counter() - started) / (len(batches) * size))
        log.close()
        store.close()
print(json.dumps(best * 1e6))
"""


def measure(tree: Path, size: int, requests: int, repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(requests), str(repeats)],
                         env=env, cwd="/", capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="a checkout whose shepherd package is the baseline")
    ap.add_argument("--batches", default="1,4,8", help="requests per batch, comma list (default 1,4,8)")
    ap.add_argument("--requests", type=int, default=200_000, help="requests per measurement (default 200,000)")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per tree and size; the best counts (default 3)")
    args = ap.parse_args()
    print(f"base: {args.base.resolve()}  this: {ROOT}")
    print("| batch | base µs/request | this µs/request | base / this |")
    print("|-------|-----------------|-----------------|-------------|")
    for size in (int(s) for s in args.batches.split(",")):
        base = measure(args.base.resolve(), size, args.requests, args.repeats)
        this = measure(ROOT, size, args.requests, args.repeats)
        print(f"| {size} | {base:.2f} | {this:.2f} | {base / this:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
