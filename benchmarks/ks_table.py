"""The exact KS p-values of a stream of drift windows: scipy, Shepherd computing each, Shepherd's table.

    .venv/bin/python benchmarks/ks_table.py [--windows 300] [--features 30] [--rows 1000]
                                            [--refs 398,1000,5000,9973] [--shift 0,0.3]

For windows of `--rows` rows against a reference of each size in `--refs`, every feature's
two-sample KS statistic and exact p-value (scipy's `ks_2samp` is exact up to 10,000 values a
side, and so is Shepherd):

- **scipy**: `scipy.stats.ks_2samp` per feature, as Evidently and most drift tools call it (a few
  windows only: it is slow);
- **computed**: Shepherd's numeric kernel with an empty table for every pass (each exact p-value
  computed, as before the table);
- **table**: the same kernel with one table (`kernels.KsMemo`) over the whole stream, as the
  monitor runs: `--windows` fresh windows, 10 a pass, each drawn anew (no row repeats, unlike
  the serving benchmark's cycled held-out rows).

Every window is drawn from the reference's distribution shifted by each `--shift` (in standard
deviations; 0 is undrifted traffic, the usual case). The kernel runs the whole window pass (sort,
PSI, KS, Wasserstein, JS), so "computed" against "table" is what the table saves a monitor pass.
Prints milliseconds of kernel time per window, the table's hit rate over the first and last
tenth of the stream, and the ratios. Numba runs one thread, as the server's kernel thread does on
a 2-CPU machine. A diagnostic in the sense of benchmarks/README.md: results are recorded there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shepherd.monitoring import kernels  # noqa: E402
from shepherd.monitoring.profile import build_profile  # noqa: E402

PASS = 10  # windows per kernel call, as a monitor pass with 10 complete windows


def run(ref_rows: int, shift: float, args: argparse.Namespace) -> dict[str, float]:
    from scipy import stats

    rng = np.random.default_rng(ref_rows)
    features = args.features
    ref = {f"f{i}": rng.normal(size=ref_rows) for i in range(features)}
    profile = build_profile(ref, n_bins=10)
    bounds = np.arange(PASS + 1) * args.rows

    def window_pass() -> np.ndarray:
        return rng.normal(loc=shift, size=(PASS * args.rows, features))

    def per_window(memo: kernels.KsMemo) -> float:
        """Seconds of kernel time per window of one fresh pass through `memo`."""
        x = window_pass()
        t0 = time.perf_counter()
        kernels.numeric_drift_windows(profile, x, bounds, memo=memo)
        return (time.perf_counter() - t0) / PASS

    # scipy: a few windows
    t_scipy = []
    for _ in range(args.scipy_windows):
        x = window_pass()[: args.rows]
        t0 = time.perf_counter()
        for j in range(features):
            stats.ks_2samp(x[:, j], ref[f"f{j}"])
        t_scipy.append(time.perf_counter() - t0)
    # computed: an empty table every pass
    t_cold = [per_window(kernels.KsMemo()) for _ in range(max(1, args.windows // PASS // 5))]
    # the table over the stream
    memo = kernels.KsMemo()
    t_warm, hits = [], []
    for _ in range(args.windows // PASS):
        before = memo.stats()
        t_warm.append(per_window(memo))
        after = memo.stats()
        looked = (after["hits"] - before["hits"]) + (after["computed"] - before["computed"])
        if looked:  # none where the sizes are equal: that exact p-value is cheap and never looked up
            hits.append((after["hits"] - before["hits"]) / looked)
    tenth = max(1, len(t_warm) // 10)
    first, last = hits[:tenth], hits[-tenth:]
    return {
        "scipy": statistics.median(t_scipy) * 1e3,
        "computed": statistics.median(t_cold) * 1e3,
        "table_first": statistics.median(t_warm[:tenth]) * 1e3,
        "table_last": statistics.median(t_warm[-tenth:]) * 1e3,
        "hits_first": statistics.mean(first) if first else None,
        "hits_last": statistics.mean(last) if last else None,
        "entries": memo.stats()["entries"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=300, help="windows in the table's stream")
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--rows", type=int, default=1000, help="rows per window (the default policy's window_rows)")
    ap.add_argument("--refs", default="398,1000,5000,9973", help="reference sizes")
    ap.add_argument("--shift", default="0,0.3", help="shifts of the windows' mean, in reference standard deviations")
    ap.add_argument("--scipy-windows", type=int, default=3)
    args = ap.parse_args(argv)
    import numba

    numba.set_num_threads(1)
    kernels.warm_up()
    print(f"{args.features} features, windows of {args.rows} rows; table stream {args.windows} windows, {PASS} a pass; "
          f"kernel time per window in ms (median)\n")
    print("| reference rows | shift | scipy ks_2samp | computed | table, first tenth | table, last tenth | "
          "hits first / last tenth | entries | scipy / table | computed / table |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shift in (float(s) for s in args.shift.split(",")):
        for ref_rows in (int(r) for r in args.refs.split(",")):
            r = run(ref_rows, shift, args)
            hits = "no lookups" if r["hits_first"] is None else f"{r['hits_first']:.0%} / {r['hits_last']:.0%}"
            print(f"| {ref_rows:,} | {shift:g} | {r['scipy']:.1f} | {r['computed']:.2f} | {r['table_first']:.2f} | "
                  f"{r['table_last']:.2f} | {hits} | {r['entries']:,} | "
                  f"{r['scipy'] / r['table_last']:.0f}x | {r['computed'] / r['table_last']:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
