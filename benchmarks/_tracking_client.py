"""The mlflow-client side of benchmarks/tracking.py: one phase per invocation, results as JSON.

    python benchmarks/_tracking_client.py PHASE --out FILE [options]

It runs in its own process (so its CPU time is its own) with the unmodified mlflow client that is
installed next to it; the target server comes from MLFLOW_TRACKING_URI, and a bearer token from
MLFLOW_TRACKING_TOKEN (Shepherd only). The parent runs the same phases, with the same arguments,
against every target.

Phases:
  log      one round of the logging scenario: per run (--start, --runs): create_run, one log_batch
           call with 10 params and 100 metrics x 10 steps (the client sends it as two requests:
           10 params + 990 metrics, then 10 metrics, since a request holds at most 1000 entities),
           set_terminated; then `--single` log_metric calls into one run of a second experiment.
           The first round (--start 0) creates both experiments and that run; the last (--last)
           finishes it and checks its whole history.
  grow     more runs, to reach `--total`: create_run and one log_batch of 10 params and the same
           100 metrics at a single step (one request); left RUNNING.
  search   what the search returns (for the cross-check), then its latency through the mlflow
           client and as a raw HTTP request (same JSON body, response read but not parsed).
  history  get_metric_history of a 10-step metric over several runs, checked against the
           logged values, then its latency (client and raw HTTP).

Every value is a function of (run index, metric, step), so the parent can compute what a search
must return and check both servers against it and against each other.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

N_PARAMS = 10
N_METRICS = 100
N_STEPS = 10
SEED = 20261123
BASE_TS = 1_790_000_000_000  # epoch ms; every metric timestamp is BASE_TS + run * 100 + step
EXPERIMENT = "bench"
SINGLE_EXPERIMENT = "bench-single"
FILTERS = {
    "metric": ("metrics.m_3 > 0.5", ["metrics.m_7 DESC"]),
    "metric+param": ("metrics.m_3 > 0.5 and params.p_1 = '3'", ["metrics.m_7 DESC"]),
}
HISTORY_KEY = "m_5"


# ------------------------------------------------------------------------------ the data
def run_name(i: int) -> str:
    return f"run-{i:05d}"


def params(i: int) -> list[tuple[str, str]]:
    rng = random.Random(SEED * 7 + i)
    return [(f"p_{k}", str(rng.randint(0, 9))) for k in range(N_PARAMS)]


def metric_values(i: int, steps: int) -> list[list[float]]:
    """values[k][s] of metric m_k at step s of run i."""
    rng = random.Random(SEED * 1_000_003 + i)
    return [[rng.random() for _ in range(steps)] for _ in range(N_METRICS)]


def latest(i: int, steps: int, k: int) -> float:
    """The value search sees for m_k (its last step: the largest step wins)."""
    return metric_values(i, steps)[k][steps - 1]


def expected_search(runs: int, total: int, which: str) -> list[str]:
    """Run names a search must return, in order: runs [0, runs) have 10 steps, [runs, total) one step."""
    found = []
    for i in range(total):
        steps = N_STEPS if i < runs else 1
        vals = metric_values(i, steps)
        if vals[3][-1] <= 0.5:
            continue
        if which == "metric+param" and dict(params(i))["p_1"] != "3":
            continue
        found.append((-vals[7][-1], run_name(i)))
    return [name for _, name in sorted(found)]


# ------------------------------------------------------------------------------ helpers
def client():
    from mlflow import MlflowClient

    return MlflowClient()


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    q = statistics.quantiles(s, n=100, method="inclusive") if len(s) > 1 else s * 99
    return {"p50_ms": q[49] * 1e3, "p95_ms": q[94] * 1e3, "mean_ms": statistics.fmean(s) * 1e3, "min_ms": s[0] * 1e3,
            "max_ms": s[-1] * 1e3, "n": len(s)}


class Raw:
    """One keep-alive HTTP connection to the tracking server, for latencies without the client's parsing."""

    def __init__(self) -> None:
        uri = urllib.parse.urlsplit(os.environ["MLFLOW_TRACKING_URI"])
        self.host, self.port = uri.hostname, uri.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        self.headers = {"Content-Type": "application/json"}
        if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: dict | None = None) -> bytes:
        payload = json.dumps(body).encode() if body is not None else None
        try:
            self.conn.request(method, path, body=payload, headers=self.headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):  # the server closed an idle keep-alive connection
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            self.conn.request(method, path, body=payload, headers=self.headers)
            resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return data


def server_cpu(sid: int | None) -> float:
    """utime+stime of every live process in the server's session (as benchmarks/asgi.py reads it); 0 without --server-sid."""
    if not sid:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def machine_busy() -> float:
    """CPU seconds used by everything on the machine so far (/proc/stat, all CPUs, minus idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


BUDGET = {"seconds": 0.0}  # --latency-budget: a figure stops early once this many seconds are spent (never under MIN_CALLS)
MIN_CALLS = 10


def timed(fn, calls: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out: list[float] = []
    start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        if BUDGET["seconds"] and len(out) >= MIN_CALLS and time.perf_counter() - start > BUDGET["seconds"]:
            break
    return out


def experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        raise RuntimeError(f"experiment {name!r} does not exist")
    return exp.experiment_id


# ------------------------------------------------------------------------------ phases
def phase_log(args) -> dict:
    """One round of the logging scenario: runs [start, start + runs), then log_metric steps [single_start, single_start + single).

    The first round creates the two experiments and the log_metric run; the last one (--last) finishes that run and
    checks its whole history."""
    from mlflow.entities import Metric, Param

    c = client()
    if args.start == 0:
        exp = c.create_experiment(EXPERIMENT)
        single_exp = c.create_experiment(SINGLE_EXPERIMENT)
        single_run = c.create_run(single_exp, run_name="single-calls").info.run_id
    else:
        exp = experiment_id(c, EXPERIMENT)
        single_run = args.single_run
    ids: dict[int, str] = {}
    latencies: dict[str, list[float]] = {"create_run": [], "log_batch": [], "set_terminated": []}
    lock = threading.Lock()

    def one(i: int) -> None:
        ps = [Param(k, v) for k, v in params(i)]
        vals = metric_values(i, N_STEPS)
        ms = [Metric(f"m_{k}", vals[k][s], BASE_TS + i * 100 + s, s) for k in range(N_METRICS) for s in range(N_STEPS)]
        t0 = time.perf_counter()
        rid = c.create_run(exp, run_name=run_name(i)).info.run_id
        t1 = time.perf_counter()
        c.log_batch(rid, metrics=ms, params=ps)
        t2 = time.perf_counter()
        c.set_terminated(rid)
        t3 = time.perf_counter()
        with lock:
            ids[i] = rid
            latencies["create_run"].append(t1 - t0)
            latencies["log_batch"].append(t2 - t1)
            latencies["set_terminated"].append(t3 - t2)

    indices = range(args.start, args.start + args.runs)
    busy0, srv0, cpu0, t0 = machine_busy(), server_cpu(args.server_sid), time.process_time(), time.perf_counter()
    if args.threads == 1:
        for i in indices:
            one(i)
    else:
        with ThreadPoolExecutor(args.threads) as ex:
            list(ex.map(one, indices))
    batch_s, batch_cpu, batch_srv = time.perf_counter() - t0, time.process_time() - cpu0, server_cpu(args.server_sid) - srv0
    batch_other = (machine_busy() - busy0 - batch_cpu - batch_srv) / batch_s

    single_lat = []
    srv0, cpu0, t0 = server_cpu(args.server_sid), time.process_time(), time.perf_counter()
    for s in range(args.single_start, args.single_start + args.single):
        t1 = time.perf_counter()
        c.log_metric(single_run, "loss", 1.0 / (s + 1), timestamp=BASE_TS + s, step=s)
        single_lat.append(time.perf_counter() - t1)
    single_s, single_cpu, single_srv = time.perf_counter() - t0, time.process_time() - cpu0, server_cpu(args.server_sid) - srv0
    single_ok = None
    if args.last:
        c.set_terminated(single_run)
        got = [(m.step, m.value) for m in c.get_metric_history(single_run, "loss")]
        total = args.single_start + args.single
        single_ok = got == [(s, 1.0 / (s + 1)) for s in range(total)]
    return {
        "experiment_id": exp, "run_ids": {str(i): r for i, r in ids.items()}, "single_run": single_run, "single_history_ok": single_ok,
        "batch_seconds": batch_s, "batch_client_cpu_s": batch_cpu, "batch_server_cpu_s": batch_srv, "batch_other_cpu_per_s": batch_other,
        "single_seconds": single_s, "single_client_cpu_s": single_cpu, "single_server_cpu_s": single_srv,
        "latencies": latencies, "single_latencies": single_lat,
    }


def phase_grow(args) -> dict:
    from mlflow.entities import Metric, Param

    c = client()
    exp = experiment_id(c, EXPERIMENT)

    def one(i: int) -> None:
        vals = metric_values(i, 1)
        rid = c.create_run(exp, run_name=run_name(i)).info.run_id
        c.log_batch(rid, metrics=[Metric(f"m_{k}", vals[k][0], BASE_TS + i * 100, 0) for k in range(N_METRICS)],
                    params=[Param(k, v) for k, v in params(i)])

    srv0, cpu0, t0 = server_cpu(args.server_sid), time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(args.threads) as ex:
        list(ex.map(one, range(args.start, args.total)))
    return {"seconds": time.perf_counter() - t0, "client_cpu_s": time.process_time() - cpu0,
            "server_cpu_s": server_cpu(args.server_sid) - srv0, "runs": args.total - args.start}


def phase_search(args) -> dict:
    c = client()
    exp = experiment_id(c, EXPERIMENT)
    raw = Raw()
    out: dict = {"variants": {}}
    for which, (flt, order) in FILTERS.items():
        # what it returns: every matching run, in order, paged 1000 at a time (not timed)
        names, values, token, pages = [], [], None, 0
        while True:
            page = c.search_runs([exp], flt, order_by=order, max_results=1000, page_token=token)
            pages += 1
            for r in page:
                names.append(r.info.run_name)
                values.append(r.data.metrics.get("m_7"))
            token = page.token
            if not token:
                break
        top = c.search_runs([exp], flt, order_by=order, max_results=args.max_results)
        first = top[0] if len(top) else None
        sample = None
        if first is not None:
            sample = {"name": first.info.run_name, "params": first.data.params, "n_metrics": len(first.data.metrics),
                      "m_3": first.data.metrics.get("m_3"), "status": first.info.status}
        body = {"experiment_ids": [exp], "filter": flt, "run_view_type": "ACTIVE_ONLY", "max_results": args.max_results, "order_by": order}
        size = len(raw.call("POST", "/api/2.0/mlflow/runs/search", body))
        lat_client = timed(lambda f=flt, o=order: c.search_runs([exp], f, order_by=o, max_results=args.max_results),
                           args.client_calls, args.warmup)
        lat_raw = timed(lambda b=body: raw.call("POST", "/api/2.0/mlflow/runs/search", b), args.calls, args.warmup)
        out["variants"][which] = {
            "filter": flt, "order_by": order, "matched": len(names), "names": names, "m_7": values, "pages": pages,
            "top": [r.info.run_name for r in top], "sample": sample, "response_bytes": size,
            "client": percentiles(lat_client), "raw": percentiles(lat_raw),
        }
    return out


def phase_history(args) -> dict:
    c = client()
    ids = json.loads(Path(args.run_ids).read_text())
    raw = Raw()
    picks = [(i, ids[i]) for i in range(0, len(ids), max(1, len(ids) // 50))][:50]
    k = int(HISTORY_KEY.split("_")[1])
    bad = []
    for i, rid in picks:
        got = [(m.step, m.value, m.timestamp) for m in c.get_metric_history(rid, HISTORY_KEY)]
        want = [(s, metric_values(i, N_STEPS)[k][s], BASE_TS + i * 100 + s) for s in range(N_STEPS)]
        if got != want:
            bad.append({"run": run_name(i), "got": got[:3], "len": len(got)})
    it = iter(range(10**9))

    def call_client():
        c.get_metric_history(picks[next(it) % len(picks)][1], HISTORY_KEY)

    def call_raw():
        rid = picks[next(it) % len(picks)][1]
        raw.call("GET", f"/api/2.0/mlflow/metrics/get-history?run_id={rid}&metric_key={HISTORY_KEY}&max_results=25000")

    return {"checked": len(picks), "bad": bad, "client": percentiles(timed(call_client, args.client_calls, args.warmup)),
            "raw": percentiles(timed(call_raw, args.calls, args.warmup))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["log", "grow", "search", "history"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--single-start", type=int, default=0)
    ap.add_argument("--single-run", default="")
    ap.add_argument("--last", action="store_true")
    ap.add_argument("--total", type=int, default=0)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--client-calls", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-results", type=int, default=100)
    ap.add_argument("--latency-budget", type=float, default=0.0, help="seconds per latency figure (0: no limit)")
    ap.add_argument("--run-ids", type=Path)
    ap.add_argument("--server-sid", type=int, default=0, help="session id of the server's processes, for their CPU time")
    args = ap.parse_args(argv)
    BUDGET["seconds"] = args.latency_budget
    fn = {"log": phase_log, "grow": phase_grow, "search": phase_search, "history": phase_history}[args.phase]
    args.out.write_text(json.dumps(fn(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
