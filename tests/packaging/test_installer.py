"""The offline installer: build the artifact, install it into a staging root with nothing fetched,
start the installed shepherd; then re-install (idempotent), upgrade, roll back, and refuse a
damaged artifact or an unusable wheelhouse without changing anything.

The artifact carries wheels for this interpreter only (`--python current`), which is what a CI
machine can check; the per-Python cross downloads use the same code path with platform tags.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import free_port, start_server  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.xdist_group("installer"), pytest.mark.timeout(900)]

# Any attempt to reach an index during an install goes to a dead proxy and fails.
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked artifact, built once per test session (worker): xdist may interleave other modules."""
    out = tmp_path_factory.mktemp("installer")
    subprocess.run([sys.executable, str(ROOT / "packaging" / "build_installer.py"), "--python", "current", "--out", str(out / "dist")], check=True)
    (tar_path,) = (out / "dist").glob("shepherd-*-linux_x86_64-offline.tar.gz")
    with tarfile.open(tar_path) as tar:
        tar.extractall(out, filter="data")
    (unpacked,) = out.glob("shepherd-*-offline")
    return unpacked


def install(artifact: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **OFFLINE}
    cmd = ["bash", str(artifact / "install.sh"), "--root", str(root), "--python", sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def set_version(version: str):
    def change(d: Path) -> None:
        build = json.loads((d / "BUILD.json").read_text())
        (d / "BUILD.json").write_text(json.dumps({**build, "version": version}))

    return change


def variant(artifact: Path, dest: Path, change) -> Path:
    """A copy of the artifact changed by `change(dir)`, with SHA256SUMS made to match again."""
    shutil.copytree(artifact, dest, symlinks=True)
    change(dest)
    files = sorted(p for p in dest.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    (dest / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(dest)}\n" for p in files))
    return dest


def snapshot(root: Path) -> dict[str, object]:
    """Everything under the staging root except the inside of venvs: kind, link target, content hash."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if "/venvs/" in rel and rel.count("/") > 3:
            continue
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", oct(p.stat().st_mode & 0o777))
        else:
            out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), oct(p.stat().st_mode & 0o777))
    return out


def test_artifact_contents(artifact: Path) -> None:
    build = json.loads((artifact / "BUILD.json").read_text())
    assert build["version"] and build["gpu"] is False
    assert build["pythons"] == [f"cp{sys.version_info.major}{sys.version_info.minor}"]
    wheels = {p.name.split("-")[0].lower() for p in (artifact / "wheelhouse").glob("*.whl")}
    for dep in ("shepherd", "numba", "llvmlite", "duckdb", "onnxruntime", "apsw", "litestar", "msgspec", "structlog", "pyarrow"):
        assert dep in wheels, dep
    assert not list((artifact / "wheelhouse").glob("*.tar.gz")), "an sdist would compile on the server"
    pins = (artifact / "constraints" / f"{build['pythons'][0]}.txt").read_text().split()
    assert all("==" in p for p in pins) and any(p.startswith("numba==") for p in pins)
    for f in ("install.sh", "config/shepherd.toml", "config/policies/default.toml", "systemd/shepherd.service", "systemd/shepherd.service.d/gpu.conf"):
        assert (artifact / f).is_file(), f
    listed = {line.split("  ", 1)[1] for line in (artifact / "SHA256SUMS").read_text().splitlines()}
    assert "install.sh" in listed and "BUILD.json" in listed and len(listed) == sum(1 for p in artifact.rglob("*") if p.is_file()) - 1


def test_install_offline_serve_reinstall_upgrade_rollback(artifact: Path, tmp_path: Path, keys, make_bundle, start_server) -> None:  # noqa: F811
    root = tmp_path / "root"
    res = install(artifact, root)
    assert res.returncode == 0, res.stdout + res.stderr
    version = json.loads((artifact / "BUILD.json").read_text())["version"]
    opt = root / "opt" / "shepherd"
    first = os.readlink(opt / "venv")
    assert first.startswith(f"venvs/{version}-") and (opt / first / ".shepherd-build").is_file()
    assert not (opt / "venv.previous").exists()
    assert os.readlink(root / "usr/local/bin/shepherd") == "/opt/shepherd/venv/bin/shepherd"
    etc = root / "etc" / "shepherd"
    assert (etc / "shepherd.toml").read_text() == (ROOT / "configs" / "shepherd.toml").read_text()
    assert (etc / "policies" / "default.toml").is_file() and (etc / "trusted_keys").is_dir()
    unit = (root / "etc/systemd/system/shepherd.service").read_text()
    assert "ExecStart=/opt/shepherd/venv/bin/shepherd serve --config /etc/shepherd/shepherd.toml" in unit
    assert not (root / "etc/systemd/system/shepherd.service.d/gpu.conf").exists(), "the gpu drop-in belongs to gpu artifacts only"
    for d in ("var/lib/shepherd", "var/log/shepherd", "var/cache/shepherd"):
        assert (root / d).stat().st_mode & 0o777 == 0o750, d

    # The installed code is the venv's own, not this checkout's.
    py = opt / "venv" / "bin" / "python"
    where = subprocess.run([str(py), "-c", "import shepherd; print(shepherd.__file__)"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(opt)), where.stdout

    # Start the installed shepherd on the installed config (only its data dir and port changed),
    # then import, deploy and serve a model through the installed CLI.
    port = free_port()
    cfg = etc / "shepherd.toml"
    cfg.write_text(cfg.read_text().replace('data_dir = "/var/lib/shepherd"', f'data_dir = "{root}/var/lib/shepherd"').replace("port = 8080", f"port = {port}", 1))
    shutil.copy(keys.trusted_dir / "release.pub", etc / "trusted_keys")
    shepherd = [str(opt / "venv" / "bin" / "shepherd")]
    token = subprocess.run([*shepherd, "token", "create", "--role", "admin", "--config", str(cfg)], capture_output=True, text=True, check=True).stdout.strip()
    cache = root / "var/cache/shepherd/numba"
    assert list(cache.rglob("*.nbi")), "install.sh pre-compiles the drift kernels"
    srv = start_server(cfg, command=shepherd, env={"NUMBA_CACHE_DIR": str(cache)})  # as the unit sets it
    env = {**os.environ, "SHEPHERD_URL": srv.url, "SHEPHERD_TOKEN": token}
    for cmd in (["import", str(make_bundle())], ["deploy", "d", "tiny", "1"], ["promote", "d"]):
        out = subprocess.run([*shepherd, *cmd], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
    r = httpx.post(srv.url + "/v2/models/d/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
    srv.stop()
    assert srv.proc.returncode == 0

    # Re-install: nothing changes, the operator's config is kept and the defaults go beside it.
    before = snapshot(root)
    res = install(artifact, root)
    assert res.returncode == 0 and "already holds this build" in res.stdout, res.stdout + res.stderr
    after = snapshot(root)
    assert after.pop("etc/shepherd/shepherd.toml.dist")[0] == "file"
    assert after == before

    # Upgrade: a new venv beside the old one, the old one kept as the rollback target; data and config stay.
    upgrade = variant(artifact, tmp_path / "upgrade", set_version("9.9.9"))
    res = install(upgrade, root)
    assert res.returncode == 0, res.stdout + res.stderr
    second = os.readlink(opt / "venv")
    assert second.startswith("venvs/9.9.9-") and os.readlink(opt / "venv.previous") == first
    assert (opt / first).is_dir() and f"port = {port}" in cfg.read_text()
    assert (root / "var/lib/shepherd/shepherd.sqlite").is_file()

    # Roll back, and forward again by re-installing (no rebuild).
    res = install(upgrade, root, "--rollback")
    assert res.returncode == 0, res.stderr
    assert os.readlink(opt / "venv") == first and os.readlink(opt / "venv.previous") == second
    res = install(upgrade, root)
    assert res.returncode == 0 and "already holds this build" in res.stdout
    assert os.readlink(opt / "venv") == second and os.readlink(opt / "venv.previous") == first

    # A damaged artifact is refused before anything changes.
    before = snapshot(root)
    damaged = tmp_path / "damaged"
    shutil.copytree(artifact, damaged)
    numba_whl = next((damaged / "wheelhouse").glob("numba-*.whl"))
    numba_whl.write_bytes(numba_whl.read_bytes()[:-1] + b"x")
    res = install(damaged, root)
    assert res.returncode == 1 and "the artifact is damaged" in res.stderr and "numba" in res.stderr, res.stderr
    assert snapshot(root) == before

    # A wheelhouse pip cannot satisfy (offline, nothing to fetch) fails and leaves no half-built venv.
    def without_duckdb(d: Path) -> None:
        set_version("9.9.10")(d)
        for whl in (d / "wheelhouse").glob("duckdb-*.whl"):
            whl.unlink()

    broken = variant(artifact, tmp_path / "broken", without_duckdb)
    res = install(broken, root)
    assert res.returncode == 1 and "pip could not install from the wheelhouse" in res.stderr, res.stdout + res.stderr
    assert "duckdb" in res.stderr
    assert snapshot(root) == before


def test_refuses_a_python_the_artifact_has_no_wheels_for(artifact: Path, tmp_path: Path) -> None:
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    other = variant(artifact, tmp_path / "other", lambda d: (d / "constraints" / f"{tag}.txt").rename(d / "constraints" / "cp399.txt"))
    root = tmp_path / "root"
    res = install(other, root)
    assert res.returncode == 1 and f"carries wheels for cp399 but '{sys.executable}' is {tag}" in res.stderr, res.stderr
    assert not (root / "opt").exists()


def test_rollback_without_a_previous_venv_is_refused(artifact: Path, tmp_path: Path) -> None:
    res = install(artifact, tmp_path / "root", "--rollback")
    assert res.returncode == 1 and "nothing to roll back to" in res.stderr
