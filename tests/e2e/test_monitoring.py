"""End to end: monitoring on the real `shepherd serve`, driven over HTTP and by the CLI; SIGTERM flushes the log."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pytest

from tests.e2e.conftest import admin_token, free_port
from tests.e2e.test_server import cli
from tests.monitoring.test_monitor import _build_iris


@pytest.fixture(scope="module")
def iris_e2e(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_iris(tmp_path_factory.mktemp("iris-e2e"))


def write_config(tmp_path: Path, keys, iris: Path, *, flush_interval_s: float, interval_s: float) -> Path:
    shutil.copy(iris.parent / "keys" / "demo.pub", keys.trusted_dir / "demo.pub")
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "iris.toml").write_text("[drift]\nwindow_rows = 100\n[performance]\nmin_labels = 20\n")
    port = free_port()
    path = tmp_path / f"shepherd-{port}.toml"
    path.write_text(
        f'[server]\nport = {port}\n[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[bundles]\ntrusted_keys_dir = "{keys.trusted_dir}"\n[auth]\ntoken_cache_seconds = 0\n'
        f'[monitoring]\nflush_interval_s = {flush_interval_s}\nflush_rows = 1000000\ninterval_s = {interval_s}\n'
        f'policies_dir = "{policies}"\n'
    )
    return path


def reference_rows(iris: Path, n: int, seed: int) -> np.ndarray:
    ref = duckdb.sql(f"SELECT * FROM read_parquet('{iris.parent / 'reference.parquet'}')").fetchnumpy()
    x = np.column_stack([ref[c] for c in ref]).astype(np.float32)
    return x[np.random.default_rng(seed).integers(0, len(x), n)]


def infer(url: str, token: str, row: np.ndarray) -> dict:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]}
    r = httpx.post(f"{url}/v2/models/iris/infer", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()


def setup_iris(url: str, token: str, iris: Path) -> None:
    assert cli(url, token, "import", str(iris))[0] == 0
    assert cli(url, token, "deploy", "iris", "iris", "1")[0] == 0
    assert cli(url, token, "promote", "iris")[0] == 0


def test_drift_feedback_alerts_and_export_through_the_cli(tmp_path, keys, iris_e2e, start_server):
    """A shifted window on the live server becomes a drift window and a Warning; feedback, performance and export work by CLI."""
    cfg = write_config(tmp_path, keys, iris_e2e, flush_interval_s=0.1, interval_s=0.2)
    token = admin_token(cfg)
    srv = start_server(cfg)
    setup_iris(srv.url, token, iris_e2e)
    answers = [infer(srv.url, token, r) for r in reference_rows(iris_e2e, 100, 1)]
    answers += [infer(srv.url, token, r + 3) for r in reference_rows(iris_e2e, 100, 2)]

    lines = [json.dumps({"request_id": a["id"], "label": a["outputs"][0]["data"][0]}) for a in answers]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join([*lines, json.dumps({"request_id": "never-served", "label": 1})]) + "\n")
    code, out = cli(srv.url, token, "feedback", str(labels))
    assert code == 3 and "accepted 200 label(s)" in out and "unknown request never-served" in out

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, out = cli(srv.url, token, "drift", "iris", "--json")
        if code == 0 and len(json.loads(out)) >= 2:
            break
        time.sleep(0.2)
    windows = json.loads(out)
    assert [w["drifted"] for w in windows[:2]] == [True, False], windows
    # each window is scored on its own rows' labels (every label here is the prediction)
    assert [(w["performance"]["n_labels"], w["performance"]["metrics"]["accuracy"]) for w in windows[:2]] == [(100, 1.0)] * 2
    code, out = cli(srv.url, token, "drift", "iris")
    assert code == 0 and "DRIFT" in out and "petal_length" in out
    assert "PERFORMANCE" in out and "accuracy 1 (100 labels)" in out, out

    code, out = cli(srv.url, token, "alerts", "list", "--deployment", "iris", "--json")
    kinds = {(a["kind"], a["level"]) for a in json.loads(out)}
    assert ("data_drift", "warning") in kinds
    code, out = cli(srv.url, token, "performance", "iris", "--json")
    current = json.loads(out)["current"][0]
    assert current["n_labels"] == 200 and current["metrics"]["accuracy"] == 1.0

    code, out = cli(srv.url, token, "reference", "show", "iris")
    assert code == 0 and "bundle reference of 105 rows" in out and "petal_length" in out, out
    code, out = cli(srv.url, token, "reference", "adopt", "iris", "--rows", "10")  # it has one, which never changes
    assert code == 1 and out.startswith("error: ") and "already" in out, out

    dest = tmp_path / "out.parquet"
    code, out = cli(srv.url, token, "predictions", "export", "iris", str(dest))
    assert code == 0 and "wrote 200 rows" in out
    assert duckdb.sql(f"SELECT count(*), count(label) FROM read_parquet('{dest}')").fetchall()[0] == (200, 200)
    text = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
    assert 'shepherd_prediction_log_rows_total 200.0' in text


def test_sigterm_flushes_every_answered_request(tmp_path, keys, iris_e2e, start_server):
    """With a flush interval of an hour, every answered request is still in the log after SIGTERM and a restart."""
    cfg = write_config(tmp_path, keys, iris_e2e, flush_interval_s=3600, interval_s=3600)
    token = admin_token(cfg)
    srv = start_server(cfg)
    setup_iris(srv.url, token, iris_e2e)
    ids = [infer(srv.url, token, r)["id"] for r in reference_rows(iris_e2e, 57, 3)]
    srv.proc.terminate()
    assert srv.proc.wait(30) == 0
    with duckdb.connect(str(tmp_path / "data" / "events.duckdb"), read_only=True) as con:
        logged = [r[0] for r in con.execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    assert logged == ids


def _burst_in_one_window(url: str, token: str, rows: np.ndarray, seconds: float) -> float:
    """Send `rows` starting just after a window boundary (windows of `seconds`, aligned to the epoch); the window's start."""
    time.sleep(seconds - time.time() % seconds + 0.05)
    start = time.time()
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:  # 10 requests of 10 rows: well inside a window on a busy machine
        for part in np.array_split(rows, 10):
            body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(part.shape), "data": part.ravel().tolist()}]}
            r = client.post(f"{url}/v2/models/iris/infer", json=body)
            assert r.status_code == 200, r.text
    window = start - start % seconds
    assert time.time() < window + seconds, "the burst outlasted its window: the machine is too slow for this test"
    return window


def test_time_windows_through_http_and_the_cli(tmp_path, keys, iris_e2e, start_server):
    """Windows by time on the live server: each epoch-aligned window holds exactly the rows served in it, a window of
    shifted rows drifts and one of reference rows does not, and ?from/?to and the CLI's --from select by end time."""
    from datetime import UTC, datetime

    seconds = 4.0
    cfg = write_config(tmp_path, keys, iris_e2e, flush_interval_s=0.1, interval_s=0.2)
    (tmp_path / "policies" / "iris.toml").write_text(f"[drift]\nwindow_rows = 0\nwindow_seconds = {seconds}\n")
    token = admin_token(cfg)
    srv = start_server(cfg)
    setup_iris(srv.url, token, iris_e2e)
    calm = _burst_in_one_window(srv.url, token, reference_rows(iris_e2e, 100, 4), seconds)
    shifted = _burst_in_one_window(srv.url, token, reference_rows(iris_e2e, 100, 5) + 3, seconds)

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, out = cli(srv.url, token, "drift", "iris", "--json", "--limit", "100")
        windows = json.loads(out) if code == 0 else []
        if any(datetime.fromisoformat(w["start_ts"]).timestamp() == shifted for w in windows):
            break
        time.sleep(0.2)
    by_start = {datetime.fromisoformat(w["start_ts"]).timestamp(): w for w in windows}
    assert calm in by_start and shifted in by_start, windows
    assert sum(w["n_rows"] for w in windows) == 200  # every served row in exactly one window
    for w in windows:  # contiguous, epoch-aligned windows of the policy's length
        start, end = datetime.fromisoformat(w["start_ts"]).timestamp(), datetime.fromisoformat(w["end_ts"]).timestamp()
        assert end - start == seconds and start % seconds == 0
    assert (by_start[calm]["n_rows"], by_start[calm]["drifted"]) == (100, False)
    assert (by_start[shifted]["n_rows"], by_start[shifted]["drifted"]) == (100, True)

    # windows that ended in [from, to): from just after the calm window's end leaves it out
    r = httpx.get(f"{srv.url}/api/v1/deployments/iris/drift", params={"from": iso(calm + seconds + 0.5), "to": iso(shifted + seconds + 0.5)},
                  headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    starts = {datetime.fromisoformat(w["start_ts"]).timestamp() for w in r.json()}
    assert shifted in starts and calm not in starts
    code, out = cli(srv.url, token, "drift", "iris", "--json", "--to", iso(calm + seconds + 0.5))
    assert code == 0 and [datetime.fromisoformat(w["start_ts"]).timestamp() for w in json.loads(out)][0] == calm
    code, out = cli(srv.url, token, "drift", "iris", "--from", "yesterday")
    assert code != 0 and "from" in out, out
