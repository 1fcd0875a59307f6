"""Build dist/shepherd, the single-file executable (PyInstaller one-file, CPU dependencies).

Run with the dev venv's Python (`make exe` does): it creates build/freeze/venv, installs Shepherd
and the `freeze` extra there, pinned to the dev venv's exact versions (`pip freeze` as constraints),
and runs PyInstaller on packaging/freeze/shepherd.spec. The separate venv holds none of the dev-only
packages (scipy, pandas, scikit-learn, mlflow...), so no optional import can pull them in.
Needs the package index (or a pip configured for a local wheelhouse) on the first run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "freeze"
VENV_PY = WORK / "venv" / "bin" / "python"


def run(*cmd: str | Path) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dist", type=Path, default=ROOT / "dist", help="Where shepherd is written (default: dist/).")
    ap.add_argument("--clean", action="store_true", help="Drop PyInstaller's cached analysis first.")
    ap.add_argument("--uncompressed", action="store_true", help="Store the payload uncompressed: ~2.7x the size, ~2 s faster starts.")
    args = ap.parse_args()
    t0 = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    if not VENV_PY.exists():
        run(sys.executable, "-m", "venv", WORK / "venv")
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True)
    pins = [line for line in frozen.stdout.splitlines() if line and not line.lower().startswith(("shepherd", "-e "))]
    (WORK / "constraints.txt").write_text("\n".join(pins) + "\n")
    run(VENV_PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(VENV_PY, "-m", "pip", "install", "--quiet", "-c", WORK / "constraints.txt", ".[freeze]")
    t1 = time.monotonic()
    os.environ["SHEPHERD_FREEZE_COMPRESS"] = "0" if args.uncompressed else "1"
    run(
        VENV_PY, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN", *(["--clean"] if args.clean else []),
        "--distpath", args.dist, "--workpath", WORK / "work", ROOT / "packaging" / "freeze" / "shepherd.spec",
    )
    exe = args.dist / "shepherd"
    print(f"{exe}: {exe.stat().st_size / 2**20:.1f} MiB; venv {t1 - t0:.0f} s, PyInstaller {time.monotonic() - t1:.0f} s")


if __name__ == "__main__":
    main()
