"""The real server as a subprocess on loopback, with its own config file and data directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

SHEPHERD = [sys.executable, "-m", "shepherd.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`<command> serve --config FILE [args]` as a subprocess, its output in `log` (appended: one
    file can hold several runs). `command` runs another shepherd than this checkout's."""

    def __init__(
        self, config_path: Path, port: int, env: dict[str, str] | None = None, command: list[str] = SHEPHERD,
        *, args: tuple[str, ...] = (), cwd: Path | None = None, log: Path | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log or config_path.parent / f"server-{port}-{time.monotonic_ns()}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*command, "serve", "--config", str(config_path), *args],
                env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready:\n{self.log.read_text()}")

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL after `timeout` s; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def server_config(tmp_path: Path, keys) -> Callable[..., Path]:
    """Factory: write a shepherd.toml for a server on a free port; returns its path."""

    def write(**bundles: object) -> Path:
        port = free_port()
        extra = "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in bundles.items())
        path = tmp_path / f"shepherd-{port}.toml"
        path.write_text(
            f'[server]\nport = {port}\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
            f'[bundles]\ntrusted_keys_dir = "{keys.trusted_dir}"\n{extra}[auth]\ntoken_cache_seconds = 0\n'
        )
        return path

    return write


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Factory: start `shepherd serve --config FILE` and wait until ready (or not, with wait=False).

    `command` runs another shepherd than this checkout's (an installed venv, a frozen binary)."""
    started: list[Server] = []

    def start(config_path: Path, *, env: dict[str, str] | None = None, wait: bool = True, command: list[str] = SHEPHERD) -> Server:
        port = int(config_path.read_text().split("port = ")[1].split("\n")[0])
        srv = Server(config_path, port, env, command)
        started.append(srv)
        if wait:
            srv.wait_ready()
        return srv

    yield start
    for s in started:
        s.stop()


def admin_token(config_path: Path) -> str:
    """Create an admin token with the CLI, exactly as an operator would."""
    out = subprocess.run([*SHEPHERD, "token", "create", "--role", "admin", "--config", str(config_path)], capture_output=True, text=True, check=True)
    return out.stdout.strip()
