"""Shepherd against itself: configurations compared with several server processes each, interleaved.

    .venv/bin/python benchmarks/ab.py [--variant NAME=SETTINGS ...] [--processes 3] [--rounds 4]
                                     [--seconds 8] [--concurrency 8,32] [--pin] [--client-slice-us 100]

A diagnostic with no peer (benchmarks/README.md, "Shepherd against itself"). On the 2-vCPU
benchmark VMs two identically configured servers differ by up to 15% in throughput, and the
machine's speed drifts by tens of percent over minutes, so one server a side resolves a change
only to about +-10%. This script starts `--processes` servers of every variant up front, each
with its own data directory and the real CLI as in serving.py (signed bundle, `serve --import`,
deploy, promote; the held-out traffic), and then measures them one at a time with wrk, in an
order that rotates every round.

A variant is NAME=SETTINGS. SETTINGS is shepherd.toml text, with `\\n` for a new line: lines
before the first `[section]` are `[serving]` settings, the rest is appended as it is. Without
--variant the variants are `log` (the defaults) and `nolog` (`[monitoring] prediction_log =
false`): the prediction log's cost, issue 4's target.

`--tree NAME=DIR` runs variant NAME's servers on the `shepherd` package in DIR (first on their
PYTHONPATH), for comparing code rather than settings: `git worktree add /tmp/base HEAD~1`, then
`--variant base= --variant new= --tree base=/tmp/base`.

For each variant and concurrency it prints the medians of req/s, p99 and server CPU per
request, and, against the first variant, the ratio of the mean req/s with a 90% interval from a
two-level bootstrap: whole rounds, the same for every variant (a round is one pass over every
server; resampling rounds keeps the machine's slow and fast phases together), and each variant's
servers on their own (a server stays faster or slower than its twin for as long as it lives).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import serving  # noqa: E402
from benchmarks.asgi import table  # noqa: E402

DEFAULT_VARIANTS = ["log=", "nolog=[monitoring]\\nprediction_log = false"]


def parse_variant(text: str) -> tuple[str, str, str]:
    """NAME=SETTINGS -> (name, [serving] lines, the rest)."""
    name, sep, settings = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=SETTINGS")
    lines = settings.replace("\\n", "\n").splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip().startswith("[")), len(lines))
    return name.strip(), "\n".join(lines[:first]), "\n".join(lines[first:]) + "\n"


def bootstrap_ratio(base: np.ndarray, other: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Ratio of means of two (rounds, processes) arrays, and its 5th and 95th percentiles over a two-level bootstrap.

    Rounds are resampled together for both variants (a round's slow or fast machine phase is shared
    by every server measured in it), and each variant's processes are resampled on their own: two
    identically configured servers can differ by 10% for as long as they live (memory layout, hash
    seeds), so a ratio over a few processes carries that difference, and an interval from resampled
    rounds alone would not show it.
    """
    rng = np.random.default_rng(seed)
    ratio = float(other.mean() / base.mean())
    rounds = rng.integers(0, len(base), size=(draws, len(base)))[:, :, None]
    mine = rng.integers(0, base.shape[1], size=(draws, 1, base.shape[1]))
    theirs = rng.integers(0, other.shape[1], size=(draws, 1, other.shape[1]))
    ratios = other[rounds, theirs].mean(axis=(1, 2)) / base[rounds, mine].mean(axis=(1, 2))
    lo, hi = np.percentile(ratios, [5, 95])
    return ratio, float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", type=parse_variant,
                    help="NAME=SETTINGS, repeatable; the first is the base (default: log against nolog)")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                    help="run variant NAME's servers on the shepherd package in DIR (a worktree of another commit), repeatable")
    ap.add_argument("--processes", type=int, default=3, help="servers per variant (default 3)")
    ap.add_argument("--rounds", type=int, default=4, help="passes over every server (default 4)")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per server per concurrency (default 8)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured load before each measurement (default 2)")
    ap.add_argument("--concurrency", default="8,32", help="comma list of keep-alive connection counts (default 8,32)")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each measurement, wait up to this many seconds for other processes to go quiet (default 30)")
    ap.add_argument("--pin", action="store_true", help="pin every server to CPU 0 and wrk to CPU 1, as serving.py --pin")
    ap.add_argument("--client-slice-us", type=int, default=0, help="run wrk with this CPU time slice, as serving.py --client-slice-us")
    args = ap.parse_args(argv)
    variants = args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS]
    if len({name for name, _, _ in variants}) != len(variants):
        ap.error("variant names must differ")
    trees: dict[str, str] = {}
    for text in args.tree:
        name, _, directory = text.partition("=")
        if name not in {n for n, _, _ in variants}:
            ap.error(f"--tree {text!r}: no variant named {name!r}")
        if not (Path(directory) / "shepherd" / "__init__.py").is_file():
            ap.error(f"--tree {text!r}: {directory} has no shepherd package")
        trees[name] = str(Path(directory).resolve())
    if args.processes < 1 or args.rounds < 2:
        ap.error("--processes must be at least 1 and --rounds at least 2")
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not shutil.which("wrk"):
        print("error: wrk is needed as the load generator: apt-get install wrk", file=sys.stderr)
        return 2
    cpus = None
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            ap.error("--pin needs at least 2 CPUs")
        cpus = {0}
    client_note = serving.set_client(args.pin, args.client_slice_us)

    servers: list[tuple[str, int, serving.Target]] = []
    with tempfile.TemporaryDirectory(prefix="shepherd-ab-") as tmp_name:
        tmp = Path(tmp_name)
        assets = serving.prepare(tmp, True)
        bodies = [serving.infer_body(row) for row in assets.rows]
        for line in serving.machine_info(assets, "wrk"):
            print(line)
        try:
            for name, serving_lines, extra in variants:
                for i in range(args.processes):
                    t = serving.Target(f"{name}#{i}", tmp, cpus)
                    servers.append((name, i, t))
                    serving.start_shepherd(t, assets, serving_lines, extra, pythonpath=trees.get(name))
            print(f"{len(servers)} servers up: {args.processes} per variant; {args.rounds} rounds, wrk 1 thread, "
                  f"{args.warmup:g} s warmup + {args.seconds:g} s, concurrency {concurrencies}"
                  + ("; servers pinned to CPU 0, wrk to CPU 1" if cpus else "") + client_note + "\n", flush=True)
            # rps / p99 / cpu [name][c]: a (rounds, processes) array each
            rps, p99, cpu = ({name: {c: np.zeros((args.rounds, args.processes)) for c in concurrencies} for name, _, _ in variants}
                             for _ in range(3))
            for r in range(args.rounds):
                k = r % len(servers)
                order = servers[k:] + servers[:k]
                for c in concurrencies:
                    for name, i, t in order:
                        script = serving.lua_script(t.dir / "load.lua", t, bodies)
                        serving.wait_quiet(0.10, args.quiet_wait)
                        serving.run_wrk(t.url(), script, args.warmup, c)
                        cpu0 = t.cpu_seconds()
                        res = serving.run_wrk(t.url(), script, args.seconds, c)
                        used = t.cpu_seconds() - cpu0
                        rps[name][c][r, i], p99[name][c][r, i] = res.rps, res.p99_ms
                        cpu[name][c][r, i] = used / res.requests * 1e6 if res.requests else float("nan")
                        print(f"round {r + 1} c={c:<3} {t.name:<16} {res.rps:8,.0f} req/s  p99 {res.p99_ms:7.2f} ms  "
                              f"server CPU {cpu[name][c][r, i]:5.0f} µs/req  errors {res.errors}", flush=True)
        finally:
            for _, _, t in servers:
                t.stop()

    base = variants[0][0]
    rows = []
    for c in concurrencies:
        for name, _, _ in variants:
            a = rps[name][c]
            ratio = "-" if name == base else "{:.3f} ({:.3f}-{:.3f})".format(*bootstrap_ratio(rps[base][c], a))
            rows.append([str(c), name, f"{args.processes} x {args.rounds}", f"{statistics.median(a.ravel()):,.0f}",
                         f"{a.min():,.0f}-{a.max():,.0f}", f"{statistics.median(p99[name][c].ravel()):.2f}",
                         f"{statistics.median(cpu[name][c].ravel()):.0f}", ratio])
    print("\n" + table(["conc", "variant", "processes x rounds", "req/s (median)", "req/s range", "p99 ms (median)",
                        "server CPU µs/req", f"mean req/s vs {base} (90% interval)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
