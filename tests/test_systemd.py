"""The systemd unit and its GPU drop-in pass `systemd-analyze verify` with no warning."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (.ci/run installs it)")
def test_unit_verifies_cleanly(tmp_path):
    """`systemd-analyze verify` accepts shepherd.service with gpu.conf, printing nothing (an unknown key would warn)."""
    unit = (ROOT / "systemd" / "shepherd.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "MemoryDenyWriteExecute=false" in unit
    # verify checks that ExecStart's binary exists: point it at this checkout's shepherd
    exe = Path(sys.executable).parent / "shepherd"
    (tmp_path / "shepherd.service").write_text(unit.replace("/opt/shepherd/venv/bin/shepherd", str(exe)))
    shutil.copytree(ROOT / "systemd" / "shepherd.service.d", tmp_path / "shepherd.service.d")
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "shepherd.service")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr
