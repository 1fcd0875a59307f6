"""uvicorn vs granian serving the real Shepherd app, in one run on one machine.

    .venv/bin/python benchmarks/asgi.py [--seconds 10] [--warmup 2] [--connections 32] [--rounds 3] [--pin]

Each server runs as a subprocess on 127.0.0.1 with one worker, serving `create_app(load(None))`
over its own throwaway data directory:

  uvicorn        uvicorn CLI, --factory --loop uvloop --http httptools (the app runs in that process)
  granian        granian CLI, --factory --interface asgi --loop uvloop --workers 1
                 (the app runs in a spawned worker process, not in the granian main process)
  granian-embed  granian.server.embed.Server (experimental) in this script's own uvloop loop,
                 i.e. one process, the way `shepherd serve` embeds uvicorn.Server

Endpoints: GET /v2/health/ready (public, tiny JSON, no I/O) and GET /api/v1/models with a viewer
bearer token (guard + token cache + a SQLite read on the reader thread pool; empty registry).
All servers are started up front (idle ones cost nothing) and measured in turn, endpoint by
endpoint, rotating the order every round, so each comparison is between adjacent time slots:
small cloud VMs drift by tens of percent over minutes. The ratio columns are the median of the
per-round paired ratios, with their min-max.
The load generator is wrk when installed (`apt-get install wrk`), else a built-in asyncio
keep-alive client (much heavier; its numbers are client-bound on a small machine). Server CPU
seconds are read from /proc for the server's whole process session, so `req/CPU-s` includes
granian's Rust threads and its main process.

The module doubles as the app factory the servers import: `benchmarks.asgi:make_app`, with the
data directory in $SHEPHERD_BENCH_DATA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "SHEPHERD_BENCH_DATA"
SERVERS = ("uvicorn", "granian", "granian-embed")
ENDPOINTS = ("/v2/health/ready", "/api/v1/models")


# ------------------------------------------------------------------------------ app factory
def make_app():
    """Factory for `uvicorn --factory` / `granian --factory`: the real app over $SHEPHERD_BENCH_DATA."""
    from shepherd import log
    from shepherd.app import create_app
    from shepherd.config import load

    cfg = load(None)
    cfg.storage.data_dir = str(Path(os.environ[DATA_ENV]).resolve())
    log.configure("warning", "json")
    return create_app(cfg)


def serve_embedded(port: int) -> None:
    """Run granian's embeddable server inside this process's own uvloop event loop."""
    import uvloop
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    server = Server(make_app(), address="127.0.0.1", port=port, interface=Interfaces.ASGI, log_level=LogLevels.warning)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        await server.serve()

    uvloop.run(main())


# ------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(name: str, port: int) -> list[str]:
    py = sys.executable
    if name == "uvicorn":
        return [py, "-m", "uvicorn", "benchmarks.asgi:make_app", "--factory", "--host", "127.0.0.1", "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--lifespan", "on", "--no-access-log", "--log-level", "warning"]
    if name == "granian":
        return [py, "-m", "granian", "benchmarks.asgi:make_app", "--factory", "--interface", "asgi", "--loop", "uvloop",
                "--workers", "1", "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    if name == "granian-embed":
        return [py, str(Path(__file__).resolve()), "--serve-embedded", str(port)]
    raise ValueError(name)


def session_cpu_seconds(sid: int) -> float:
    """utime+stime of every live process in session `sid` (the server and any workers it forked)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # fields after "pid (comm) "
        if int(fields[3]) == sid:  # field 6: session id
            total += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return total / tick


class Server:
    def __init__(self, name: str, data_dir: Path, log_dir: Path, cpus: set[int] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        env = dict(os.environ, **{DATA_ENV: str(data_dir)})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(server_command(name, self.port), cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("/v2/health/ready"), timeout=1) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        return session_cpu_seconds(self.proc.pid)

    def log_tail(self, n: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # leftover workers of this server's own session
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------------------ load generators
@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_s: float = 0.0
    seconds: float = 0.0

    @property
    def rps_per_cpu(self) -> float:
        return self.requests / self.cpu_s if self.cpu_s else float("nan")


_client_prefix: list[str] = []  # ["taskset", "-c", "1"] under --pin

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, seconds: float, connections: int, threads: int, headers: dict[str, str]) -> Result:
    cmd = [*_client_prefix, "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    total = int(re.search(r"^\s+(\d+) requests in", out, re.M).group(1))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return Result(rps=rps, p50_ms=_ms(pct["50"]), p99_ms=_ms(pct["99"]), requests=total, errors=errors)


async def _py_load(host: str, port: int, path: str, seconds: float, connections: int, headers: dict[str, str]) -> Result:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def conn() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if not m:
                    raise RuntimeError(f"no content-length in {head!r}")
                await reader.readexactly(int(m.group(1)))
                latencies.append(time.perf_counter() - t0)
                if not head.startswith(b"HTTP/1.1 2"):
                    errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return Result(rps=len(latencies) / elapsed, p50_ms=q[49] * 1e3, p99_ms=q[98] * 1e3, requests=len(latencies), errors=errors)


def run_python(url: str, seconds: float, connections: int, threads: int, headers: dict[str, str]) -> Result:
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    coro = _py_load(m.group(1), int(m.group(2)), m.group(3), seconds, connections, headers)
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# ------------------------------------------------------------------------------ setup, report
def make_token(data_dir: Path) -> str:
    """A viewer token in the bench data directory, created before any server opens it."""
    from shepherd import log
    from shepherd.appliance import Appliance
    from shepherd.auth import create_token
    from shepherd.config import load

    log.configure("warning", "json")
    cfg = load(None)
    cfg.storage.data_dir = str(data_dir)
    appliance = Appliance(cfg)
    try:
        token, _ = create_token(appliance.db, role="viewer", name="bench", actor="bench")
    finally:
        appliance.close()
    return token


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine_info(client: str) -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1)
    mem = "?"
    with contextlib.suppress(OSError, AttributeError):
        kb = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1))
        mem = f"{kb / 1024**2:.1f} GiB"
    pkgs = ", ".join(f"{p} {version(p)}" for p in ("litestar", "uvicorn", "granian", "uvloop", "httptools", "msgspec"))
    if client == "wrk":
        wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip() or "wrk"
    else:
        wrk_v = "built-in asyncio client (wrk not found)"
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), {mem} RAM, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}; {pkgs}",
        f"client: {wrk_v}",
    ]


def median_result(rs: list[Result]) -> Result:
    med = statistics.median
    return Result(rps=med(r.rps for r in rs), p50_ms=med(r.p50_ms for r in rs), p99_ms=med(r.p99_ms for r in rs),
                  requests=sum(r.requests for r in rs), errors=sum(r.errors for r in rs),
                  cpu_s=sum(r.cpu_s for r in rs), seconds=sum(r.seconds for r in rs))


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def paired_ratio(a: list[Result], b: list[Result]) -> str:
    """Median and range of the per-round ratios a/b (round i of a was measured next to round i of b)."""
    ratios = [x.rps / y.rps for x, y in zip(a, b)]
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}x"
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def report(results: dict[tuple[str, str], list[Result]], servers: list[str]) -> str:
    agg = {k: median_result(v) for k, v in results.items()}
    base = servers[0]
    head = ["endpoint"]
    for s in servers:
        head.append(f"{s} req/s")
        if s != base:
            head.append(f"{s}/{base}")
    rows = []
    for ep in ENDPOINTS:
        row = [f"GET {ep}"]
        for s in servers:
            row.append(f"{agg[s, ep].rps:,.0f}")
            if s != base:
                row.append(paired_ratio(results[s, ep], results[base, ep]))
        rows.append(row)
    throughput = table(head, rows)
    head2 = ["endpoint", "server", "req/s", "p50 ms", "p99 ms", "server CPU s/s", "req per server CPU-s", "errors"]
    rows2 = []
    for ep in ENDPOINTS:
        for s in servers:
            r = agg[s, ep]
            rows2.append([f"GET {ep}", s, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                          f"{r.cpu_s / r.seconds:.2f}", f"{r.rps_per_cpu:,.0f}", str(r.errors)])
    return throughput + "\n\n" + table(head2, rows2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per server per endpoint (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured load before each measurement (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: keep the client light)")
    ap.add_argument("--rounds", type=int, default=3, help="repeat, rotating server order; report medians (default 3)")
    ap.add_argument("--servers", default=",".join(SERVERS), help=f"comma list, first is the baseline (default {','.join(SERVERS)})")
    ap.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--pin", action="store_true", help="pin the server to CPU 0 and the client to CPU 1")
    ap.add_argument("--json", type=Path, help="also write raw per-round results here")
    ap.add_argument("--serve-embedded", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.serve_embedded:
        serve_embedded(args.serve_embedded)
        return 0

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(servers) - set(SERVERS):
        ap.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    load = run_wrk if client == "wrk" else run_python
    if client == "python":
        print("note: wrk not found; the built-in Python client is likely the bottleneck (apt-get install wrk)", file=sys.stderr)

    server_cpus = None
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            ap.error("--pin needs at least 2 CPUs")
        server_cpus = {0}
        if client == "wrk":
            _client_prefix[:] = ["taskset", "-c", "1"]
        else:
            os.sched_setaffinity(0, {1})

    for line in machine_info(client):
        print(line)
    print(f"load: {args.connections} connections, {args.warmup:g}s warmup + {args.seconds:g}s per server per endpoint, "
          f"{args.rounds} round(s)" + ("; server pinned to CPU 0, client to CPU 1" if args.pin else "; no CPU pinning") + "\n",
          flush=True)

    results: dict[tuple[str, str], list[Result]] = {}
    raw: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="shepherd-bench-") as tmp, contextlib.ExitStack() as stack:
        running: dict[str, Server] = {}
        headers: dict[tuple[str, str], dict[str, str]] = {}
        for name in servers:  # start every server now; each has its own data directory and token
            data_dir = Path(tmp, f"data-{name}").resolve()
            data_dir.mkdir()
            token = make_token(data_dir)
            for ep in ENDPOINTS:
                headers[name, ep] = {"Authorization": f"Bearer {token}"} if ep.startswith("/api/") else {}
            srv = running[name] = Server(name, data_dir, Path(tmp), server_cpus)
            stack.callback(srv.stop)
        for name, srv in running.items():
            try:
                srv.wait_ready()
                for ep in ENDPOINTS:  # a correct answer first, so we never benchmark an error page
                    with urllib.request.urlopen(urllib.request.Request(srv.url(ep), headers=headers[name, ep]), timeout=5) as r:
                        json.loads(r.read())
            except Exception:
                print(f"--- {name} log ---\n{srv.log_tail()}", file=sys.stderr)
                raise
        for rnd in range(args.rounds):
            for ep in ENDPOINTS:
                order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
                for name in order:
                    srv = running[name]
                    if args.warmup > 0:
                        load(srv.url(ep), args.warmup, args.connections, args.threads, headers[name, ep])
                    cpu0, t0 = srv.cpu_seconds(), time.monotonic()
                    res = load(srv.url(ep), args.seconds, args.connections, args.threads, headers[name, ep])
                    res.cpu_s, res.seconds = srv.cpu_seconds() - cpu0, time.monotonic() - t0
                    if srv.proc.poll() is not None:
                        raise RuntimeError(f"{name} died during the run:\n{srv.log_tail()}")
                    results.setdefault((name, ep), []).append(res)
                    raw.append({"round": rnd + 1, "server": name, "endpoint": ep, **res.__dict__})
                    print(f"round {rnd + 1} {name:<13} GET {ep:<18} {res.rps:>9,.0f} req/s  p50 {res.p50_ms:6.2f} ms  "
                          f"p99 {res.p99_ms:6.2f} ms  server CPU {res.cpu_s / res.seconds:.2f} s/s  errors {res.errors}",
                          flush=True)

    print()
    print(report(results, servers))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    bad = sum(r.errors for rs in results.values() for r in rs)
    if bad:
        print(f"\nWARNING: {bad} non-2xx responses or socket errors; figures are suspect", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
