"""Online backup while the server takes writes, then restore into a new data directory, and a corrupt backup refused."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import apsw
import duckdb
import httpx

from tests.e2e.conftest import SHEPHERD, admin_token, free_port
from tests.e2e.test_server import cli

INFER = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}


def sqlite_rows(path: Path, sql: str) -> list[tuple]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def test_backup_under_writes_restores_a_consistent_prefix(server_config, start_server, make_bundle, tmp_path):
    """A backup taken during imports, audited changes and inference restores to a state that is a prefix of the live one."""
    cfg = server_config()
    token = admin_token(cfg)
    srv = start_server(cfg)
    assert cli(srv.url, token, "import", str(make_bundle(bias=1.0)))[0] == 0
    assert cli(srv.url, token, "deploy", "d", "tiny", "1")[0] == 0
    assert cli(srv.url, token, "promote", "d")[0] == 0
    done = threading.Event()
    errors: list[str] = []

    def infer() -> None:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}) as c:
            while not done.is_set():
                if c.post("/v2/models/d/infer", json=INFER).status_code != 200:
                    errors.append("infer")

    def tags() -> None:
        i = 0
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}) as c:
            while not done.is_set():
                i += 1
                if c.put(f"/api/v1/models/tiny/versions/1/tags/k{i % 50}", json={"value": str(i)}).status_code != 200:
                    errors.append("tag")

    workers = [threading.Thread(target=infer), threading.Thread(target=tags)]
    for w in workers:
        w.start()
    bundles = [make_bundle(bias=b) for b in (2.0, 3.0)]
    assert cli(srv.url, token, "import", str(bundles[0]))[0] == 0
    dest = tmp_path / "backup"
    code, out = cli(srv.url, token, "backup", str(dest))
    assert code == 0, out
    assert cli(srv.url, token, "import", str(bundles[1]))[0] == 0
    done.set()
    for w in workers:
        w.join()
    assert errors == []
    live = tmp_path / "data"
    srv.proc.terminate()
    assert srv.proc.wait(30) == 0

    restored = tmp_path / "restored"
    cfg2 = tmp_path / "restored.toml"
    port = free_port()
    old_port = srv.url.rsplit(":", 1)[1]
    cfg2.write_text(cfg.read_text().replace(f"port = {old_port}", f"port = {port}").replace(str(live), str(restored)))
    res = subprocess.run([*SHEPHERD, "restore", str(dest), "--config", str(cfg2)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr

    audit_live = sqlite_rows(live / "shepherd.sqlite", "SELECT * FROM audit ORDER BY id")
    audit_back = sqlite_rows(restored / "shepherd.sqlite", "SELECT * FROM audit ORDER BY id")
    assert 0 < len(audit_back) < len(audit_live) and audit_back == audit_live[: len(audit_back)]
    versions = sqlite_rows(restored / "shepherd.sqlite", "SELECT version FROM versions ORDER BY version")
    assert versions == [(1,), (2,)], "the import finished before the backup is in it, the one after is not"
    assert sqlite_rows(restored / "shepherd.sqlite", "SELECT name, primary_version FROM deployments") == [("d", 1)]
    with duckdb.connect(str(live / "events.duckdb"), read_only=True) as con:
        live_log = con.execute("SELECT seq, request_id FROM predictions ORDER BY seq").fetchall()
    with duckdb.connect(str(restored / "events.duckdb"), read_only=True) as con:
        back_log = con.execute("SELECT seq, request_id FROM predictions ORDER BY seq").fetchall()
    assert 0 < len(back_log) <= len(live_log) and back_log == live_log[: len(back_log)]

    srv2 = start_server(cfg2)
    r = httpx.post(f"{srv2.url}/v2/models/d/infer", json=INFER, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["model_version"] == "1"


def test_corrupt_backup_is_refused_before_anything_is_written(server_config, start_server, make_bundle, tmp_path):
    """A backup whose blob no longer matches the manifest is refused and the target directory stays empty."""
    cfg = server_config()
    token = admin_token(cfg)
    srv = start_server(cfg)
    assert cli(srv.url, token, "import", str(make_bundle()))[0] == 0
    dest = tmp_path / "backup"
    assert cli(srv.url, token, "backup", str(dest))[0] == 0
    code, out = cli(srv.url, token, "backup", str(dest))
    assert code != 0 and "not empty" in out
    srv.proc.terminate()
    srv.proc.wait(30)
    blob = next(p for p in (dest / "blobs").rglob("*") if p.is_file())
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    target = tmp_path / "fresh"
    cfg2 = tmp_path / "fresh.toml"
    cfg2.write_text(f'[storage]\ndata_dir = "{target}"\n')
    res = subprocess.run([*SHEPHERD, "restore", str(dest), "--config", str(cfg2)], capture_output=True, text=True)
    assert res.returncode != 0 and "corrupt" in res.stderr
    assert not target.exists() or [p.name for p in target.iterdir()] in ([], [".lock"])
