"""Shepherd vs `mlflow server` (SQLite backend) driven by the same mlflow client, in one run on one machine.

    .venv/bin/python benchmarks/tracking.py [--runs 1000] [--search-runs 10000] [--threads 1] [--rounds 4]
                                           [--targets mlflow,shepherd,stub] [--quick]

Targets, each a fresh server process on 127.0.0.1 over a fresh data directory, all started up
front and measured phase by phase, one target at a time (the idle one uses no CPU), so that the
two figures of a phase come from adjacent time slots:

  mlflow      `mlflow server --backend-store-uri sqlite:///<tmp>/mlflow.db --artifacts-destination
              <tmp>/artifacts --host 127.0.0.1 --port P --workers 1 --uvicorn-opts --no-access-log`
              from its own virtual environment (created on first use, see --mlflow-venv:
              `pip install mlflow==3.* uvloop httptools`, so its uvicorn has the same loop and HTTP
              parser as Shepherd's). One uvicorn worker: one server process, as `shepherd serve`.
              MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, so it does not also start its huey job
              consumer (which tracking never uses). SQLite in its default rollback-journal mode.
  mlflow-w2   the same with `--workers 2` (an extra line; not in the default targets)
  shepherd    `shepherd serve --config` exactly as shipped, with an admin token from
              `shepherd token create --role admin` as MLFLOW_TRACKING_TOKEN. SQLite in WAL mode
              with synchronous=FULL.
  stub        the logging phase only: a raw ASGI app on uvicorn + uvloop + httptools that reads every
              request and answers with a minimal valid response, storing nothing. What it reaches
              is the ceiling that the mlflow client itself (about 30 ms of client CPU per run here)
              puts on any server, so it bounds the ratio any server could show against MLflow.

The client is the unmodified mlflow client installed in the venv that runs this script (mlflow-
skinny in Shepherd's dev venv), the same for every target, in its own process per phase
(benchmarks/_tracking_client.py), with MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true (else
set_terminated adds a get_run to print a link). Phases, in order:

  log         the logging scenario, timed: for each of --runs runs: create_run, one
              MlflowClient.log_batch call with 10 params and 100 metrics x 10 steps (1000 metric
              values; the client sends 10 params + 990 metrics, then 10 metrics: one request
              holds at most 1000 entities), set_terminated; so 4 requests per run. Then 200
              log_metric calls, one request each, into one run of a second experiment.
              --threads client threads (default 1: one training script logging sequentially).
              It runs in --rounds rounds (default 4: 250 runs and 50 log_metric calls each) per
              target, the target order rotating every round, so that each round gives a paired
              ratio from adjacent time slots (this VM's speed drifts); the verdict uses their median.
  search@N    correctness first: every run the query matches, paged 1000 at a time, must equal
              the list computed from the generator (values are a function of run, metric, step),
              so both servers return the same runs in the same order. Then, after 3 warm-up
              calls each, search_runs(filter, order_by, max_results=100) for
                metric        "metrics.m_3 > 0.5", order_by ["metrics.m_7 DESC"]
                metric+param  "metrics.m_3 > 0.5 and params.p_1 = '3'", same order
              --calls times as the raw HTTP request (the client's JSON body on one keep-alive
              connection, response read but not parsed: the server's latency), and
              --client-calls times through MlflowClient.search_runs (plus the client's decoding).
  history     get_metric_history of m_5 (10 steps) of 50 runs: checked value by value, then
              timed the same way (--calls raw, --client-calls through the client).
  grow        more runs up to --search-runs, identically on every target: --grow-threads client
              threads (default 4), each run create_run + one log_batch of the same 10 params and
              100 metrics at one step (one request), left RUNNING. So search sees the same
              latest-metric, param and tag rows per run as in the first runs, with less history.
  search@M    as search@N, at --search-runs runs.

Every latency figure stops after --latency-budget seconds (default 30) once it has 10 calls:
MLflow's search at 10k runs takes seconds per call. Before each phase the script waits (up to
--quiet-wait s) for the machine to go idle, and it flags phases during which other processes used
CPU. A default run takes about 20 minutes, most of it MLflow (logging 1000 runs, then building
9000 more at ~17 runs/s).

Targets: Shepherd >= 5x MLflow's throughput on the logging scenario (wall time of the batch part
plus the log_metric calls, median of the per-round paired ratios), and Shepherd's search_runs p95
< 50 ms at --search-runs runs (raw HTTP; the mlflow client's own decoding of 100 runs x 100
metrics, ~150 ms, is reported beside it and is the same for any server).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import _tracking_client as tc
from benchmarks.asgi import table, version
from benchmarks.serving import (
    Target,
    children_seconds,
    cli,
    http,
    machine_busy_seconds,
    venv_version,
    wait_quiet,
)

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TARGETS = ("mlflow", "mlflow-w2", "shepherd", "stub")
DEFAULT_TARGETS = "mlflow,shepherd,stub"
DEFAULT_MLFLOW_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shepherd-bench" / "mlflow-venv"
MLFLOW_PACKAGES = ["mlflow==3.*", "uvloop", "httptools"]
SEARCH_P95_TARGET_MS = 50.0
THROUGHPUT_TARGET = 5.0
NOISY: list[tuple[str, str, float]] = []  # (target, phase, CPU-s/s that other processes used meanwhile)


# ------------------------------------------------------------------------------ environments
def ensure_mlflow_venv(venv: Path) -> Path:
    """The MLflow venv's `mlflow` executable; the venv is created (python3 -m venv + pip) on first use."""
    exe = venv / "bin" / "mlflow"
    probe = [str(venv / "bin" / "python"), "-c", "import mlflow.server, sqlalchemy, uvicorn, uvloop, httptools"]
    if exe.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return exe
    print(f"setting up MLflow's own virtual environment in {venv} (pip install {' '.join(MLFLOW_PACKAGES)}) ...", flush=True)
    if not (venv / "bin" / "python").exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *MLFLOW_PACKAGES], check=True)
    if not exe.exists():
        raise RuntimeError(f"pip installed mlflow but {exe} is missing")
    return exe


# ------------------------------------------------------------------------------ stub
async def stub_app(scope, receive, send) -> None:
    """ASGI app for `uvicorn benchmarks.tracking:stub_app`: answers the logging phase's mlflow calls with a
    minimal valid response, reading every request body but storing nothing: the mlflow client's own ceiling."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    path = scope["path"]
    out: dict = {}
    if path.endswith("/experiments/create"):
        out = {"experiment_id": "1"}
    elif path.endswith(("/runs/create", "/runs/update")):
        req = json.loads(body or b"{}")
        run_id = req.get("run_id") or os.urandom(16).hex()
        info = {"run_id": run_id, "run_uuid": run_id, "run_name": req.get("run_name") or "stub", "experiment_id": req.get("experiment_id", "1"),
                "user_id": "", "status": req.get("status", "RUNNING"), "start_time": int(time.time() * 1000),
                "artifact_uri": f"mlflow-artifacts:/1/{run_id}/artifacts", "lifecycle_stage": "active"}
        out = {"run": {"info": info, "data": {}}} if path.endswith("/runs/create") else {"run_info": info}
    elif path == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"OK"})
        return
    data = json.dumps(out).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


# ------------------------------------------------------------------------------ servers
class Server(Target):
    """A Target (benchmarks/serving.py) with its own readiness path and the env its client needs."""

    health = "/v2/health/ready"
    token: str | None = None

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if http("GET", self.url(self.health), timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_TRACKING_URI=self.url("/").rstrip("/"), MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
        if self.token:
            env["MLFLOW_TRACKING_TOKEN"] = self.token
        return env


def start_mlflow(t: Server, exe: Path, workers: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    t.health = "/health"
    t.spawn([str(exe), "server", "--backend-store-uri", f"sqlite:///{t.dir / 'mlflow.db'}", "--artifacts-destination",
             str(t.dir / "artifacts"), "--host", "127.0.0.1", "--port", str(t.port), "--workers", str(workers),
             "--uvicorn-opts", "--no-access-log"], env=env)
    t.wait_ready()


def start_shepherd(t: Server) -> None:
    cfg = t.dir / "shepherd.toml"
    keys = t.dir / "trusted_keys"
    keys.mkdir()
    cfg.write_text(f'[server]\nport = {t.port}\n[storage]\ndata_dir = "{t.dir / "data"}"\n[bundles]\ntrusted_keys_dir = "{keys}"\n'
                   '[logging]\nformat = "json"\n')
    t.token = cli("token", "create", "--role", "admin", "--name", "bench", "--config", str(cfg)).strip()
    t.spawn([str(BIN / "shepherd"), "serve", "--config", str(cfg)])
    t.wait_ready()


def start_stub(t: Server) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t.health = "/health"
    t.spawn([sys.executable, "-m", "uvicorn", "benchmarks.tracking:stub_app", "--host", "127.0.0.1", "--port", str(t.port),
             "--loop", "uvloop", "--http", "httptools", "--lifespan", "off", "--no-access-log", "--log-level", "warning"], env=env, cwd=ROOT)
    t.wait_ready()


def start(name: str, tmp: Path, mlflow_exe: Path | None) -> Server:
    t = Server(name, tmp, None)
    try:
        if name == "stub":
            start_stub(t)
        elif name == "shepherd":
            start_shepherd(t)
        elif name in ("mlflow", "mlflow-w2"):
            start_mlflow(t, mlflow_exe, 2 if name == "mlflow-w2" else 1)
        else:
            raise ValueError(name)
    except Exception:
        t.stop()
        raise
    return t


# ------------------------------------------------------------------------------ phases
def phase(t: Server, name: str, *args: str, quiet: tuple[float, float]) -> dict:
    """Run one client phase against a target in its own process; return its JSON result."""
    wait_quiet(*quiet)
    out = t.dir / f"{name}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(HERE / "_tracking_client.py"), name, "--out", str(out), "--server-sid", str(t.proc.pid), *args]
    t0, busy0, srv0, kids0 = time.monotonic(), machine_busy_seconds(), t.cpu_seconds(), children_seconds()
    res = subprocess.run(cmd, env=t.client_env(), cwd=t.dir, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    other = (machine_busy_seconds() - busy0 - (t.cpu_seconds() - srv0) - (children_seconds() - kids0)) / wall
    if res.returncode:
        raise RuntimeError(f"{name} phase against {t.name} failed ({res.returncode}):\n{res.stderr[-4000:]}\n"
                           f"server log:\n{t.log_tail()}")
    if t.proc.poll() is not None:
        raise RuntimeError(f"{t.name} died during {name}:\n{t.log_tail()}")
    doc = json.loads(out.read_text())
    doc["phase_wall_s"], doc["other_cpu_per_s"] = wall, other
    if other > quiet[0]:
        NOISY.append((t.name, name, other))
    return doc


def split(total: int, parts: int, i: int) -> tuple[int, int]:
    """(start, count) of part i when `total` items are cut into `parts` consecutive parts."""
    bounds = [total * k // parts for k in range(parts + 1)]
    return bounds[i], bounds[i + 1] - bounds[i]


def merge_rounds(rounds: list[dict], runs: int) -> dict:
    """One target's logging rounds as one result (sums, and percentiles over every call), with the rounds kept."""
    out: dict = {k: sum(r[k] for r in rounds) for k in ("batch_seconds", "batch_client_cpu_s", "batch_server_cpu_s", "single_seconds",
                                                      "single_client_cpu_s", "single_server_cpu_s")}
    out["batch_other_cpu_per_s"] = sum(r["batch_other_cpu_per_s"] * r["batch_seconds"] for r in rounds) / out["batch_seconds"]
    ids: dict[int, str] = {}
    for r in rounds:
        ids.update({int(i): rid for i, rid in r["run_ids"].items()})
    out["run_ids"] = [ids.get(i) for i in range(runs)]
    out["latency"] = {k: tc.percentiles([x for r in rounds for x in r["latencies"][k]]) for k in rounds[0]["latencies"]}
    out["single_latency"] = tc.percentiles([x for r in rounds for x in r["single_latencies"]])
    out["single_history_ok"] = rounds[-1]["single_history_ok"]
    out["rounds"] = [{k: v for k, v in r.items() if k not in ("run_ids", "latencies", "single_latencies")} for r in rounds]
    return out


def check_search(results: dict[str, dict], runs: int, total: int, max_results: int) -> list[str]:
    """Problems with what the targets' searches returned (each against the generator, so also against each other)."""
    problems = []
    for which in tc.FILTERS:
        want = tc.expected_search(runs, total, which)
        for name, res in results.items():
            v = res["variants"][which]
            if v["names"] != want:
                diff = next((i for i, (a, b) in enumerate(zip(v["names"], want)) if a != b), min(len(v["names"]), len(want)))
                problems.append(f"{name} {which} @{total}: {len(v['names'])} runs matched, expected {len(want)}; "
                                f"first difference at position {diff}")
            if v["top"] != want[:max_results]:
                problems.append(f"{name} {which} @{total}: the top {max_results} differ from the expected order")
            s = v["sample"]
            if want and s:
                i = int(s["name"].split("-")[1])
                steps = tc.N_STEPS if i < runs else 1
                ok = (s["params"] == dict(tc.params(i)) and s["n_metrics"] == tc.N_METRICS
                      and s["m_3"] == tc.latest(i, steps, 3))
                if not ok:
                    problems.append(f"{name} {which} @{total}: run {s['name']} came back with other params or metrics")
        names = {name: res["variants"][which]["names"] for name, res in results.items()}
        if len({json.dumps(n) for n in names.values()}) > 1:
            problems.append(f"{which} @{total}: the targets returned different runs or orders")
    return problems


# ------------------------------------------------------------------------------ report
def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def machine_lines(targets: list[str], mlflow_venv: Path | None) -> list[str]:
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
    pkgs = ", ".join(f"{p} {version(p)}" for p in ("shepherd", "litestar", "uvicorn", "uvloop", "httptools", "msgspec", "apsw"))
    import sqlite3

    lines = [f"machine: {os.cpu_count()} CPUs ({cpu}), {mem} RAM, {platform.system()} {platform.release()}",
             f"python {platform.python_version()}; {pkgs}"]
    try:
        import apsw

        lines[-1] += f"; Shepherd's SQLite {apsw.sqlite_lib_version()}"
    except ImportError:
        pass
    if mlflow_venv is not None and any(t.startswith("mlflow") for t in targets):
        mv = ", ".join(f"{p} {venv_version(mlflow_venv, p)}" for p in ("mlflow", "sqlalchemy", "alembic", "fastapi", "flask", "uvicorn", "uvloop", "httptools"))
        sq = subprocess.run([str(mlflow_venv / "bin" / "python"), "-c", "import sqlite3; print(sqlite3.sqlite_version)"],
                            capture_output=True, text=True, check=False).stdout.strip()
        lines.append(f"mlflow venv: {mv}; SQLite {sq}")
    client = ", ".join(f"{p} {version(p)}" for p in ("mlflow-skinny", "mlflow", "requests", "protobuf") if version(p) != "-")
    lines.append(f"client: {client} (in {sys.executable}); local SQLite {sqlite3.sqlite_version}")
    return lines


def report(targets: list[str], logs: dict, searches: dict, histories: dict, grows: dict, args) -> tuple[str, list[str]]:
    out = []
    n = args.runs
    per_run_values = tc.N_METRICS * tc.N_STEPS
    rows = []
    for name in targets:
        lg = logs[name]
        total_s = lg["batch_seconds"] + lg["single_seconds"]
        rows.append([
            name, fmt(lg["batch_seconds"], 2), fmt(n / lg["batch_seconds"], 2), fmt(n * per_run_values / lg["batch_seconds"], 0),
            fmt(4 * n / lg["batch_seconds"], 1), fmt(lg["batch_server_cpu_s"] / n * 1e3, 1), fmt(lg["batch_client_cpu_s"] / n * 1e3, 1),
            fmt(lg["latency"]["log_batch"]["p50_ms"], 1), fmt(args.single / lg["single_seconds"], 1),
            fmt(lg["single_latency"]["p50_ms"], 2), fmt(total_s, 2),
        ])
    head = ["target", "batch s", "runs/s", "metric values/s", "req/s", "server CPU ms/run", "client CPU ms/run",
            "log_batch p50 ms", "log_metric calls/s", "log_metric p50 ms", "scenario s"]
    out.append(f"logging scenario: {n} runs x (create_run, log_batch of 10 params + {tc.N_METRICS} metrics x {tc.N_STEPS} steps, "
               f"set_terminated), then {args.single} log_metric calls; {args.threads} client thread(s); in {args.rounds} rounds per target, "
               "the target order rotating; sums over the rounds")
    out.append(table(head, rows))

    verdicts = []
    shepherd = "shepherd" if "shepherd" in targets else None
    bases = [t for t in targets if t.startswith("mlflow")]
    total = {name: logs[name]["batch_seconds"] + logs[name]["single_seconds"] for name in targets}

    def paired(a: str, b: str) -> list[float]:
        """Per-round ratios of b's scenario time to a's (a's throughput over b's), round i of both being adjacent in time."""
        return [(rb["batch_seconds"] + rb["single_seconds"]) / (ra["batch_seconds"] + ra["single_seconds"])
                for ra, rb in zip(logs[a]["rounds"], logs[b]["rounds"])]

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else f"{xs[0]:.2f}x"

    rrows = []
    for top in [x for x in ("shepherd", "stub") if x in targets]:
        s = logs[top]
        for b in bases:
            m = logs[b]
            rrows.append([f"{top}/{b}", ratio(m["batch_seconds"], s["batch_seconds"]), ratio(m["single_seconds"], s["single_seconds"]),
                          ratio(total[b], total[top]), spread(paired(top, b)),
                          ratio(m["batch_server_cpu_s"], s["batch_server_cpu_s"]) if top != "stub" else "-"])
    if rrows:
        out.append("\n" + table(["throughput ratio", "log_batch part", "log_metric part", "whole scenario (total time)",
                                 f"per-round median (min-max), {args.rounds} rounds", "server CPU per run (inverse)"], rrows))
    if shepherd:
        for b in bases:
            thr = statistics.median(paired(shepherd, b))
            ceiling = (f"; the stub (a server that answers at once) reaches {statistics.median(paired('stub', b)):.2f}x with this client"
                       if "stub" in targets else "")
            verdicts.append(f"logging scenario ({args.threads} client thread(s)): Shepherd {thr:.2f}x {b}'s throughput (median of "
                            f"{args.rounds} paired rounds; {total[b] / total[shepherd]:.2f}x on total time): "
                            f"{'MET' if thr >= THROUGHPUT_TARGET else 'MISSED'} (target >= {THROUGHPUT_TARGET:g}x){ceiling}")
    targets = [t for t in targets if t != "stub"]

    for size in sorted(searches):
        res = searches[size]
        rows = []
        for which in tc.FILTERS:
            for name in targets:
                v = res[name]["variants"][which]
                rows.append([which, name, str(v["matched"]), fmt(v["raw"]["p50_ms"], 2), fmt(v["raw"]["p95_ms"], 2),
                             fmt(v["client"]["p50_ms"], 1), fmt(v["client"]["p95_ms"], 1), f"{v['raw']['n']}/{v['client']['n']}",
                             f"{v['response_bytes'] / 1024:,.0f}"])
            if shepherd:
                sv = res[shepherd]["variants"][which]
                for b in bases:
                    bv = res[b]["variants"][which]
                    rows.append([which, f"{b}/shepherd", "", ratio(bv["raw"]["p50_ms"], sv["raw"]["p50_ms"]),
                                 ratio(bv["raw"]["p95_ms"], sv["raw"]["p95_ms"]), ratio(bv["client"]["p50_ms"], sv["client"]["p50_ms"]),
                                 ratio(bv["client"]["p95_ms"], sv["client"]["p95_ms"]), "", ""])
        out.append(f"\nsearch_runs at {size:,} runs, max_results={args.max_results}; raw = up to {args.calls} timed calls of the same request over "
                   f"one keep-alive HTTP connection, response read but not parsed; client = up to {args.client_calls} timed "
                   f"MlflowClient.search_runs calls (each figure stops after {args.latency_budget:g} s, never under 10 calls):")
        out.append(table(["query", "target", "matched", "raw p50 ms", "raw p95 ms", "client p50 ms", "client p95 ms", "calls raw/client",
                          "response KiB"], rows))
        if shepherd and size == max(searches):
            v = res[shepherd]["variants"]["metric"]
            p95 = v["raw"]["p95_ms"]
            verdicts.append(f"search_runs at {size:,} runs ({v['filter']!r}, order_by {v['order_by']}): Shepherd p95 {p95:.1f} ms "
                            f"(raw HTTP): {'MET' if p95 < SEARCH_P95_TARGET_MS else 'MISSED'} (target < {SEARCH_P95_TARGET_MS:g} ms); "
                            f"through the mlflow client p95 {v['client']['p95_ms']:.1f} ms")

    rows = []
    for name in targets:
        h = histories[name]
        rows.append([name, fmt(h["raw"]["p50_ms"], 2), fmt(h["raw"]["p95_ms"], 2), fmt(h["client"]["p50_ms"], 2), fmt(h["client"]["p95_ms"], 2)])
    if shepherd:
        for b in bases:
            rows.append([f"{b}/shepherd", ratio(histories[b]["raw"]["p50_ms"], histories[shepherd]["raw"]["p50_ms"]),
                         ratio(histories[b]["raw"]["p95_ms"], histories[shepherd]["raw"]["p95_ms"]),
                         ratio(histories[b]["client"]["p50_ms"], histories[shepherd]["client"]["p50_ms"]),
                         ratio(histories[b]["client"]["p95_ms"], histories[shepherd]["client"]["p95_ms"])])
    out.append(f"\nget_metric_history({tc.HISTORY_KEY!r}, {tc.N_STEPS} steps) at {args.runs:,} runs, over 50 runs ({args.calls} raw, "
               f"{args.client_calls} client calls):")
    out.append(table(["target", "raw p50 ms", "raw p95 ms", "client p50 ms", "client p95 ms"], rows))

    if grows:
        rows = [[name, str(g["runs"]), fmt(g["seconds"], 1), fmt(g["runs"] / g["seconds"], 1), fmt(g["server_cpu_s"] / g["runs"] * 1e3, 1)]
                for name, g in grows.items()]
        out.append(f"\ngrowing to {args.search_runs:,} runs ({args.grow_threads} client threads; create_run + one log_batch of 10 params "
                   f"and {tc.N_METRICS} metrics at one step per run; not a target):")
        out.append(table(["target", "runs", "s", "runs/s", "server CPU ms/run"], rows))
    return "\n".join(out), verdicts


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000, help="runs in the timed logging scenario (default 1000)")
    ap.add_argument("--single", type=int, default=200, help="single log_metric calls in the logging scenario (default 200)")
    ap.add_argument("--search-runs", type=int, default=10_000, help="runs for the second search measurement (default 10000; <= --runs skips it)")
    ap.add_argument("--threads", type=int, default=1, help="client threads for the timed logging scenario (default 1)")
    ap.add_argument("--rounds", type=int, default=4, help="the logging scenario in this many rounds per target, the target order rotating "
                    "each round, for paired per-round ratios (default 4)")
    ap.add_argument("--grow-threads", type=int, default=4, help="client threads for creating the extra runs (default 4)")
    ap.add_argument("--calls", type=int, default=50, help="timed raw HTTP calls per latency figure (default 50, after 3 warm-up calls)")
    ap.add_argument("--client-calls", type=int, default=20, help="timed mlflow-client calls per latency figure (default 20, after 3 warm-up calls)")
    ap.add_argument("--latency-budget", type=float, default=30.0,
                    help="stop a latency figure once it has taken this many seconds, after at least 10 calls (default 30; 0 = no limit): "
                         "MLflow's search at 10k runs takes seconds per call")
    ap.add_argument("--max-results", type=int, default=100, help="max_results of the timed searches (default 100)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help=f"comma list from {', '.join(TARGETS)} (default {DEFAULT_TARGETS})")
    ap.add_argument("--mlflow-venv", type=Path, default=DEFAULT_MLFLOW_VENV,
                    help=f"MLflow's own venv, created on first use (default {DEFAULT_MLFLOW_VENV})")
    ap.add_argument("--quick", action="store_true", help="smoke run: 40 runs, 20 log_metric calls, 200 search runs, 10 calls")
    ap.add_argument("--max-other-cpu", type=float, default=0.15, help="before each phase wait until the machine uses less than this "
                    "many CPU-s/s (default 0.15) ...")
    ap.add_argument("--quiet-wait", type=float, default=120.0, help="... for at most this many seconds (default 120)")
    ap.add_argument("--json", type=Path, help="also write every raw result here")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.single, args.search_runs, args.calls, args.client_calls, args.rounds = 40, 20, 200, 10, 10, 2
    targets = [s.strip() for s in args.targets.split(",") if s.strip()]
    if unknown := set(targets) - set(TARGETS):
        ap.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    quiet = (args.max_other_cpu, args.quiet_wait)

    mlflow_exe = ensure_mlflow_venv(args.mlflow_venv) if any(t.startswith("mlflow") for t in targets) else None
    for line in machine_lines(targets, args.mlflow_venv if mlflow_exe else None):
        print(line)
    print(f"targets {targets}; {args.runs} runs + {args.single} log_metric calls, search at {args.runs} and {args.search_runs} runs\n",
          flush=True)

    logs: dict[str, dict] = {}
    searches: dict[int, dict[str, dict]] = {}
    histories: dict[str, dict] = {}
    grows: dict[str, dict] = {}
    problems: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shepherd-tracking-bench-") as tmp_name:
        tmp = Path(tmp_name)
        servers: dict[str, Server] = {}
        try:
            for name in targets:
                servers[name] = start(name, tmp, mlflow_exe)
                print(f"{name}: pid {servers[name].proc.pid}, {servers[name].url('/')}", flush=True)

            def clock() -> str:
                return f"[{time.monotonic() - started:6.0f} s]"

            rounds: dict[str, list[dict]] = {name: [] for name in servers}
            names = list(servers)
            for rnd in range(args.rounds):
                runs_at, runs_n = split(args.runs, args.rounds, rnd)
                single_at, single_n = split(args.single, args.rounds, rnd)
                last = rnd == args.rounds - 1
                for name in names[rnd % len(names):] + names[:rnd % len(names)]:  # the order rotates every round
                    t = servers[name]
                    extra = ["--single-run", rounds[name][0]["single_run"]] if rnd else []
                    lg = phase(t, "log", "--start", str(runs_at), "--runs", str(runs_n), "--single-start", str(single_at),
                               "--single", str(single_n), "--threads", str(args.threads), *(["--last"] if last else []), *extra, quiet=quiet)
                    rounds[name].append(lg)
                    print(f"{clock()} log round {rnd + 1}/{args.rounds} {name:<10} {runs_n / lg['batch_seconds']:8.2f} runs/s "
                          f"({lg['batch_seconds']:.1f} s, server CPU {lg['batch_server_cpu_s'] / runs_n * 1e3:.1f} ms/run, other processes "
                          f"{lg['batch_other_cpu_per_s']:.2f} CPU-s/s); log_metric {single_n / lg['single_seconds']:.1f} calls/s", flush=True)
            for name, t in servers.items():
                logs[name] = lg = merge_rounds(rounds[name], args.runs)
                (t.dir / "run_ids.json").write_text(json.dumps(lg["run_ids"]))
                if name != "stub" and not lg["single_history_ok"]:
                    problems.append(f"{name}: get_metric_history of the log_metric run did not return the {args.single} logged values")
                if any(r is None for r in lg["run_ids"]):
                    problems.append(f"{name}: some runs were not created")
                if name == "stub":
                    t.stop()

            real = {name: t for name, t in servers.items() if name != "stub"}

            def search_phase(total: int) -> None:
                res = {}
                for name, t in real.items():
                    res[name] = phase(t, "search", "--calls", str(args.calls), "--client-calls", str(args.client_calls),
                                      "--max-results", str(args.max_results), "--latency-budget", str(args.latency_budget), quiet=quiet)
                    v = res[name]["variants"]["metric"]
                    print(f"{clock()} search@{total} {name:<10} matched {v['matched']}, raw p50 {v['raw']['p50_ms']:.2f} / p95 "
                          f"{v['raw']['p95_ms']:.2f} ms, client p50 {v['client']['p50_ms']:.1f} / p95 {v['client']['p95_ms']:.1f} ms "
                          f"(other processes {res[name]['other_cpu_per_s']:.2f} CPU-s/s)", flush=True)
                searches[total] = res
                problems.extend(check_search(res, args.runs, total, args.max_results))

            search_phase(args.runs)
            for name, t in real.items():
                h = phase(t, "history", "--run-ids", str(t.dir / "run_ids.json"), "--calls", str(args.calls),
                          "--client-calls", str(args.client_calls), "--latency-budget", str(args.latency_budget), quiet=quiet)
                histories[name] = h
                if h["bad"]:
                    problems.append(f"{name}: get_metric_history differs from the logged values for {len(h['bad'])} runs: {h['bad'][:2]}")
                print(f"{clock()} history {name:<10} raw p50 {h['raw']['p50_ms']:.2f} ms, client p50 {h['client']['p50_ms']:.2f} ms "
                      f"({h['checked']} runs checked; other processes {h['other_cpu_per_s']:.2f} CPU-s/s)", flush=True)
            if args.search_runs > args.runs:
                for name, t in real.items():
                    g = phase(t, "grow", "--start", str(args.runs), "--total", str(args.search_runs), "--threads", str(args.grow_threads),
                              quiet=quiet)
                    grows[name] = g
                    print(f"{clock()} grow {name:<10} {g['runs']} runs in {g['seconds']:.1f} s ({g['runs'] / g['seconds']:.1f} runs/s)", flush=True)
                search_phase(args.search_runs)
        finally:
            for t in servers.values():
                t.stop()

    print()
    text, verdicts = report(targets, logs, searches, histories, grows, args)
    print(text)
    if verdicts:
        print("\ntargets:\n" + "\n".join("  " + v for v in verdicts))
    print(f"\ncorrectness: {'all checks passed' if not problems else 'FAILED'} (every matching run in order at each size, "
          f"sample run params and metrics, {tc.N_STEPS}-step histories, the {args.single}-call log_metric history)")
    for p in problems:
        print(f"  PROBLEM: {p}", file=sys.stderr)
    if NOISY:
        print(f"\nWARNING: other processes used more than {args.max_other_cpu:g} CPU-s/s during {len(NOISY)} phase(s): "
              + ", ".join(f"{n} {p} {o:.2f}" for n, p, o in NOISY) + "; rerun on a quiet machine", file=sys.stderr)
    print(f"total time {time.monotonic() - started:.0f} s")
    if args.json:
        strip = lambda d: {k: v for k, v in d.items() if k != "run_ids"}
        for res in searches.values():
            for r in res.values():
                for v in r["variants"].values():
                    v.pop("names", None)
                    v.pop("m_7", None)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json), "mlflow_venv": str(args.mlflow_venv)},
                                         "log": {k: strip(v) for k, v in logs.items()}, "search": searches, "history": histories,
                                         "grow": grows, "problems": problems}, indent=2, default=str))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
