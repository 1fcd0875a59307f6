"""The single-file executable (dist/shepherd, `make exe`): it starts, imports the demo bundle, serves it,
computes drift windows (Numba kernels over DuckDB), and a second start loads the compiled kernels
from the persistent cache instead of compiling them again.

The executable is built once per run of this module when dist/shepherd is missing or older than any
source that goes into it (about 2.5 minutes on 2 cores, plus index downloads on the very first
build). SHEPHERD_EXE=/path/to/shepherd tests that file instead; SHEPHERD_FREEZE_BUILD=0 skips the
module rather than build.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, free_port
from tests.e2e.test_monitoring import infer, reference_rows
from tests.monitoring.test_monitor import _build_iris

ROOT = Path(__file__).resolve().parents[2]
DIST_EXE = ROOT / "dist" / "shepherd"
pytestmark = [pytest.mark.xdist_group("freeze"), pytest.mark.timeout(900)]


def _newest_input() -> float:
    """mtime of the newest file that goes into the executable."""
    files = [*(ROOT / "shepherd").rglob("*.py"), *(ROOT / "packaging" / "freeze").glob("*.*"), ROOT / "pyproject.toml"]
    return max(p.stat().st_mtime for p in files)


@pytest.fixture(scope="module")
def exe() -> Path:
    if os.environ.get("SHEPHERD_EXE"):
        path = Path(os.environ["SHEPHERD_EXE"]).resolve()
        assert path.is_file(), f"SHEPHERD_EXE={path} does not exist"
        return path
    if DIST_EXE.is_file() and DIST_EXE.stat().st_mtime >= _newest_input():
        return DIST_EXE
    if os.environ.get("SHEPHERD_FREEZE_BUILD") == "0":
        pytest.skip("dist/shepherd is missing or older than its sources and SHEPHERD_FREEZE_BUILD=0: run `make exe` first")
    subprocess.run([sys.executable, str(ROOT / "packaging" / "freeze" / "build.py")], check=True)
    return DIST_EXE


class Appliance:
    """`shepherd serve` of the executable, with its own config, data dir and Numba cache under tmp_path."""

    def __init__(self, exe: Path, tmp_path: Path, iris: Path) -> None:
        self.exe, self.tmp = exe, tmp_path
        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / "iris.toml").write_text("[drift]\nwindow_rows = 100\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "shepherd.toml"
        self.config.write_text(
            f'[server]\nport = {self.port}\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
            f'[bundles]\ntrusted_keys_dir = "{iris.parent / "keys"}"\n[auth]\ntoken_cache_seconds = 0\n'
            f'[monitoring]\nflush_interval_s = 0.1\ninterval_s = 0.2\npolicies_dir = "{policies}"\n'
        )
        self.numba_cache = tmp_path / "numba-cache"
        self.env = {**os.environ, "NUMBA_CACHE_DIR": str(self.numba_cache), "SHEPHERD_URL": self.url}
        self.token = self.cli("token", "create", "--role", "admin", "--config", str(self.config)).strip()
        self.env["SHEPHERD_TOKEN"] = self.token
        self.server: Server | None = None
        self.log = tmp_path / "serve.log"

    def cli(self, *args: str) -> str:
        res = subprocess.run([str(self.exe), *args], capture_output=True, text=True, env=self.env, cwd=self.tmp, timeout=120, check=False)
        assert res.returncode == 0, f"shepherd {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        return res.stdout

    def start(self, *args: str) -> None:
        self.server = Server(self.config, self.port, self.env, [str(self.exe)], args=args, cwd=self.tmp, log=self.log)
        self.server.wait_ready(timeout=120)

    def stop(self) -> int:
        assert self.server is not None
        return self.server.stop(timeout=60)

    def kernels_ready_seconds(self, count: int, timeout: float = 300) -> list[float]:
        """Seconds of each `drift_kernels_ready` event in the log, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [float(m) for m in re.findall(r'"seconds": ([0-9.]+), "event": "drift_kernels_ready"', self.log.read_text())]
            if len(found) >= count:
                return found
            assert "drift_kernels_warm_up_failed" not in self.log.read_text(), self.log.read_text()
            time.sleep(0.5)
        raise AssertionError(f"drift kernels not ready after {timeout} s:\n{self.log.read_text()}")


def test_single_file_executable_serves_the_demo_and_computes_drift(exe: Path, tmp_path: Path) -> None:
    """The executable imports, deploys and serves the demo bundle, turns 200 logged requests into two drift windows, and restarts with cached kernels."""
    iris = _build_iris(tmp_path / "demo")
    app = Appliance(exe, tmp_path, iris)
    assert app.token.startswith("shp_")
    try:
        app.start("--import", str(iris))
        app.cli("deploy", "iris", "iris", "1")
        app.cli("promote", "iris")
        answers = [infer(app.url, app.token, r) for r in reference_rows(iris, 100, 1)]
        answers += [infer(app.url, app.token, r + 3) for r in reference_rows(iris, 100, 2)]
        assert {a["model_version"] for a in answers} == {"1"}

        deadline = time.monotonic() + 300  # the first start compiles the kernels: ~40 s alone on 2 cores
        windows: list = []
        while time.monotonic() < deadline and len(windows) < 2:
            time.sleep(0.5)
            r = httpx.get(app.url + "/api/v1/deployments/iris/drift", headers={"Authorization": f"Bearer {app.token}"})
            assert r.status_code == 200, r.text
            windows = r.json()
        assert [w["drifted"] for w in windows[:2]] == [True, False], windows  # newest (shifted) first
        assert "petal_length" in app.cli("drift", "iris")
        (first,) = app.kernels_ready_seconds(1)
        assert "monitor_windows_failed" not in app.log.read_text() and "monitor_performance_failed" not in app.log.read_text(), app.log.read_text()
        assert app.stop() == 0
        assert list(app.numba_cache.rglob("kernels.*.nbi")), "no Numba cache files were written"

        app.start()  # a new extraction directory; the kernels come from NUMBA_CACHE_DIR
        _, second = app.kernels_ready_seconds(2)
        assert second < first / 3, (first, second)
        assert json.loads(app.cli("drift", "iris", "--json"))[:2] == windows[:2]
        assert app.stop() == 0
    finally:
        if app.server is not None and app.server.proc.poll() is None:
            app.server.proc.kill()
            app.server.proc.wait()
