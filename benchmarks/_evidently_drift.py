"""Evidently's side of benchmarks/drift.py: runs inside Evidently's own virtual environment, never Shepherd's.

    <evidently-venv>/bin/python benchmarks/_evidently_drift.py SPEC.json OUT.json

SPEC.json: {"cases": [{"name", "ref", "cur"}], "reps": int, "configs": [...]}, where ref and cur are
.npy files (rows x features, float64) written by benchmarks/drift.py. Columns are named f0, f1, ...
and declared numerical. Configurations (each a fresh `Report` per repetition):

  preset     DataDriftPreset() as shipped: Evidently picks one stattest per column itself
  presets4   four DataDriftPreset(num_method=m) in one Report, m in psi, ks, wasserstein,
             jensenshannon: every column gets the same four tests as Shepherd's full pass
  valuedrift the leanest route to the same four tests: only the ValueDrift(column, method=m)
             metrics that a preset generates, without its DriftedColumnsCount

Timed per repetition: `Dataset.from_pandas` of the current DataFrame plus `Report.run`. The
reference Dataset is built once beforehand (its time is reported separately), as Shepherd builds
its reference profile once. Every configuration is first run once on a 2,000-row slice so that
imports and first-call costs are not timed. OUT.json holds the times, the stattest Evidently used
for every column, and the values of the last repetition (for a cross-check against Shepherd).
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version

import numpy as np

FORCED = ("psi", "ks", "wasserstein", "jensenshannon")


def main() -> int:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    t0 = time.perf_counter()
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    import_s = time.perf_counter() - t0

    def metrics(config: str, cols: list[str]) -> list:
        if config == "preset":
            return [DataDriftPreset()]
        if config == "presets4":
            return [DataDriftPreset(num_method=m) for m in FORCED]
        if config == "valuedrift":
            return [ValueDrift(column=c, method=m) for m in FORCED for c in cols]
        raise ValueError(f"unknown Evidently configuration {config!r}")

    out: dict = {
        "versions": {p: version(p) for p in ("evidently", "pandas", "numpy", "scipy")},
        "python": sys.version.split()[0],
        "import_s": import_s,
        "cases": [],
    }
    for case in spec["cases"]:
        ref = np.load(case["ref"])
        cur = np.load(case["cur"])
        cols = [f"f{j}" for j in range(ref.shape[1])]
        ref_df = pd.DataFrame(ref, columns=cols)
        cur_df = pd.DataFrame(cur, columns=cols)
        del ref, cur
        dd = DataDefinition(numerical_columns=cols)
        t = time.perf_counter()
        ref_ds = Dataset.from_pandas(ref_df, data_definition=dd)
        ref_build_s = time.perf_counter() - t
        small_ref = Dataset.from_pandas(ref_df.iloc[:2000], data_definition=dd)
        small_cur = Dataset.from_pandas(cur_df.iloc[:2000], data_definition=dd)
        res: dict = {"name": case["name"], "ref_dataset_s": ref_build_s, "configs": {}}
        for config in spec["configs"]:
            Report(metrics(config, cols)).run(small_cur, small_ref)  # warm-up: imports, first calls
            times = []
            snap = None
            for _ in range(spec["reps"]):
                t = time.perf_counter()
                cur_ds = Dataset.from_pandas(cur_df, data_definition=dd)
                snap = Report(metrics(config, cols)).run(cur_ds, ref_ds)
                times.append(time.perf_counter() - t)
                print(f"    evidently {case['name']} {config}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
            values: dict[str, dict[str, float]] = {}
            drifted_count = None
            for m in snap.dict()["metrics"]:
                cfg = m["config"]
                if cfg.get("type", "").endswith("ValueDrift"):
                    values.setdefault(cfg["method"], {})[cfg["column"]] = float(m["value"])
                elif cfg.get("type", "").endswith("DriftedColumnsCount") and drifted_count is None:
                    drifted_count = m["value"]
            res["configs"][config] = {"times_s": times, "values": values, "drifted_columns": drifted_count}
        out["cases"].append(res)
    with open(sys.argv[2], "w") as fh:
        json.dump(out, fh, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
