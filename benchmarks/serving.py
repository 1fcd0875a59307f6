"""Shepherd vs Seldon MLServer serving the same ONNX model, in one run on one machine.

    .venv/bin/python benchmarks/serving.py [--seconds 10] [--warmup 2] [--concurrency 1,8,32,64]
                                          [--rounds 2] [--pin] [--client-slice-us 100] [--targets shepherd,mlserver,echo]

The model is a small tabular classifier: StandardScaler + LogisticRegression on scikit-learn's
bundled breast-cancer data (30 features), converted with skl2onnx (no ZipMap, opset 17). Every
request is one row as a V2 (Open Inference Protocol) JSON request. Targets, each a subprocess
on 127.0.0.1, one process, started and measured one at a time (never two servers up at once),
the order rotating every round:

  shepherd     `shepherd serve` exactly as shipped (uvicorn + uvloop + httptools, default
               [serving]: max_queue_delay_us = 200), the model imported as a signed bundle,
               deployed and promoted through the CLI; bearer token on every request
  shepherd-d0  the same with `max_queue_delay_us = 0` (the batcher never waits)
  shepherd-nolog  the same as shepherd with `[monitoring] prediction_log = false`: the cost of
               the prediction log (and of the drift windows the monitor computes from it; the
               bundles carry the training rows as reference.parquet, so windows of 1000 rows
               are evaluated during the load)
  mlserver     Seldon MLServer from PyPI, in its own virtual environment (created on first use;
               see --mlserver-venv), with the custom runtime in benchmarks/_mlserver_onnx.py;
               parallel_workers = 0 (inference in the server process), metrics, gzip and access
               logs off; httptools installed so its uvicorn uses the same HTTP parser
  echo         a bare Litestar POST endpoint that returns the request body, on uvicorn + uvloop
               + httptools, one process: the ceiling of this Python HTTP stack
  ort          (always) raw in-process `session.run` on one row: the compute floor

Load: wrk (`apt-get install wrk`), 1 thread, keep-alive, a Lua script for the POST body and
headers, `--warmup` seconds unmeasured and then `--seconds` measured per target per
concurrency. Non-2xx responses and socket errors are counted; a run with any is flagged.
`--client-slice-us` starts wrk with a short CPU time slice (Linux 6.12+), so that where wrk shares
the machine's CPUs with the server, its own wake-ups do not wait out the server's background
work; `--pin` gives it a CPU of its own instead.
Ratios are medians of the per-round paired ratios (same round, same concurrency). For Shepherd
it also reads its batcher histograms from /metrics (rows per batch, queue wait, run time).

On a shared machine other jobs skew the figures, so before each measurement it waits (up to
`--quiet-wait` s) until the machine is idle, and after it computes the CPU that processes other
than the server and wrk used meanwhile (/proc/stat); above `--max-other-cpu` it measures again
(`--retries`), and whatever stays noisy is listed at the end.

Then, on a fresh Shepherd with two versions (1 and 2, both warm), it rolls back `--rollbacks`
times while idle and as many times under load, and reads `shepherd_deployment_swap_seconds`
(phase effective and durable) from /metrics after each; right after each rollback answer it
sends one infer request and checks that the version that was previous answers it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.asgi import Result, _ms, free_port, median_result, session_cpu_seconds, table, version  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TARGETS = ("shepherd", "shepherd-d0", "shepherd-nolog", "mlserver", "echo")
DEFAULT_TARGETS = "shepherd,shepherd-d0,mlserver,echo"
DEPLOYMENT = "cancer"
DEFAULT_MLSERVER_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shepherd-bench" / "mlserver-venv"
MLSERVER_PACKAGES = ["mlserver", "onnxruntime", "httptools"]


# ------------------------------------------------------------------------------ echo app
def make_echo_app():
    """Factory for `uvicorn --factory`: POST /echo returns the request body; GET /v2/health/ready for start-up."""
    from litestar import Litestar, Request, Response, get, post

    @post("/echo", status_code=200)
    async def echo(request: Request) -> Response[bytes]:
        return Response(await request.body(), media_type="application/json")

    @get("/v2/health/ready", sync_to_thread=False)
    def ready() -> dict[str, bool]:
        return {"ready": True}

    # signature_namespace: this module's `from __future__ import annotations` leaves the hints as strings
    return Litestar(route_handlers=[echo, ready], logging_config=None, debug=False,
                    signature_namespace={"Request": Request, "Response": Response})


# ------------------------------------------------------------------------------ model
def build_model(path: Path, seed: int, c: float) -> None:
    """Train StandardScaler + LogisticRegression on the breast-cancer data and write it as ONNX,
    with its training rows beside it as `<name>.parquet` (the bundle's drift reference)."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    x_train, _, y_train, _ = train_test_split(x, data.target, test_size=0.3, random_state=seed, stratify=data.target)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x_train, y_train)
    onx = to_onnx(clf, x_train[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    import duckdb

    with duckdb.connect() as con:
        columns = {name.replace(" ", "_"): x_train[:, i] for i, name in enumerate(data.feature_names)}
        con.register("ref", columns)
        con.execute(f"COPY ref TO '{path.with_suffix('.parquet')}' (FORMAT parquet)")


def sample_rows(traffic: str) -> list[list[float]]:
    """The request rows: the model's held-out test split (realistic traffic, no drift), or one row repeated
    (`same-row`: every drift window of the prediction log drifts, the costliest case for the monitor)."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    if traffic == "same-row":
        picked = data.data[7:8]
    else:
        _, picked = train_test_split(data.data, test_size=0.3, random_state=0, stratify=data.target)
    return [[float(f"{v:.6g}") for v in row] for row in picked.astype(np.float32)]


def ort_session(model: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()  # the options Shepherd uses with its default [serving] config
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass
class Floor:
    us_per_call: float
    calls_per_s: float


def ort_floor(model: Path, row: list[float], seconds: float) -> Floor:
    """In-process session.run on one row, after warm-up: the median of 20 timed batches."""
    import numpy as np

    sess = ort_session(model)
    feed = {sess.get_inputs()[0].name: np.asarray([row], dtype=np.float32)}
    names = [o.name for o in sess.get_outputs()]
    run = sess.run
    for _ in range(2000):
        run(names, feed)
    t0 = time.perf_counter()
    for _ in range(2000):
        run(names, feed)
    per_batch = max(100, int(2000 * seconds / 20 / (time.perf_counter() - t0)))
    samples = []
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            run(names, feed)
        samples.append((time.perf_counter() - t0) / per_batch)
    us = statistics.median(samples) * 1e6
    return Floor(us, 1e6 / us)


# ------------------------------------------------------------------------------ helpers
def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([str(BIN / "shepherd"), *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"shepherd {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def ensure_mlserver_venv(venv: Path) -> Path:
    """The MLServer venv's `mlserver` executable; the venv is created (python3 -m venv + pip) on first use."""
    exe = venv / "bin" / "mlserver"
    probe = [str(venv / "bin" / "python"), "-c", "import mlserver, onnxruntime, httptools"]
    if exe.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return exe
    print(f"setting up MLServer's own virtual environment in {venv} (pip install {' '.join(MLSERVER_PACKAGES)}) ...", flush=True)
    if not (venv / "bin" / "python").exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *MLSERVER_PACKAGES], check=True)
    if not exe.exists():
        raise RuntimeError(f"pip installed mlserver but {exe} is missing")
    return exe


def venv_version(venv: Path, dist: str) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", f"from importlib.metadata import version; print(version({dist!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "-"


# ------------------------------------------------------------------------------ servers
class Target:
    """One server subprocess in its own session (so its CPU time and leftovers can be found)."""

    def __init__(self, name: str, tmp: Path, cpus: set[int] | None) -> None:
        self.name = name
        self.dir = tmp / f"{name}-{time.monotonic_ns()}"
        self.dir.mkdir()
        self.port = free_port()
        self.cpus = cpus
        self.path = "/echo"
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "server.log"
        self._log = None

    def url(self, path: str | None = None) -> str:
        return f"http://127.0.0.1:{self.port}{path or self.path}"

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self._log = open(self.log_path, "wb")
        cpus = self.cpus
        self.proc = subprocess.Popen(cmd, cwd=cwd or self.dir, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if http("GET", self.url("/v2/health/ready"), timeout=1)[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        return session_cpu_seconds(self.proc.pid)

    def log_tail(self, n: int = 40) -> str:
        if self._log:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # anything left in this server's own session
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self._log:
            self._log.close()


@dataclass
class Assets:
    tmp: Path
    models: list[Path]  # version 1, version 2 (ONNX)
    bundles: list[Path]  # the same as signed Shepherd bundles
    keys: Path
    rows: list[list[float]]  # request rows, sent in turn; rows[0] for the checks and the floor
    mlserver_venv: Path | None = None


def prepare(tmp: Path, need_shepherd: bool, traffic: str = "heldout") -> Assets:
    models = [tmp / "cancer-v1.onnx", tmp / "cancer-v2.onnx"]
    build_model(models[0], seed=0, c=1.0)
    build_model(models[1], seed=1, c=0.1)
    keys = tmp / "keys"
    bundles = []
    if need_shepherd:
        cli("keys", "generate", "--out", str(keys), "--name", "bench")
        for i, model in enumerate(models, 1):
            meta = tmp / f"cancer-v{i}.toml"
            meta.write_text(f'name = "{DEPLOYMENT}"\ndescription = "Breast-cancer logistic regression (benchmark model {i})."\n')
            bundle = tmp / f"cancer-v{i}.shb"
            cli("bundle", "create", "--model", str(model), "--metadata", str(meta), "--reference", str(model.with_suffix(".parquet")),
                "--sign-key", str(keys / "bench.key"), "-o", str(bundle))
            bundles.append(bundle)
    return Assets(tmp, models, bundles, keys, sample_rows(traffic))


def infer_body(row: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, len(row)], "data": row}]}).encode()


def start_shepherd(t: Target, assets: Assets, extra_serving: str = "", extra: str = "", pythonpath: str | None = None) -> str:
    """Start `shepherd serve` over a fresh data directory, deploy and promote version 1; return an admin token.

    `pythonpath`: a directory whose `shepherd` package the server runs instead of this checkout's (ab.py --tree).
    """
    cfg = t.dir / "shepherd.toml"
    cfg.write_text(
        f'[server]\nport = {t.port}\n[storage]\ndata_dir = "{t.dir / "data"}"\n[bundles]\ntrusted_keys_dir = "{assets.keys}"\n'
        f'[serving]\n{extra_serving}\n[logging]\nformat = "json"\n{extra}'
    )
    token = cli("token", "create", "--role", "admin", "--name", "bench", "--config", str(cfg)).strip()
    server_env = None if pythonpath is None else dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")])))
    t.spawn([str(BIN / "shepherd"), "serve", "--config", str(cfg), *sum((["--import", str(b)] for b in assets.bundles), [])], env=server_env)
    t.wait_ready()
    env = dict(os.environ, SHEPHERD_URL=t.url("/"), SHEPHERD_TOKEN=token)
    cli("deploy", DEPLOYMENT, DEPLOYMENT, "1", env=env)
    cli("promote", DEPLOYMENT, env=env)
    t.path = f"/v2/models/{DEPLOYMENT}/infer"
    t.headers["Authorization"] = f"Bearer {token}"
    return token


def start_mlserver(t: Target, assets: Assets) -> None:
    exe = ensure_mlserver_venv(assets.mlserver_venv)
    repo = t.dir / "models"
    (repo / DEPLOYMENT).mkdir(parents=True)
    settings = {
        "host": "127.0.0.1", "http_port": t.port, "grpc_port": free_port(), "parallel_workers": 0,
        "metrics_endpoint": None, "gzip_enabled": False, "debug": False, "load_models_at_startup": True,
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": DEPLOYMENT, "implementation": "_mlserver_onnx.OnnxRuntimeModel",
        "parameters": {"uri": str(assets.models[0]), "version": "1"},
    }
    (repo / DEPLOYMENT / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
    env["PYTHONPATH"] = str(HERE)
    t.spawn([str(exe), "start", str(repo)], env=env, cwd=t.dir)
    t.wait_ready()
    deadline = time.monotonic() + 60  # /v2/health/ready may answer before the model is loaded
    while http("GET", t.url(f"/v2/models/{DEPLOYMENT}/ready"), timeout=2)[0] != 200:
        if time.monotonic() > deadline or t.proc.poll() is not None:
            raise RuntimeError(f"mlserver never loaded the model:\n{t.log_tail()}")
        time.sleep(0.2)
    t.path = f"/v2/models/{DEPLOYMENT}/infer"


def start_echo(t: Target) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t.spawn([sys.executable, "-m", "uvicorn", "benchmarks.serving:make_echo_app", "--factory", "--host", "127.0.0.1",
             "--port", str(t.port), "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
            env=env, cwd=ROOT)
    t.wait_ready()
    t.path = "/echo"


def start(name: str, tmp: Path, assets: Assets, cpus: set[int] | None) -> Target:
    t = Target(name, tmp, cpus)
    try:
        if name == "shepherd":
            start_shepherd(t, assets)
        elif name == "shepherd-d0":
            start_shepherd(t, assets, "max_queue_delay_us = 0")
        elif name == "shepherd-nolog":
            start_shepherd(t, assets, extra="[monitoring]\nprediction_log = false\n")
        elif name == "mlserver":
            start_mlserver(t, assets)
        elif name == "echo":
            start_echo(t)
        else:
            raise ValueError(name)
    except Exception:
        t.stop()
        raise
    return t


def check_answer(t: Target, body: bytes, expected: list[float]) -> None:
    """One request before any load: the right answer (same probabilities as in-process ONNX Runtime), never an error page."""
    status, out = http("POST", t.url(), body, t.headers)
    if status != 200:
        raise RuntimeError(f"{t.name}: {status} {out[:500]!r}\n{t.log_tail()}")
    if t.name == "echo":
        if out != body:
            raise RuntimeError(f"echo returned {out[:200]!r}")
        return
    doc = json.loads(out)
    probs = next(o for o in doc["outputs"] if o["name"] == "probabilities")["data"]
    if len(probs) != len(expected) or any(abs(a - b) > 1e-5 for a, b in zip(probs, expected)):
        raise RuntimeError(f"{t.name}: probabilities {probs} != in-process ONNX Runtime {expected}")


# ------------------------------------------------------------------------------ load
def machine_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine so far (all CPUs, /proc/stat minus idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (at most max_wait s) until the machine, with our server idle, uses under `limit` CPU-s/s over 1 s; return the last reading."""
    start = time.monotonic()
    peak = 0.0
    while True:
        b0, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(1.0)
        busy = (machine_busy_seconds() - b0) / (time.monotonic() - t0)
        waited = time.monotonic() - start
        if busy <= limit or waited >= max_wait:
            if waited > 1.5:
                print(f"  (waited {waited:.0f} s for other processes to go quiet: up to {peak:.2f} CPU-s/s"
                      + (", still busy: measuring anyway)" if busy > limit else ")"), flush=True)
            return busy
        peak = max(peak, busy)


def children_seconds() -> float:
    """CPU seconds of this script's finished children (wrk runs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


_client_prefix: list[str] = []  # set by set_client(): taskset under --pin, the slice wrapper under --client-slice-us
_SLICE_EXEC = "import os, sys; from shepherd import sched; sched.set_thread_slice(int(sys.argv[1])); os.execvp(sys.argv[2], sys.argv[2:])"


def set_client(pin: bool, slice_us: int) -> str:
    """Set how wrk is started; returns the words for the report. `pin`: on CPU 1 alone. `slice_us`:
    with that time slice (shepherd.sched), so that on a machine where the client shares the CPUs
    with the server, the client's own wake-ups do not wait out the server's background bursts
    (benchmarks/README.md, "The client's share of the one-connection p99")."""
    _client_prefix[:] = ["taskset", "-c", "1"] if pin else []
    if not slice_us:
        return ""
    from shepherd import sched

    if sched.thread_slice_us() is None:
        raise SystemExit("--client-slice-us: this kernel has no per-thread time slice (Linux 6.12 or later is needed)")
    _client_prefix.extend([sys.executable, "-c", _SLICE_EXEC, str(slice_us)])
    return f"; wrk at a {slice_us} µs time slice"


def lua_script(path: Path, t: Target, bodies: list[bytes]) -> Path:
    """wrk script: POST the bodies in turn (each request pre-formatted once, in init)."""
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(bodies[0].decode())}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in t.headers.items()]
    if len(bodies) > 1:
        lines += [
            "local bodies = {" + ", ".join(json.dumps(b.decode()) for b in bodies) + "}",
            "local reqs, i = {}, 0",
            "init = function(args) for k, b in ipairs(bodies) do reqs[k] = wrk.format(nil, nil, nil, b) end end",
            "request = function() i = i % #reqs + 1 return reqs[i] end",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk_cmd(url: str, script: Path, seconds: float, connections: int) -> list[str]:
    return [*_client_prefix, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s", "-s", str(script), url]


def parse_wrk(out: str) -> Result:
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    total = int(re.search(r"^\s+(\d+) requests in", out, re.M).group(1))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # wrk prints no percentiles when no request completed (a server that stalls for the whole run)
    p50, p99 = (_ms(pct[k]) if k in pct else math.nan for k in ("50", "99"))
    return Result(rps=rps, p50_ms=p50, p99_ms=p99, requests=total, errors=errors)


def run_wrk(url: str, script: Path, seconds: float, connections: int) -> Result:
    return parse_wrk(subprocess.run(wrk_cmd(url, script, seconds, connections), capture_output=True, text=True, check=True).stdout)


# ------------------------------------------------------------------------------ rollback
_GAUGE = re.compile(r'^shepherd_deployment_swap_seconds\{([^}]*)\}\s+(\S+)$', re.M)


def swap_gauges(t: Target) -> dict[str, float]:
    status, out = http("GET", t.url("/metrics"), headers={"Authorization": t.headers["Authorization"]})
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    found = {}
    for labels, value in _GAUGE.findall(out.decode()):
        d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if d.get("deployment") == DEPLOYMENT and d.get("action") == "rollback":
            found[d["phase"]] = float(value)
    return found


_COUNTER = re.compile(r'^shepherd_inference_(batch_size|queue_seconds|compute_seconds)_(sum|count)\{([^}]*)\}\s+(\S+)$', re.M)


def batch_counters(t: Target) -> dict[str, float]:
    """Sums and counts of the batcher's histograms for the deployment's primary slot, from /metrics."""
    status, out = http("GET", t.url("/metrics"), headers={"Authorization": t.headers["Authorization"]})
    found: dict[str, float] = {}
    for metric, kind, labels, value in _COUNTER.findall(out.decode()):
        if f'deployment="{DEPLOYMENT}"' in labels and 'slot="primary"' in labels:
            found[f"{metric}_{kind}"] = found.get(f"{metric}_{kind}", 0.0) + float(value)
    return found


def batch_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = d.get("batch_size_count", 0.0)
    return {
        "rows_per_batch": d.get("batch_size_sum", 0.0) / batches if batches else float("nan"),
        "queue_ms": d.get("queue_seconds_sum", 0.0) / d["queue_seconds_count"] * 1e3 if d.get("queue_seconds_count") else float("nan"),
        "compute_ms_per_batch": d.get("compute_seconds_sum", 0.0) / batches * 1e3 if batches else float("nan"),
        "batches_per_s": batches,  # divided by the measured seconds by the caller
    }


@dataclass
class RollbackStats:
    label: str
    effective_s: list[float]
    durable_s: list[float]
    roundtrip_s: list[float]
    first_ok: int
    first_total: int
    load: Result | None = None


def measure_rollbacks(t: Target, body: bytes, count: int, label: str, gap: float) -> RollbackStats:
    admin = {"Authorization": t.headers["Authorization"]}
    stats = RollbackStats(label, [], [], [], 0, 0)
    for _ in range(count):
        status, out = http("GET", t.url(f"/api/v1/deployments/{DEPLOYMENT}"), headers=admin)
        slots = {s["slot"]: s["version"] for s in json.loads(out)["slots"]}
        before_previous = slots["previous"]
        t0 = time.perf_counter()
        status, out = http("POST", t.url(f"/api/v1/deployments/{DEPLOYMENT}/rollback"), b"", admin)
        stats.roundtrip_s.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"rollback answered {status}: {out[:300]!r}")
        rec = json.loads(out)
        status, answer = http("POST", t.url(), body, t.headers)  # the first request after the rollback answer
        stats.first_total += 1
        if status == 200 and json.loads(answer)["model_version"] == str(before_previous) and rec["primary"] == before_previous:
            stats.first_ok += 1
        g = swap_gauges(t)
        stats.effective_s.append(g["effective"])
        stats.durable_s.append(g["durable"])
        time.sleep(gap)
    return stats


def rollback_phase(tmp: Path, assets: Assets, body: bytes, count: int, cpus: set[int] | None) -> list[RollbackStats]:
    t = start("shepherd", tmp, assets, cpus)
    try:
        env = dict(os.environ, SHEPHERD_URL=t.url("/"), SHEPHERD_TOKEN=t.headers["Authorization"].split()[1])
        cli("deploy", DEPLOYMENT, DEPLOYMENT, "2", env=env)
        cli("promote", DEPLOYMENT, env=env)  # primary 2, previous 1, both warm
        idle = measure_rollbacks(t, body, count, "idle", 0.05)
        script = lua_script(tmp / "rollback.lua", t, [body])
        seconds = max(3.0, count * 0.25 + 2)
        wrk = subprocess.Popen(wrk_cmd(t.url(), script, seconds, 8), stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        loaded = measure_rollbacks(t, body, count, "under load (wrk, 8 connections)", 0.1)
        out, _ = wrk.communicate()
        loaded.load = parse_wrk(out)
        return [idle, loaded]
    finally:
        t.stop()


# ------------------------------------------------------------------------------ report
def fmt_ratio(ratios: list[float]) -> str:
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}x"
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def report(results: dict[tuple[str, int], list[Result]], targets: list[str], concurrencies: list[int], floor: Floor) -> tuple[str, list[str]]:
    agg = {k: median_result(v) for k, v in results.items()}
    rows = []
    for c in concurrencies:
        for name in targets:
            r = agg[name, c]
            cpu = r.cpu_s / r.seconds if r.seconds else float("nan")
            rows.append([str(c), name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{cpu:.2f}",
                         f"{1e6 / r.rps_per_cpu:,.0f}" if r.cpu_s else "-", str(r.errors)])
    out = [table(["conc", "target", "req/s", "p50 ms", "p99 ms", "server CPU s/s", "server CPU µs/req", "errors"], rows)]
    out.append(f"\nort floor (in-process session.run, 1 row): {floor.us_per_call:.1f} µs/call, {floor.calls_per_s:,.0f} calls/s")

    verdicts = []
    shepherds = [s for s in targets if s.startswith("shepherd")]
    head = ["conc"]
    for s in shepherds:
        if "mlserver" in targets:
            head += [f"{s}/mlserver req/s", f"{s} p99 vs mlserver"]
        if "echo" in targets:
            head.append(f"{s}/echo req/s")
    rows = []
    for c in concurrencies:
        row = [str(c)]
        for s in shepherds:
            for base in ("mlserver", "echo"):
                if base not in targets:
                    continue
                ratios = [a.rps / b.rps for a, b in zip(results[s, c], results[base, c])]
                row.append(fmt_ratio(ratios))
                med = statistics.median(ratios)
                if base == "mlserver":
                    p99_s, p99_m = agg[s, c].p99_ms, agg[base, c].p99_ms
                    row.append(f"{p99_s:.2f} vs {p99_m:.2f} ms")
                    ok = med >= 2.0 and p99_s <= p99_m
                    verdicts.append(f"c={c} {s}: {med:.2f}x MLServer's throughput, p99 {p99_s:.2f} vs {p99_m:.2f} ms: "
                                    f"{'MET' if ok else 'MISSED'} (target >= 2x at equal or better p99)")
                else:
                    verdicts.append(f"c={c} {s}: {med:.2f}x the echo ceiling: {'MET' if med >= 0.70 else 'MISSED'} (target >= 0.70)")
        rows.append(row)
    if "shepherd" in targets and "shepherd-nolog" in targets:
        head.append("shepherd/shepherd-nolog req/s")
        for c, row in zip(concurrencies, rows):
            ratios = [a.rps / b.rps for a, b in zip(results["shepherd", c], results["shepherd-nolog", c])]
            row.append(fmt_ratio(ratios))
            med = statistics.median(ratios)
            verdicts.append(f"c={c}: with the prediction log {med:.2f}x the throughput without it: "
                            f"{'MET' if med >= 0.90 else 'MISSED'} (target: logging costs < 10%)")
    if len(head) > 1:
        out.append("\nratios (median of per-round paired ratios, min-max in brackets):\n" + table(head, rows))
    return "\n".join(out), verdicts


def machine_info(assets: Assets, client: str) -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError, AttributeError):
        cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1)
    mem = "?"
    with contextlib.suppress(OSError, AttributeError):
        kb = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1))
        mem = f"{kb / 1024**2:.1f} GiB"
    pkgs = ", ".join(f"{p} {version(p)}" for p in ("shepherd", "litestar", "uvicorn", "uvloop", "httptools", "msgspec", "onnxruntime", "scikit-learn", "skl2onnx"))
    lines = [
        f"machine: {os.cpu_count()} CPUs ({cpu}), {mem} RAM, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}; {pkgs}",
    ]
    if assets.mlserver_venv is not None and (assets.mlserver_venv / "bin" / "mlserver").exists():
        v = assets.mlserver_venv
        lines.append("mlserver venv: " + ", ".join(f"{p} {venv_version(v, p)}" for p in ("mlserver", "fastapi", "uvicorn", "uvloop", "httptools", "onnxruntime")))
    lines.append(f"client: {client}")
    return lines


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per target per concurrency (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured load before each measurement (default 2)")
    ap.add_argument("--concurrency", default="1,8,32,64", help="comma list of keep-alive connection counts (default 1,8,32,64)")
    ap.add_argument("--rounds", type=int, default=2, help="repeat, rotating the target order; report medians (default 2)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help=f"comma list from {', '.join(TARGETS)} (default {DEFAULT_TARGETS})")
    ap.add_argument("--mlserver-venv", type=Path, default=DEFAULT_MLSERVER_VENV, help=f"MLServer's own venv, created on first use (default {DEFAULT_MLSERVER_VENV})")
    ap.add_argument("--rollbacks", type=int, default=20, help="rollbacks to time, idle and again under load (default 20; 0 skips)")
    ap.add_argument("--traffic", choices=["heldout", "same-row"], default="heldout",
                    help="request rows: the model's 171 held-out rows in turn (default), or one row repeated, which makes "
                         "every drift window drift (the monitor's worst case)")
    ap.add_argument("--pin", action="store_true", help="pin each server (and the ORT floor) to CPU 0 and wrk to CPU 1")
    ap.add_argument("--client-slice-us", type=int, default=0,
                    help="run wrk with this CPU time slice (Linux 6.12+; 0: the kernel's default): the client's wake-ups "
                         "then preempt the servers' background work instead of waiting out its bursts")
    ap.add_argument("--max-other-cpu", type=float, default=0.10,
                    help="flag a measurement during which other processes used more than this many CPU-s/s (default 0.10)")
    ap.add_argument("--quiet-wait", type=float, default=180.0,
                    help="before each measurement, wait up to this many seconds for other processes to go quiet (default 180)")
    ap.add_argument("--retries", type=int, default=2, help="measure again when other processes used CPU meanwhile (default 2)")
    ap.add_argument("--json", type=Path, help="also write raw per-round results here")
    args = ap.parse_args(argv)

    targets = [s.strip() for s in args.targets.split(",") if s.strip()]
    if unknown := set(targets) - set(TARGETS):
        ap.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not shutil.which("wrk"):
        print("error: wrk is needed as the load generator: apt-get install wrk", file=sys.stderr)
        return 2
    cpus = None
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            ap.error("--pin needs at least 2 CPUs")
        cpus = {0}
    client_note = set_client(args.pin, args.client_slice_us)

    raw: list[dict] = []
    results: dict[tuple[str, int], list[Result]] = {}
    batches: dict[tuple[str, int], list[dict[str, float]]] = collections.defaultdict(list)
    noisy: list[tuple[int, str, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="shepherd-serving-bench-") as tmp_name:
        tmp = Path(tmp_name)
        need_shepherd = any(t.startswith("shepherd") for t in targets) or args.rollbacks > 0
        assets = prepare(tmp, need_shepherd, args.traffic)
        if "mlserver" in targets:
            assets.mlserver_venv = args.mlserver_venv
            ensure_mlserver_venv(args.mlserver_venv)
        wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip() or "wrk"
        for line in machine_info(assets, wrk_v):
            print(line)
        print(f"load: wrk 1 thread, concurrency {concurrencies}, {args.warmup:g}s warmup + {args.seconds:g}s per target per "
              f"concurrency, {args.rounds} round(s)" + ("; servers pinned to CPU 0, wrk to CPU 1" if args.pin else "; no CPU pinning") + client_note + "\n",
              flush=True)

        bodies = [infer_body(row) for row in assets.rows]
        body = bodies[0]
        print(f"traffic: {args.traffic}, {len(bodies)} distinct request rows sent in turn\n", flush=True)
        sess = ort_session(assets.models[0])
        import numpy as np
        expected = sess.run(["probabilities"], {"X": np.asarray([assets.rows[0]], dtype=np.float32)})[0].ravel().tolist()
        del sess

        floors = []
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for name in order:
                t = start(name, tmp, assets, cpus)
                try:
                    check_answer(t, body, expected)
                    script = lua_script(t.dir / "load.lua", t, bodies)
                    for c in concurrencies:
                        shepherd = name.startswith("shepherd")
                        discarded_errors = 0  # errors of a measurement taken again still count
                        for attempt in range(args.retries + 1):
                            wait_quiet(args.max_other_cpu, args.quiet_wait)
                            if args.warmup > 0:
                                run_wrk(t.url(), script, args.warmup, c)
                            counters = batch_counters(t) if shepherd else {}
                            cpu0, t0, busy0, kids0 = t.cpu_seconds(), time.monotonic(), machine_busy_seconds(), children_seconds()
                            res = run_wrk(t.url(), script, args.seconds, c)
                            res.cpu_s, res.seconds = t.cpu_seconds() - cpu0, time.monotonic() - t0
                            # CPU used by anything but the server and wrk (other jobs on the machine): a noisy slot
                            other = (machine_busy_seconds() - busy0 - res.cpu_s - (children_seconds() - kids0)) / res.seconds
                            if other <= args.max_other_cpu:
                                break
                            discarded_errors += res.errors
                            print(f"  (other processes used {other:.2f} CPU-s/s during {name} c={c}"
                                  + ("; measuring again)" if attempt < args.retries else ")"), flush=True)
                        else:
                            noisy.append((rnd + 1, name, c, other))
                        res.errors += discarded_errors
                        if t.proc.poll() is not None:
                            raise RuntimeError(f"{name} died during the run:\n{t.log_tail()}")
                        batching = ""
                        if shepherd:  # what the batcher did, from Shepherd's own /metrics
                            b = batch_summary(counters, batch_counters(t))
                            b["batches_per_s"] /= res.seconds
                            batches[name, c].append(b)
                            batching = (f"  | {b['rows_per_batch']:.1f} rows/batch, {b['batches_per_s']:,.0f} batches/s, "
                                        f"queue {b['queue_ms']:.2f} ms, 'compute' {b['compute_ms_per_batch']:.3f} ms/batch")
                        results.setdefault((name, c), []).append(res)
                        raw.append({"round": rnd + 1, "target": name, "concurrency": c, **res.__dict__, "other_cpu": other,
                                    **({"batching": batches[name, c][-1]} if shepherd else {})})
                        print(f"round {rnd + 1} {name:<12} c={c:<3} {res.rps:>9,.0f} req/s  p50 {res.p50_ms:6.2f} ms  "
                              f"p99 {res.p99_ms:7.2f} ms  server CPU {res.cpu_s / res.seconds:.2f} s/s  other CPU {other:.2f} s/s  "
                              f"errors {res.errors}{batching}", flush=True)
                finally:
                    t.stop()
            # the compute floor, once per round, in this process (pinned like the servers under --pin)
            mask = os.sched_getaffinity(0)
            if cpus:
                os.sched_setaffinity(0, cpus)
            try:
                wait_quiet(args.max_other_cpu, args.quiet_wait)
                floors.append(ort_floor(assets.models[0], assets.rows[0], min(args.seconds, 5.0)))
            finally:
                os.sched_setaffinity(0, mask)
            print(f"round {rnd + 1} ort floor: {floors[-1].us_per_call:.1f} µs/call", flush=True)
        floor = Floor(statistics.median(f.us_per_call for f in floors), statistics.median(f.calls_per_s for f in floors))

        rollbacks = rollback_phase(tmp, assets, body, args.rollbacks, cpus) if args.rollbacks > 0 else []

    print()
    text, verdicts = report(results, targets, concurrencies, floor)
    print(text)
    if batches:
        rows = []
        for (name, c), bs in sorted(batches.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            med = {k: statistics.median(b[k] for b in bs) for k in bs[0]}
            rows.append([str(c), name, f"{med['rows_per_batch']:.1f}", f"{med['batches_per_s']:,.0f}", f"{med['queue_ms']:.2f}",
                         f"{med['compute_ms_per_batch']:.3f}"])
        print("\nShepherd's batcher, from its /metrics (medians over rounds; 'compute' is the batcher thread's time around "
              "session.run, GIL waits included):")
        print(table(["conc", "target", "rows/batch", "batches/s", "queue wait ms", "compute ms/batch"], rows))
    if verdicts:
        print("\ntargets:\n" + "\n".join("  " + v for v in verdicts))
    for rb in rollbacks:
        eff = sorted(x * 1e6 for x in rb.effective_s)
        dur = sorted(x * 1e3 for x in rb.durable_s)
        rt = sorted(x * 1e3 for x in rb.roundtrip_s)
        print(f"\nrollback {rb.label}, {len(eff)} rollbacks between versions 1 and 2 (both warm):")
        print(f"  effective (slots swapped, takes traffic): min {eff[0]:.1f} / median {statistics.median(eff):.1f} / max {eff[-1]:.1f} µs")
        print(f"  durable (committed to SQLite):            min {dur[0]:.2f} / median {statistics.median(dur):.2f} / max {dur[-1]:.2f} ms")
        print(f"  HTTP round trip of POST .../rollback:     min {rt[0]:.2f} / median {statistics.median(rt):.2f} / max {rt[-1]:.2f} ms")
        print(f"  first request after each rollback answered by the version that was previous: {rb.first_ok}/{rb.first_total}")
        if rb.load:
            print(f"  background load during the rollbacks: {rb.load.requests:,} requests, {rb.load.rps:,.0f} req/s, "
                  f"p99 {rb.load.p99_ms:.2f} ms, errors {rb.load.errors}")
        raw.append({"rollback": rb.label, "effective_s": rb.effective_s, "durable_s": rb.durable_s, "roundtrip_s": rb.roundtrip_s,
                    "first_ok": rb.first_ok, "first_total": rb.first_total, "load": rb.load.__dict__ if rb.load else None})
    if args.json:
        args.json.write_text(json.dumps({"runs": raw, "ort_floor_us": [f.us_per_call for f in floors]}, indent=2))
    bad = sum(r.errors for rs in results.values() for r in rs) + sum(rb.load.errors for rb in rollbacks if rb.load)
    failed_first = sum(rb.first_total - rb.first_ok for rb in rollbacks)
    if noisy:
        print(f"\nWARNING: other processes used CPU during {len(noisy)} measurement(s) (round, target, concurrency, CPU-s/s): "
              + ", ".join(f"({r}, {n}, {c}, {o:.2f})" for r, n, c, o in noisy) + "; rerun those figures on a quiet machine", file=sys.stderr)
    if bad:
        print(f"\nWARNING: {bad} non-2xx responses or socket errors; figures are suspect", file=sys.stderr)
    if failed_first:
        print(f"\nWARNING: {failed_first} first requests after a rollback were not answered by the previous version", file=sys.stderr)
    return 1 if bad or failed_first else 0


if __name__ == "__main__":
    sys.exit(main())
