"""End to end: the real `shepherd serve` on loopback, driven over HTTP and by the CLI."""

from __future__ import annotations

import os
import subprocess

import httpx
from click.testing import CliRunner

from shepherd import sched
from shepherd.cli import main
from tests.e2e.conftest import SHEPHERD, admin_token


def cli(url: str, token: str | None, *args: str) -> tuple[int, str]:
    env = {"SHEPHERD_URL": url, "SHEPHERD_TOKEN": token or ""}
    res = CliRunner().invoke(main, list(args), env=env)
    return res.exit_code, res.output


def test_serve_health_schema_and_registry_via_cli(server_config, start_server, make_bundle, tmp_path):
    """A started server answers health and /schema, and the CLI imports, lists, aliases, tags and renders cards."""
    cfg = server_config()
    token = admin_token(cfg)
    srv = start_server(cfg)
    assert httpx.get(srv.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(srv.url + "/v2/health/ready").json() == {"ready": True}
    assert cli(srv.url, None, "wait-ready", "--timeout", "5") == (0, "")
    schema = httpx.get(srv.url + "/schema/openapi.json").json()
    assert "/api/v1/bundles" in schema["paths"] and "/api/v1/models/{name}/aliases/{alias}" in schema["paths"]
    default_slice = sched.thread_slice_us()
    if default_slice is not None:  # Linux 6.12+: the event loop (the main thread) asks for serving.request_slice_us
        assert sched.thread_slice_us(srv.proc.pid) == 100
        threads = set()
        for tid in os.listdir(f"/proc/{srv.proc.pid}/task"):
            try:
                threads.add(sched.thread_slice_us(int(tid)))
            except ProcessLookupError:  # a thread that ended meanwhile
                pass
        assert default_slice in threads  # the background threads started before it keep the default

    bundle = make_bundle()
    code, out = cli(srv.url, token, "import", str(bundle))
    assert code == 0 and "imported: tiny version 1" in out
    code, out = cli(srv.url, token, "import", str(bundle))
    assert code == 0 and "already imported: tiny version 1" in out
    code, out = cli(srv.url, token, "import", str(make_bundle(bias=5.0)))
    assert "tiny version 2" in out

    assert cli(srv.url, token, "alias", "set", "tiny", "production", "1")[1].strip() == "tiny@production: None -> 1"
    assert cli(srv.url, token, "alias", "set", "tiny", "production", "2")[1].strip() == "tiny@production: 1 -> 2"
    code, out = cli(srv.url, token, "alias", "history", "tiny")
    assert code == 0 and out.count("production") == 2
    code, out = cli(srv.url, token, "tag", "set", "tiny", "1", "reviewed", "yes")
    assert code == 0
    # a key holding '/': the CLI sends it as %2F, which the server decodes before routing
    assert cli(srv.url, token, "tag", "set", "tiny", "1", "team/owner", "ml-ops")[0] == 0
    assert "team/owner=ml-ops" in cli(srv.url, token, "models", "versions", "tiny")[1]
    assert cli(srv.url, token, "tag", "delete", "tiny", "1", "team/owner")[0] == 0
    assert "team/owner" not in cli(srv.url, token, "models", "versions", "tiny")[1]
    code, out = cli(srv.url, token, "models", "archive", "tiny", "1")
    assert code == 0 and "archived" in out
    code, out = cli(srv.url, token, "models", "versions", "tiny")
    assert "archived" in out and "reviewed=yes" in out and "production" in out
    code, out = cli(srv.url, token, "models", "list")
    assert "production=2" in out
    code, out = cli(srv.url, token, "models", "card", "tiny", "production")
    assert out.startswith("# Model card: tiny v2") and "## Intended use" in out and "| auc | 0.95 |" in out
    code, out = cli(srv.url, token, "models", "card", "tiny", "2", "--format", "html")
    assert "<h1>Model card: tiny v2</h1>" in out
    code, out = cli(srv.url, token, "models", "show", "tiny", "production", "--json")
    assert '"version": 2' in out and '"dataset_digest"' in out
    code, out = cli(srv.url, token, "audit", "--action", "alias.")
    assert code == 0 and out.count("alias.set") == 2


def test_cli_errors_are_one_line(server_config, start_server, make_bundle):
    """CLI failures print a one-line error naming the problem and exit non-zero, never a traceback."""
    cfg = server_config()
    srv = start_server(cfg)
    code, out = cli(srv.url, None, "models", "list")
    assert code == 1 and out.startswith("error: missing bearer token")
    token = admin_token(cfg)
    code, out = cli(srv.url, token, "alias", "set", "nosuch", "production", "1")
    assert code == 1 and "model 'nosuch' does not exist" in out
    code, out = cli("http://127.0.0.1:1", token, "models", "list")
    assert code == 1 and "cannot reach Shepherd" in out
    assert "Traceback" not in out


def test_viewer_cannot_import(server_config, start_server, make_bundle):
    """`shepherd import` with a viewer token is refused with 403 and registers nothing."""
    cfg = server_config()
    viewer = subprocess.run([*SHEPHERD, "token", "create", "--role", "viewer", "--config", str(cfg)], capture_output=True, text=True, check=True).stdout.strip()
    srv = start_server(cfg)
    code, out = cli(srv.url, viewer, "import", str(make_bundle()))
    assert code == 1 and "operator" in out
    assert httpx.get(srv.url + "/api/v1/models", headers={"Authorization": f"Bearer {viewer}"}).json() == []


def test_bad_config_stops_start(server_config, start_server, tmp_path):
    """`shepherd serve` with an unknown key exits non-zero naming the key, without binding the port."""
    cfg = server_config()
    cfg.write_text(cfg.read_text() + "[server2]\nx = 1\n")
    srv = start_server(cfg, wait=False)
    assert srv.proc.wait(30) == 2
    assert "server2 = {'x': 1}: unknown setting" in srv.log.read_text()


def test_upload_is_streamed_and_bounded(server_config, start_server, make_bundle):
    """A body over bundles.max_bundle_bytes gets 413 and leaves nothing behind in tmp/."""
    cfg = server_config(max_bundle_bytes=4096)
    token = admin_token(cfg)
    srv = start_server(cfg)
    big = make_bundle().read_bytes() + b"\0" * 8192
    resp = httpx.post(srv.url + "/api/v1/bundles", content=big, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 413, resp.text
    data_dir = cfg.parent / "data"
    assert list((data_dir / "tmp").iterdir()) == []

    def chunks():
        for _ in range(8):
            yield b"\0" * 1024

    resp = httpx.post(srv.url + "/api/v1/bundles", content=chunks(), headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 413
    assert list((data_dir / "tmp").iterdir()) == []
