"""Start-up of the single-file executable (dist/shepherd) against the venv's `shepherd`, in one run.

For each: `serve` from process start until GET /v2/health/ready answers 200 (a fresh data dir
each time), cold (the files' pages dropped from the page cache first, with posix_fadvise: the
executable, or the venv's site-packages and the interpreter's stdlib) and warm (median of
--rounds, interleaved), then `shepherd --version` (median: what every CLI command pays before it starts).
Both run with the same, pre-filled NUMBA_CACHE_DIR, so the background kernel warm-up loads from
the cache in both. Each one-file run extracts itself into a new temporary directory.

    .venv/bin/python benchmarks/freeze_start.py [--exe dist/shepherd ...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evict(paths: list[Path]) -> None:
    """Drop these files' clean pages from the page cache (no root needed)."""
    for root in paths:
        for p in [root] if root.is_file() else (q for q in root.rglob("*") if q.is_file() and not q.is_symlink()):
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def serve_to_ready(cmd: list[str], work: Path, env: dict[str, str]) -> float:
    port = free_port()
    data = Path(tempfile.mkdtemp(dir=work))
    cfg = data / "shepherd.toml"
    cfg.write_text(f'[server]\nport = {port}\n[storage]\ndata_dir = "{data / "data"}"\n[logging]\nlevel = "warning"\n')
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "serve", "--config", str(cfg)], env=env, cwd=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(url, timeout=0.5).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def version_time(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--version"], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def run(work: Path, args: argparse.Namespace, exes: list[Path]) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(work / "numba-cache")}
    site = Path(sysconfig.get_paths(vars={"base": str(Path(args.venv_shepherd).parent.parent)})["purelib"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    variants = {
        "venv": ([str(args.venv_shepherd)], [site, stdlib, *Path(sys.base_prefix, "lib").glob("libpython*")]),
        **{_label(exe): ([str(exe)], [exe.parent if exe.parent.joinpath("_internal").is_dir() else exe]) for exe in exes},
    }
    names = list(variants)
    for name in names:  # fills the Numba cache and the page cache once, not measured
        serve_to_ready(variants[name][0], work, env)
    cold: dict[str, float] = {}
    for name in names:
        evict(variants[name][1])
        cold[name] = serve_to_ready(variants[name][0], work, env)
        print(f"{name}: cold {cold[name]:.2f} s", file=sys.stderr, flush=True)
    # Rounds interleave the variants (rotating the order), so drift in the machine's speed hits all alike.
    warm: dict[str, list[float]] = {n: [] for n in names}
    version: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            warm[name].append(serve_to_ready(variants[name][0], work, env))
            version[name].append(version_time(variants[name][0], env))
        print(f"round {r + 1}: " + ", ".join(f"{n} {warm[n][-1]:.2f} s" for n in names), file=sys.stderr, flush=True)

    print(f"\n{os.cpu_count()} CPUs; warm: median of {args.rounds} interleaved rounds; ratio: median (min-max) of the per-round ratios to the venv\n")
    print("| executable | size MiB | serve -> ready, cold s | serve -> ready, warm s | warm / venv | --version s |")
    print("|------------|----------|------------------------|------------------------|-------------|-------------|")
    for name in names:
        exe = next((e for e in exes if _label(e) == name), None)
        size = "" if exe is None else f"{_size(exe) / 2**20:.1f}"
        ratios = [w / v for w, v in zip(warm[name], warm["venv"])]
        ratio = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"| {name} | {size} | {cold[name]:.2f} | {statistics.median(warm[name]):.2f} | {ratio} | {statistics.median(version[name]):.2f} |")


def _label(exe: Path) -> str:
    try:
        return str(exe.relative_to(ROOT))
    except ValueError:
        return str(exe)


def _size(exe: Path) -> int:
    """The file's size, or the whole folder's for a one-folder build (an `_internal` beside it)."""
    if exe.parent.joinpath("_internal").is_dir():
        return sum(p.stat().st_size for p in exe.parent.rglob("*") if p.is_file() and not p.is_symlink())
    return exe.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exe", type=Path, action="append", help="Executable to compare with the venv (repeatable; default: dist/shepherd).")
    ap.add_argument("--venv-shepherd", type=Path, default=Path(sys.executable).parent / "shepherd")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    exes = [p.resolve() for p in args.exe or [ROOT / "dist" / "shepherd"]]
    for exe in exes:
        if not exe.is_file():
            raise SystemExit(f"{exe} not found: run `make exe` first")

    with tempfile.TemporaryDirectory(prefix="shepherd-freeze-bench-") as tmp:
        run(Path(tmp), args, exes)


if __name__ == "__main__":
    main()
