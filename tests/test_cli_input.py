"""The CLI answers bad input with one line naming what is wrong, never a traceback (found by trying every command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shepherd import cli
from shepherd.client import Client


def _run(*args: str, stdin: str | None = None):
    result = CliRunner().invoke(cli.main, list(args), input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def paths(monkeypatch) -> list[str]:
    """Requests the CLI would send: (method and) path, answered with an empty object."""
    sent: list[str] = []

    def fake(self: Client, method: str, path: str, **kw: Any) -> Any:
        sent.append(path)
        return {"model": {"latest_version": 1}, "accepted": 1, "replaced": 0, "unknown": []}

    monkeypatch.setattr(Client, "request", fake)
    return sent


def test_names_and_keys_stay_one_path_segment(paths):
    """'?', '#', '%' and '/' inside a name or key are escaped: they cannot end the path early or reach another endpoint."""
    _run("models", "show", "a?b=c", "1", "--json")
    _run("tag", "delete", "m#x", "1", "team/owner", "--json")
    assert paths == ["/api/v1/models/a%3Fb%3Dc/versions/1", "/api/v1/models/m%23x/versions/1/tags/team%2Fowner"]


@pytest.mark.parametrize("args", [["models", "show", ""], ["deployments", " "], ["promote", ""], ["runs", "show", ""]])
def test_an_empty_name_is_refused_naming_the_argument(paths, args):
    r = _run(*args)
    assert r.exit_code == 2 and "must not be empty" in r.output, r.output
    assert paths == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "list", "--url", "http://[::1"], "--url"),
        (["models", "list", "--url", "notaurl"], "--url"),
        (["models", "list", "--token", "tok\u00e9n"], "--token"),
        (["feedback", "--id", "r", "--label", "nan"], "--label"),
    ],
)
def test_bad_options_are_one_line_naming_the_option(args, message):
    r = _run(*args)
    assert r.exit_code == 1 and r.output.startswith("error: ") and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_bad_feedback_file_names_its_line_and_refuses_nan(paths, tmp_path: Path):
    f = tmp_path / "labels.jsonl"
    f.write_text('{"request_id": "a", "label": 1}\n{"request_id": "b", "label": NaN}\n')
    r = _run("feedback", str(f))
    assert r.exit_code == 1 and "line 2" in r.output and "NaN" in r.output, r.output
    f.write_bytes(b'{"request_id": "a", "label": 1}\n\xff\n')
    r = _run("feedback", str(f))
    assert r.exit_code == 1 and "UTF-8" in r.output, r.output
    assert paths == []


def test_file_system_errors_are_one_line_naming_the_path(tmp_path: Path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    r = _run("keys", "generate", "--out", str(afile), "--name", "k")
    assert r.exit_code == 1 and r.output.startswith("error: ") and str(afile) in r.output, r.output
    for name in ("", "../escape", "a/b"):
        r = _run("keys", "generate", "--out", str(tmp_path), "--name", name)
        assert r.exit_code == 2 and "--name" in r.output, r.output
    r = _run("check-config", str(tmp_path))
    assert r.exit_code == 2 and "cannot be read" in r.output, r.output


@pytest.fixture
def not_shepherd():
    """The URL of a server on loopback that answers every GET with 200 and an HTML page (a proxy's, say)."""
    import http.server
    import threading

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>proxy</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def test_wait_ready_takes_only_shepherds_answer(not_shepherd):
    """A server on the port that answers 200 but is not Shepherd is not taken for Shepherd ready;
    the timeout names the last answer. A bad --url is named at once."""
    r = _run("wait-ready", "--url", not_shepherd, "--timeout", "0.5")
    assert r.exit_code == 1 and "was not ready" in r.output and "proxy" in r.output, r.output
    r = _run("wait-ready", "--url", "ftp://example", "--timeout", "0.5")
    assert r.exit_code == 1 and "--url" in r.output and len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize("as_json", [False, True])
def test_an_export_from_a_server_that_is_not_shepherd_writes_nothing(not_shepherd, tmp_path: Path, as_json: bool):
    """`predictions export` against a server that answers 200 with something other than Parquet
    (a proxy's page) says so in one line and leaves no file, instead of saving the page as the export."""
    dest = tmp_path / "out.parquet"
    r = _run("predictions", "export", "iris", str(dest), "--url", not_shepherd, "--token", "t", *(["--json"] if as_json else []))
    assert r.exit_code == 1 and r.output.startswith("error: ") and "text/html" in r.output and "not Parquet" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_server_error_is_one_line_that_names_the_field_to_blame(monkeypatch, tmp_path: Path):
    """A 400 whose body names a `field` prints it in front of the message (a batch of thousands of labels says which
    one), and not twice when the message already names it."""
    import httpx

    from shepherd.client import _remote_error

    answers = iter([
        {"error": "request_id must be 1 to 256 characters", "code": "INVALID_PARAMETER_VALUE", "field": "labels[3].request_id"},
        {"error": "label is required", "code": "INVALID_PARAMETER_VALUE", "field": "label"},
    ])

    def fake(self: Client, method: str, path: str, **kw: Any) -> Any:
        raise _remote_error(httpx.Response(400, json=next(answers)))

    monkeypatch.setattr(Client, "request", fake)
    f = tmp_path / "labels.jsonl"
    f.write_text('{"request_id": "a", "label": 1}\n')
    r = _run("feedback", str(f))
    assert r.exit_code == 1 and r.output == "error: labels[3].request_id: request_id must be 1 to 256 characters\n", r.output
    r = _run("feedback", "--id", "a", "--label", "1")
    assert r.exit_code == 1 and r.output == "error: label is required\n", r.output
