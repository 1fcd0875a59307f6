"""Shepherd's drift kernels vs Evidently's DataDriftPreset and the np.sort floor, in one run on one machine.

    .venv/bin/python benchmarks/drift.py [--sizes 1000000x1000000x20,100000x100000x100] [--rounds 7]
                                         [--evidently-reps 1] [--evidently-configs preset,valuedrift]
                                         [--quick] [--no-evidently]

Sizes are REF_ROWSxCUR_ROWSxFEATURES. The data are seeded: feature j is normal, log-normal, uniform
or exponential (j mod 4); in the current window every odd feature is shifted by 5% of its standard
deviation and scaled by 1.05, the even ones are drawn from the reference distribution. Float64,
no missing values.

Shepherd (this process): `build_profile` of the reference once (timed and printed, not counted),
then per repetition one full pass over the current window, `kernels.numeric_drift(profile, X)`
with X the rows x features float64 matrix in C order (the layout `ReferenceProfile.numeric_matrix`
produces): PSI, KS statistic + p-value, Wasserstein-1 (raw and normalised) and Jensen-Shannon for
every feature, followed by the Benjamini-Hochberg flags on the KS p-values and the dataset verdict
(microseconds; included so that the pass ends, like Evidently's, with a drifted-columns verdict).
One warm-up (Numba compiled beforehand by `warm_up()`, the compile time is printed), then
`--rounds` repetitions; the median is reported. Also printed: the same pass on one thread
(`numba.set_num_threads(1)`).

Floor: `np.sort` over every feature column of the current window, because exact KS and W1 need
sorted data. Three forms are timed, each producing a sorted copy (the window is not modified):
  sort-C   np.sort(X, axis=0) on the C-ordered window, one thread
  sort-F   np.sort(XF, axis=0) on a Fortran-ordered copy (made untimed): columns are contiguous
  sort-Fp  the sort-F work split by column over os.cpu_count() threads (np.sort releases the GIL):
           out[:, j] = XF[:, j]; out[:, j].sort()
The floor is the fastest of the three medians (normally sort-Fp, which uses every core, as the
Numba kernel does); the target is Shepherd <= 2x that floor.

Evidently (a subprocess in its own virtual environment, created on first use with python3 -m venv +
pip install evidently "pandas<3" numpy; see --evidently-venv): benchmarks/_evidently_drift.py reads
the same arrays from .npy files. Configurations: `preset` is DataDriftPreset() as shipped (Evidently
picks the test per column; the tests it picked are printed), `presets4` is four presets forcing
num_method = psi, ks, wasserstein and jensenshannon (the same four tests as Shepherd), `valuedrift`
is the leanest route to those four tests (only the per-column ValueDrift metrics a preset
generates). Timed: Dataset.from_pandas of the current DataFrame + Report.run; the reference
Dataset is built once (printed). Evidently runs pandas/scipy on one thread; Shepherd's kernel uses
every core (the one-thread figure is printed next to it). Evidently takes minutes per
configuration at the default sizes, so it defaults to one timed repetition (after a warm-up on a
2,000-row slice); at >50x the noise of this machine does not change the verdict.

As a cross-check the KS p-values and normalised W1 from Evidently's forced tests are compared
with Shepherd's (same definitions: scipy ks_2samp, wasserstein_distance / std(ref)); PSI and JS
are not compared (Evidently bins by Sturges' rule on both samples, Shepherd by reference deciles).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
DEFAULT_SIZES = "1000000x1000000x20,100000x100000x100"
QUICK_SIZES = "100000x100000x20,20000x20000x50"
DEFAULT_EVIDENTLY_VENV = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                          / "shepherd-bench" / "evidently-venv")
EVIDENTLY_PACKAGES = ["evidently", "pandas<3", "numpy"]  # evidently 0.7 imports pandas internals removed in pandas 3
EVIDENTLY_CONFIGS = ("preset", "presets4", "valuedrift")


# ------------------------------------------------------------------------------ data
def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    out = []
    for part in text.split(","):
        a, b, c = (int(float(x)) for x in part.lower().split("x"))
        out.append((a, b, c))
    return out


def make_data(n_ref: int, n_cur: int, n_feat: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current windows (C-ordered float64); odd features drift (shift 5% of std, scale 1.05)."""
    rng = np.random.default_rng(seed)
    ref = np.empty((n_ref, n_feat))
    cur = np.empty((n_cur, n_feat))
    for j in range(n_feat):
        kind = j % 4
        draw = {
            0: lambda n: rng.normal(10.0, 2.0, n),
            1: lambda n: rng.lognormal(0.0, 0.5, n),
            2: lambda n: rng.uniform(-1.0, 1.0, n),
            3: lambda n: rng.exponential(3.0, n),
        }[kind]
        r = draw(n_ref)
        c = draw(n_cur)
        if j % 2 == 1:
            c = (c - r.mean()) * 1.05 + r.mean() + 0.05 * r.std()
        ref[:, j] = r
        cur[:, j] = c
    return ref, cur


# ------------------------------------------------------------------------------ timing
def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def paired(a: list[float], b: list[float]) -> str:
    """Median (min-max) of per-round ratios a/b."""
    r = [x / y for x, y in zip(a, b)]
    return f"{median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"


def run_shepherd_size(n_ref: int, n_cur: int, n_feat: int, rounds: int, seed: int) -> dict:
    import numba

    from shepherd.monitoring import kernels
    from shepherd.monitoring.profile import build_profile

    t = time.perf_counter()
    ref, cur = make_data(n_ref, n_cur, n_feat, seed)
    gen_s = time.perf_counter() - t
    names = [f"f{j}" for j in range(n_feat)]
    t = time.perf_counter()
    profile = build_profile({names[j]: ref[:, j] for j in range(n_feat)})
    build_s = time.perf_counter() - t
    cur_f = np.asfortranarray(cur)
    threads = os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=threads)
    full_threads = numba.get_num_threads()

    def shepherd() -> object:
        res = kernels.numeric_drift(profile, cur)
        flags = kernels.pvalue_drift(res.ks_pvalue)
        return res, kernels.dataset_verdict(flags, res.has_data)

    def shepherd_1t() -> object:
        numba.set_num_threads(1)
        try:
            return shepherd()
        finally:
            numba.set_num_threads(full_threads)

    def sort_c() -> object:
        return np.sort(cur, axis=0)

    def sort_f() -> object:
        return np.sort(cur_f, axis=0)

    def sort_fp() -> object:
        out = np.empty_like(cur_f)  # Fortran order as well

        def work(cols: range) -> None:
            for j in cols:
                col = out[:, j]
                col[:] = cur_f[:, j]
                col.sort()

        chunks = [range(i, n_feat, threads) for i in range(threads)]
        list(pool.map(work, chunks))
        return out

    targets = {"shepherd": shepherd, "shepherd-1t": shepherd_1t, "sort-C": sort_c, "sort-F": sort_f, "sort-Fp": sort_fp}
    # correctness of the floor forms (once) and warm-up of every target
    ref_sorted = sort_c()
    for name in ("sort-F", "sort-Fp"):
        if not np.array_equal(targets[name](), ref_sorted):
            raise AssertionError(f"{name} does not sort like np.sort")
    del ref_sorted
    result = None
    for name, fn in targets.items():
        out = fn()
        if name == "shepherd":
            result = out
    times: dict[str, list[float]] = {k: [] for k in targets}
    order = list(targets)
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:  # rotate the order every round
            t = time.perf_counter()
            targets[name]()
            times[name].append(time.perf_counter() - t)
    pool.shutdown()
    res, verdict = result
    return {
        "ref": ref, "cur": cur, "gen_s": gen_s, "build_s": build_s, "times": times,
        "result": res, "verdict": verdict, "numba_threads": full_threads,
    }


# ------------------------------------------------------------------------------ evidently
def ensure_evidently_venv(venv: Path) -> Path:
    """The Evidently venv's python; the venv is created (python3 -m venv + pip) on first use."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "from evidently import Report; from evidently.presets import DataDriftPreset"]
    if py.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return py
    print(f"setting up Evidently's own virtual environment in {venv} (pip install {' '.join(EVIDENTLY_PACKAGES)}) ...",
          flush=True)
    if not py.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *EVIDENTLY_PACKAGES], check=True)
    subprocess.run(probe, check=True)
    return py


def run_evidently(py: Path, tmp: Path, name: str, ref: np.ndarray, cur: np.ndarray, reps: int,
                  configs: list[str]) -> dict:
    ref_p, cur_p = tmp / f"{name}-ref.npy", tmp / f"{name}-cur.npy"
    np.save(ref_p, ref)
    np.save(cur_p, cur)
    spec_p, out_p = tmp / f"{name}-spec.json", tmp / f"{name}-out.json"
    spec_p.write_text(json.dumps({"cases": [{"name": name, "ref": str(ref_p), "cur": str(cur_p)}],
                                  "reps": reps, "configs": configs}))
    t = time.perf_counter()
    subprocess.run([str(py), str(HERE / "_evidently_drift.py"), str(spec_p), str(out_p)], check=True)
    wall = time.perf_counter() - t
    out = json.loads(out_p.read_text())
    for p in (ref_p, cur_p, spec_p, out_p):
        p.unlink()
    out["wall_s"] = wall
    return out


def cross_check(ev_values: dict[str, dict[str, float]], res) -> list[str]:
    """Compare Evidently's forced KS p-values and normalised W1 with Shepherd's."""
    lines = []
    names = list(res.names)
    if "ks" in ev_values:
        d = max(abs(ev_values["ks"][c] - res.ks_pvalue[names.index(c)]) for c in ev_values["ks"])
        lines.append(f"KS p-value: max |evidently - shepherd| = {d:.2e}")
    if "wasserstein" in ev_values:
        d = max(abs(ev_values["wasserstein"][c] / res.wasserstein_norm[names.index(c)] - 1) for c in ev_values["wasserstein"])
        lines.append(f"W1/std(ref): max relative difference = {d:.2e}")
    return lines


# ------------------------------------------------------------------------------ report
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"REFxCURxFEATURES,... (default {DEFAULT_SIZES})")
    ap.add_argument("--rounds", type=int, default=7, help="timed repetitions of Shepherd and the np.sort forms (default 7)")
    ap.add_argument("--evidently-reps", type=int, default=1, help="timed repetitions per Evidently configuration (default 1)")
    ap.add_argument("--evidently-configs", default="preset,valuedrift",
                    help=f"comma list of {','.join(EVIDENTLY_CONFIGS)} (default preset,valuedrift)")
    ap.add_argument("--evidently-venv", type=Path, default=DEFAULT_EVIDENTLY_VENV,
                    help=f"Evidently's own venv, created on first use (default {DEFAULT_EVIDENTLY_VENV})")
    ap.add_argument("--no-evidently", action="store_true", help="only Shepherd and the np.sort floor")
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 3 rounds")
    ap.add_argument("--seed", type=int, default=20261123)
    args = ap.parse_args(argv)
    if args.quick:
        if args.sizes == DEFAULT_SIZES:
            args.sizes = QUICK_SIZES
        args.rounds = min(args.rounds, 3)
    sizes = parse_sizes(args.sizes)
    configs = [c for c in args.evidently_configs.split(",") if c]
    bad = set(configs) - set(EVIDENTLY_CONFIGS)
    if bad:
        ap.error(f"unknown Evidently configurations: {sorted(bad)}")
    t_start = time.perf_counter()

    import numba

    from shepherd.monitoring import kernels

    py = None if args.no_evidently else ensure_evidently_venv(args.evidently_venv)
    print(machine_line() + f"; load average at the start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    compile_s = kernels.warm_up()
    print(f"python {platform.python_version()}; numpy {version('numpy')}, numba {version('numba')}, "
          f"scipy {version('scipy')}, shepherd {version('shepherd')}; numba threads {numba.get_num_threads()} "
          f"(threading layer {numba.threading_layer()})")
    print(f"kernels.warm_up(): {compile_s:.2f} s (compile or load from Numba's cache)")

    rows = []
    ev_versions = None
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="shepherd-drift-bench-") as tmpd:
        tmp = Path(tmpd)
        for n_ref, n_cur, n_feat in sizes:
            label = f"{n_ref:,} x {n_cur:,} x {n_feat}"
            print(f"\n== {label} (reference rows x current rows x features)", flush=True)
            s = run_shepherd_size(n_ref, n_cur, n_feat, args.rounds, args.seed)
            tm = s["times"]
            med = {k: median(v) for k, v in tm.items()}
            floor_name = min(("sort-C", "sort-F", "sort-Fp"), key=lambda k: med[k])
            print(f"data generated in {s['gen_s']:.2f} s; build_profile (once, not counted): {s['build_s']:.2f} s")
            for k in tm:
                print(f"  {k:12s} median {fmt_s(med[k]):>10s}  (min {fmt_s(min(tm[k]))}, max {fmt_s(max(tm[k]))}, "
                      f"{len(tm[k])} rounds)")
            ratio_floor = med["shepherd"] / med[floor_name]
            print(f"  shepherd / floor ({floor_name}) = {ratio_floor:.2f}x  [paired per round: "
                  f"{paired(tm['shepherd'], tm[floor_name])}]")
            print(f"  shepherd-1t / sort-F (both one thread) = {med['shepherd-1t'] / med['sort-F']:.2f}x")
            res, verdict = s["result"], s["verdict"]
            print(f"  shepherd verdict: {verdict.n_drifted}/{verdict.n_evaluated} features drifted by KS (BH, alpha 0.05); "
                  f"dataset drifted = {verdict.drifted}")
            row = {"label": label, "build_s": s["build_s"], "shepherd": med["shepherd"], "shepherd_1t": med["shepherd-1t"],
                   "floor_name": floor_name, "floor": med[floor_name], "sort_f": med["sort-F"], "ratio_floor": ratio_floor,
                   "ev": {}}
            verdicts.append(("floor", label, ratio_floor <= 2.0))
            if py is not None:
                print(f"  evidently ({', '.join(configs)}; {args.evidently_reps} timed rep(s) each) ...", flush=True)
                ev = run_evidently(py, tmp, f"{n_ref}x{n_cur}x{n_feat}", s["ref"], s["cur"], args.evidently_reps, configs)
                ev_versions = ev["versions"]
                case = ev["cases"][0]
                print(f"  evidently: import {ev['import_s']:.2f} s, reference Dataset (once, not counted) "
                      f"{case['ref_dataset_s']:.2f} s, subprocess wall {ev['wall_s']:.1f} s")
                for config, c in case["configs"].items():
                    em = median(c["times_s"])
                    speed = em / med["shepherd"]
                    tests = {m: len(v) for m, v in c["values"].items()}
                    print(f"  evidently {config:10s} median {fmt_s(em):>10s} ({len(c['times_s'])} rep) -> "
                          f"shepherd is {speed:.0f}x faster ({em / med['shepherd-1t']:.0f}x on one thread); "
                          f"stattests used (method: columns): {tests}"
                          + (f"; drifted columns {c['drifted_columns']}" if config == "preset" else ""))
                    for line in cross_check(c["values"], res):
                        print(f"    cross-check {config}: {line}")
                    row["ev"][config] = {"median": em, "speed": speed, "speed_1t": em / med["shepherd-1t"], "tests": tests}
                    verdicts.append((f"evidently {config}", label, speed >= 50))
            rows.append(row)
            del s

    print("\n== summary")
    if ev_versions:
        print("evidently venv: " + ", ".join(f"{k} {v}" for k, v in ev_versions.items()))
    header = ["size (ref x cur x features)", "build_profile", "Shepherd", "Shepherd 1 thread", "np.sort floor",
              "Shepherd / floor"]
    for config in configs if py is not None else []:
        header += [f"Evidently {config}", f"Evidently {config} / Shepherd"]
    trs = []
    for r in rows:
        cells = [r["label"], fmt_s(r["build_s"]), fmt_s(r["shepherd"]), fmt_s(r["shepherd_1t"]),
                 f"{fmt_s(r['floor'])} ({r['floor_name']})", f"{r['ratio_floor']:.2f}x"]
        for config in configs if py is not None else []:
            e = r["ev"].get(config)
            cells += [fmt_s(e["median"]), f"{e['speed']:.0f}x"] if e else ["-", "-"]
        trs.append(cells)
    print(table(header, trs))
    print()
    ok = True
    for what, label, met in verdicts:
        target = "<= 2x the np.sort floor" if what == "floor" else ">= 50x faster"
        print(f"target {what} {target} at {label}: {'MET' if met else 'MISSED'}")
        ok &= met
    print(f"\ntotal run time {time.perf_counter() - t_start:.0f} s; load average at the end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on the machine skews the figures)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
