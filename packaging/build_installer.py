"""Build the offline installer: one tar.gz that installs Shepherd on a server with no internet.

    python packaging/build_installer.py                    # CPU, for every supported Python
    python packaging/build_installer.py --gpu --extra-index-url https://pypi.nvidia.com
                                                           # + onnxruntime-gpu and TensorRT
    python packaging/build_installer.py --python current   # only this interpreter (what the tests use)

The artifact, `dist/shepherd-<version>-linux_x86_64[-gpu]-offline.tar.gz`, holds:

    shepherd-<version>-offline/
        install.sh                    the installer (packaging/install.sh): see its --help
        wheelhouse/*.whl              the shepherd wheel and every runtime dependency, as wheels
        constraints/cp3XX.txt         the exact versions resolved for each Python, so every install
                                      of this artifact gets the same set
        config/shepherd.toml          the default config (configs/shepherd.toml)
        config/policies/default.toml  the default monitoring policy
        systemd/shepherd.service      the unit, and systemd/shepherd.service.d/gpu.conf
        BUILD.json                    version, Pythons, platform, gpu, build time
        SHA256SUMS                    sha256 of every file above; install.sh checks it first

Building needs the package registry: pip downloads binary wheels for the target platform
(manylinux, glibc <= --glibc) and each Python, so an install never compiles anything. --gpu also
needs NVIDIA's index: TensorRT's libraries are published there; PyPI has only source packages that
fetch them from it at install time. Installing needs nothing but the artifact and a python3 of a
supported version.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
"""Every Python the artifact carries wheels for by default (pyproject: requires-python >= 3.11)."""
DEFAULT_GLIBC = "2.28"
"""Oldest glibc the wheels may need: RHEL/Rocky 8, Debian 10, Ubuntu 18.10 and later."""


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def platform_tags(glibc: str) -> list[str]:
    """manylinux tags a server with this glibc accepts, newest first (pip takes the best match)."""
    major, minor = (int(p) for p in glibc.split("."))
    if major != 2 or minor < 17:
        raise SystemExit(f"--glibc: {glibc!r} is not a glibc version >= 2.17 (manylinux2014)")
    tags = [f"manylinux_2_{m}_x86_64" for m in range(minor, 4, -1)]
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def requirement(wheel: Path, gpu: bool) -> str:
    extra = "[gpu]" if gpu else ""
    return f"shepherd{extra} @ {wheel.resolve().as_uri()}"


EXTRA_INDEXES: list[str] = []
"""--extra-index-url values, passed to every resolving pip call (NVIDIA's index for --gpu)."""


def pip(*args: str, python: str = sys.executable) -> None:
    cmd = [python, "-m", "pip", *args]
    if args[0] in ("wheel", "download"):
        for url in EXTRA_INDEXES:
            cmd += ["--extra-index-url", url]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def build_wheel(dest: Path) -> Path:
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(ROOT))
    (wheel,) = dest.glob("shepherd-*.whl")
    return wheel


def build_pure_wheels(req: str, dest: Path) -> None:
    """Wheels for dependencies published only as source (TensorRT's meta-packages `tensorrt` and
    `tensorrt-cu1X` are sdists that only declare their binary `-libs`/`-bindings` wheels).

    `pip wheel` resolves the whole set for this interpreter, building what has no wheel; the pure
    wheels (`*-none-any`) it leaves serve every target Python, so the per-Python downloads below
    can insist on binaries. A dependency that must be compiled has no pure wheel, and its download
    then fails naming it: the artifact never carries something that would compile on the server.
    """
    built = dest.parent / "host-wheels"
    pip("wheel", "--quiet", "--wheel-dir", str(built), req)
    dest.mkdir(parents=True, exist_ok=True)
    for whl in built.glob("*-none-any.whl"):
        shutil.move(whl, dest / whl.name)
    shutil.rmtree(built)


def download(req: str, dest: Path, python: str, glibc: str, find_links: Path) -> None:
    """Resolve and fetch binary wheels for one Python; `current` resolves for this interpreter."""
    args = ["download", "--quiet", "--only-binary=:all:", "--find-links", str(find_links), "--dest", str(dest)]
    if python != "current":
        abi = "cp" + python.replace(".", "")
        args += ["--python-version", python, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
        for tag in platform_tags(glibc):
            args += ["--platform", tag]
    pip(*args, req)


_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def pins(wheel_dir: Path) -> list[str]:
    """`name==version` for every wheel pip resolved (wheel file names are normalised, PEP 427)."""
    out = []
    for whl in sorted(wheel_dir.glob("*.whl")):
        m = _WHEEL.match(whl.name)
        if not m:
            raise SystemExit(f"unexpected wheel file name {whl.name!r}")
        out.append(f"{m['name'].replace('_', '-').lower()}=={m['version']}")
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(out_dir: Path, pythons: list[str], gpu: bool, glibc: str) -> Path:
    version = project_version()
    name = f"shepherd-{version}-offline"
    artifact = out_dir / f"shepherd-{version}-linux_x86_64{'-gpu' if gpu else ''}-offline.tar.gz"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shepherd-installer-") as tmp:
        stage = Path(tmp) / name
        wheelhouse = stage / "wheelhouse"
        wheelhouse.mkdir(parents=True)
        (stage / "constraints").mkdir()
        wheel = build_wheel(Path(tmp) / "wheel")
        pure = Path(tmp) / "pure"
        build_pure_wheels(requirement(wheel, gpu), pure)
        tags = []
        for py in pythons:
            tag = f"cp{sys.version_info.major}{sys.version_info.minor}" if py == "current" else "cp" + py.replace(".", "")
            tags.append(tag)
            got = Path(tmp) / f"download-{tag}"
            download(requirement(wheel, gpu), got, py, glibc, pure)
            (stage / "constraints" / f"{tag}.txt").write_text("\n".join(pins(got)) + "\n")
            for whl in got.glob("*.whl"):
                if not (wheelhouse / whl.name).exists():
                    shutil.move(whl, wheelhouse / whl.name)
        shutil.copy2(ROOT / "packaging" / "install.sh", stage / "install.sh")
        (stage / "install.sh").chmod(0o755)
        (stage / "config" / "policies").mkdir(parents=True)
        shutil.copy2(ROOT / "configs" / "shepherd.toml", stage / "config" / "shepherd.toml")
        for policy in (ROOT / "configs" / "policies").glob("*.toml"):
            shutil.copy2(policy, stage / "config" / "policies" / policy.name)
        shutil.copytree(ROOT / "systemd", stage / "systemd")
        build_info = {
            "name": "shepherd",
            "version": version,
            "pythons": tags,
            "platform": f"manylinux_{glibc.replace('.', '_')}_x86_64",
            "gpu": gpu,
            "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (stage / "BUILD.json").write_text(json.dumps(build_info, indent=2) + "\n")
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        (stage / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.relative_to(stage)}\n" for p in files))
        tmp_artifact = artifact.with_name(artifact.name + ".part")
        with tarfile.open(tmp_artifact, "w:gz", compresslevel=1) as tar:  # wheels are zips already
            tar.add(stage, arcname=name)
        os.replace(tmp_artifact, artifact)
    size = artifact.stat().st_size
    print(f"{artifact} ({size / 2**20:.0f} MiB; Pythons {', '.join(tags)}; gpu={gpu})")
    return artifact


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="directory for the artifact (default: dist/)")
    ap.add_argument("--gpu", action="store_true", help="include the gpu extra (onnxruntime-gpu, TensorRT)")
    ap.add_argument(
        "--python",
        action="append",
        metavar="X.Y|current",
        help=f"a Python to carry wheels for; repeatable (default: {' '.join(SUPPORTED_PYTHONS)}); 'current' = this interpreter",
    )
    ap.add_argument(
        "--extra-index-url",
        action="append",
        default=[],
        metavar="URL",
        help="another package index to resolve from; --gpu needs NVIDIA's (https://pypi.nvidia.com): "
        "TensorRT's libraries are not on PyPI",
    )
    ap.add_argument("--glibc", default=DEFAULT_GLIBC, help=f"oldest glibc of the target servers (default {DEFAULT_GLIBC})")
    args = ap.parse_args(argv)
    pythons = args.python or list(SUPPORTED_PYTHONS)
    EXTRA_INDEXES.extend(args.extra_index_url)
    for py in pythons:
        if py != "current" and py not in SUPPORTED_PYTHONS:
            ap.error(f"--python: {py!r} is not a supported Python ({', '.join(SUPPORTED_PYTHONS)}, or current)")
    build(args.out, pythons, args.gpu, args.glibc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
