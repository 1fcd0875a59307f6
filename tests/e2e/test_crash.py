"""SIGKILL during an import: after a restart the registry is consistent (whole version or nothing)."""

from __future__ import annotations

import hashlib
import random
import signal
import threading
import time
from pathlib import Path

import apsw
import httpx
import pytest

from tests.e2e.conftest import admin_token


def check_consistent(data_dir: Path) -> list[tuple[str, int]]:
    """Every registered file exists as a blob with the right digest, no blob is orphaned, tmp/ is empty."""
    conn = apsw.Connection(str(data_dir / "shepherd.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    versions = [(m, v) for m, v in conn.execute("SELECT m.name, v.version FROM versions v JOIN models m ON m.id = v.model_id ORDER BY 1, 2")]
    files = list(conn.execute("SELECT sha256, size FROM version_files"))
    by_model: dict[str, list[int]] = {}
    for m, v in versions:
        by_model.setdefault(m, []).append(v)
    for m, numbers in by_model.items():
        assert numbers == list(range(1, len(numbers) + 1)), f"{m}: gaps in {numbers}"
    for vid, n in conn.execute("SELECT v.id, count(f.path) FROM versions v LEFT JOIN version_files f ON f.version_id = v.id GROUP BY v.id"):
        assert n >= 2, f"version row {vid} has {n} files"
    conn.close()
    blobs = data_dir / "blobs"
    stored = {p.name for p in blobs.glob("??/*")}
    for sha, size in files:
        p = blobs / sha[:2] / sha
        assert p.is_file(), f"blob {sha} missing"
        assert p.stat().st_size == size and hashlib.sha256(p.read_bytes()).hexdigest() == sha
    assert stored == {sha for sha, _ in files}, "orphan blobs after recovery"
    assert list((data_dir / "tmp").iterdir()) == []
    assert list((blobs / ".tmp").iterdir()) == []
    return versions


@pytest.mark.parametrize("point, survives", [("verified", False), ("first_blob", False), ("blobs_stored", False), ("committed", True)])
def test_sigkill_at_each_import_step(server_config, start_server, make_bundle, point, survives):
    """A SIGKILL at any step of an import leaves, after restart, either the whole version or nothing."""
    cfg = server_config()
    token = admin_token(cfg)
    headers = {"Authorization": f"Bearer {token}"}
    data_dir = cfg.parent / "data"
    srv = start_server(cfg)
    httpx.post(srv.url + "/api/v1/bundles", content=make_bundle(bias=1.0).read_bytes(), headers=headers).raise_for_status()
    srv.stop()

    victim = make_bundle(bias=2.0).read_bytes()
    srv = start_server(cfg, env={"SHEPHERD_CRASH_AT": point})
    with pytest.raises(httpx.HTTPError):
        httpx.post(srv.url + "/api/v1/bundles", content=victim, headers=headers, timeout=30)
    assert srv.proc.wait(30) == -signal.SIGKILL

    srv = start_server(cfg)
    versions = check_consistent(data_dir)
    assert versions == ([("tiny", 1), ("tiny", 2)] if survives else [("tiny", 1)])
    # the same bundle imports cleanly afterwards (idempotent if it had committed)
    resp = httpx.post(srv.url + "/api/v1/bundles", content=victim, headers=headers)
    assert resp.status_code == (200 if survives else 201), resp.text
    assert resp.json()["version"]["version"] == 2
    srv.stop()
    check_consistent(data_dir)


def test_sigkill_at_random_moments_under_load(server_config, start_server, make_bundle):
    """Killing the server at random moments while bundles stream in never leaves a half version."""
    cfg = server_config()
    token = admin_token(cfg)
    headers = {"Authorization": f"Bearer {token}"}
    data_dir = cfg.parent / "data"
    bundles = [make_bundle(bias=float(i)).read_bytes() for i in range(30)]
    rng = random.Random(1234)
    for _ in range(3):
        srv = start_server(cfg)
        stop = threading.Event()

        def feed(srv=srv, stop=stop):
            while not stop.is_set():
                try:
                    httpx.post(srv.url + "/api/v1/bundles", content=rng.choice(bundles), headers=headers, timeout=10)
                except httpx.HTTPError:
                    return

        threads = [threading.Thread(target=feed) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.5))
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(30)
        stop.set()
        for t in threads:
            t.join(30)
        # recovery happens at start-up
        srv = start_server(cfg)
        srv.stop()
        versions = check_consistent(data_dir)
    assert versions, "the load never registered a version: the test exercised nothing"
