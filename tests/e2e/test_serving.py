"""End to end serving: tritonclient (JSON and binary) against the live server, swaps under load,
bad requests, restart and failed loads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper

from shepherd.api import v2
from shepherd.bundles.create import create
from tests.e2e.conftest import admin_token

META = 'name = "{name}"\n[lineage]\ncode_revision = "test"\n'


def two_output_model(path: Path, bias: float) -> Path:
    """y = x + bias (FP32 [-1,3]); label = argmax(y) (INT64 [-1]); a second input w (FP64 [-1,2]) passes through as w2 = w * 2."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    w = helper.make_tensor_value_info("w", TensorProto.DOUBLE, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    w2 = helper.make_tensor_value_info("w2", TensorProto.DOUBLE, [None, 2])
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [bias, 2 * bias, -bias])
    two = helper.make_tensor("two", TensorProto.DOUBLE, [], [2.0])
    nodes = [
        helper.make_node("Add", ["x", "b"], ["y"]),
        helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0),
        helper.make_node("Mul", ["w", "two"], ["w2"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "two", [x, w], [y, label, w2], [b, two]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def bundles(tmp_path, keys):
    """Factory: a signed bundle of the two-output model with the given bias."""

    def make(bias: float, name: str = "multi") -> Path:
        work = tmp_path / f"m-{name}-{bias}"
        work.mkdir()
        model = two_output_model(work / "model.onnx", bias)
        (work / "meta.toml").write_text(META.format(name=name))
        out = work / "b.shb"
        create(model=model, metadata=work / "meta.toml", out=out, sign_key=keys.private)
        return out

    return make


class Live:
    def __init__(self, srv, token: str) -> None:
        self.srv = srv
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = httpx.Client(base_url=srv.url, headers=self.headers, timeout=30)

    def ok(self, method: str, path: str, **kw):
        resp = self.http.request(method, path, **kw)
        assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json()


@pytest.fixture
def live(server_config, start_server, bundles):
    """A live server with model 'multi' v1 (bias 1) primary and v2 (bias 2) previous... then rolled to primary 2."""
    cfg = server_config()
    token = admin_token(cfg)
    srv = start_server(cfg)
    lv = Live(srv, token)
    for bias in (1.0, 2.0):
        lv.http.post("/api/v1/bundles", content=bundles(bias).read_bytes()).raise_for_status()
    for v in (1, 2):
        lv.ok("POST", "/api/v1/deployments/multi/deploy", json={"model": "multi", "version": v})
        lv.ok("POST", "/api/v1/deployments/multi/promote")
    lv.cfg = cfg
    return lv


def expected(bias: float, x: np.ndarray, w: np.ndarray, model_dir: Path) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(two_output_model(model_dir / f"ref-{bias}.onnx", bias)), providers=["CPUExecutionProvider"])
    return dict(zip(["y", "label", "w2"], sess.run(None, {"x": x, "w": w})))


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_matches_onnxruntime(live, tmp_path, binary):
    """tritonclient in JSON and in binary mode gets exactly what onnxruntime computes, the id echoed and the version named."""
    client = triton.InferenceServerClient(live.srv.url.removeprefix("http://"))
    h = live.headers
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("multi", headers=h)
    meta = client.get_model_metadata("multi", headers=h)
    assert [i["name"] for i in meta["inputs"]] == ["x", "w"] and meta["versions"] == ["1", "2"]
    config = client.get_model_config("multi", headers=h)
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == [3]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    w = rng.normal(size=(5, 2))
    inputs = [triton.InferInput("x", [5, 3], "FP32"), triton.InferInput("w", [5, 2], "FP64")]
    inputs[0].set_data_from_numpy(x, binary_data=binary)
    inputs[1].set_data_from_numpy(w, binary_data=binary)
    outputs = [triton.InferRequestedOutput("label", binary_data=binary), triton.InferRequestedOutput("y", binary_data=binary)]
    for version, bias in (("", 2.0), ("1", 1.0)):
        result = client.infer("multi", inputs, model_version=version, outputs=outputs, request_id="req-42", headers=h)
        want = expected(bias, x, w, tmp_path)
        resp = result.get_response()
        assert resp["id"] == "req-42" and resp["model_version"] == (version or "2")
        assert [o["name"] for o in resp["outputs"]] == ["label", "y"]
        np.testing.assert_array_equal(result.as_numpy("y"), want["y"])
        np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
        assert result.as_numpy("w2") is None
    # no outputs named: all of them
    result = client.infer("multi", inputs, headers=h)
    np.testing.assert_array_equal(result.as_numpy("w2"), w * 2)
    stats = client.get_inference_statistics("multi", headers=h)["model_stats"]
    assert {s["version"] for s in stats} == {"1", "2"}
    assert sum(s["inference_stats"]["success"]["count"] for s in stats) == 3


def test_bad_requests_get_clear_4xx(live):
    """Wrong dtype/shape, missing input, unknown model or version, oversized or malformed bodies get a 4xx naming the problem."""
    ok_x = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
    ok_w = {"name": "w", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}
    cases = [
        ("/v2/models/multi/infer", {"inputs": [{**ok_x, "datatype": "INT32"}, ok_w]}, {}, 400, "x"),
        ("/v2/models/multi/infer", {"inputs": [{**ok_x, "shape": [1, 4], "data": [1, 2, 3, 4]}, ok_w]}, {}, 400, "x"),
        ("/v2/models/multi/infer", {"inputs": [ok_x]}, {}, 400, "w"),
        ("/v2/models/multi/infer", {"inputs": [ok_x, ok_w], "outputs": [{"name": "nope"}]}, {}, 400, "nope"),
        ("/v2/models/ghost/infer", {"inputs": [ok_x, ok_w]}, {}, 404, "ghost"),
        ("/v2/models/multi/versions/9/infer", {"inputs": [ok_x, ok_w]}, {}, 404, "version 9"),
        ("/v2/models/multi/infer", {"inputs": [{**ok_x, "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}, ok_w]}, {}, 400, "batch dimension"),
        ("/v2/models/multi/versions/²/infer", {"inputs": [ok_x, ok_w]}, {}, 400, "version"),
        ("/v2/models/multi/versions/abc/infer", {"inputs": [ok_x, ok_w]}, {}, 400, "version"),
        ("/v2/models/multi/infer", {"inputs": [ok_x, ok_w]}, {"Inference-Header-Content-Length": "99999"}, 400, "Inference-Header-Content-Length"),
        ("/v2/models/multi/infer", {"inputs": [ok_x, ok_w]}, {"Inference-Header-Content-Length": "²".encode()}, 400, "Inference-Header-Content-Length"),
    ]
    for path, body, headers, status, fragment in cases:
        resp = live.http.post(path, json=body, headers=headers)
        assert resp.status_code == status, f"{path} {body}: {resp.status_code} {resp.text}"
        assert fragment in resp.json()["error"], resp.text
    resp = live.http.post("/v2/models/multi/infer", content=b"{not json")
    assert resp.status_code == 400
    resp = live.http.post("/v2/models/multi/infer", content=b"x" * (11 * 1024 * 1024))
    assert resp.status_code == 413
    assert live.http.get("/v2/models/multi/versions/9/ready").status_code == 404
    # Paths the infer fast path does not take fall through to Litestar's router, which refuses them
    # (it folds "//", so some match a GET route: 405) with the usual error body.
    for path in ["/v2/models/multi/extra/infer", "/v2/models//infer", "/v2/models/multi/versions//infer"]:
        resp = live.http.post(path, json={"inputs": [ok_x, ok_w]})
        assert resp.status_code in (404, 405) and resp.json()["code"] in ("ENDPOINT_NOT_FOUND", "METHOD_NOT_ALLOWED"), f"{path}: {resp.text}"
    resp = live.http.get("/v2/models/multi/infer")
    assert (resp.status_code, resp.json()["code"]) == (405, "METHOD_NOT_ALLOWED"), resp.text


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v2/models/m/infer", ("m", None)),
        ("/v2/models/m.v-2_x/versions/12/infer", ("m.v-2_x", "12")),
        ("/v2/models/m/versions/abc/infer", ("m", "abc")),  # the version is checked (400) by inference.parse_version
        ("/v2/models//infer", None),
        ("/v2/models/m/versions//infer", None),
        ("/v2/models/m/extra/infer", None),
        ("/v2/models/m/version/1/infer", None),
        ("/v2/models/m/infer/", None),
        ("/v2/models/m/ready", None),
        ("/v2/models/infer", None),
        ("/api/v2/models/m/infer", None),
    ],
)
def test_infer_fast_path_takes_exactly_the_v2_infer_routes(path, target):
    assert v2.infer_target(path) == target


def test_zero_failed_requests_across_200_swaps(live, bundles):
    """Under concurrent load, 200 promote/rollback operations fail no request, and each answer comes from a version that was primary during it."""
    ops: list[tuple[float, float, int]] = []  # (start, end, primary after)
    ops.append((0.0, time.perf_counter(), 2))
    results: list[tuple[float, float, int, float]] = []
    failures: list[str] = []
    stop = threading.Event()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}, {"name": "w", "datatype": "FP64", "shape": [1, 2], "data": [1, 1]}], "outputs": [{"name": "y"}]}

    def load():
        with httpx.Client(base_url=live.srv.url, headers=live.headers, timeout=30) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = c.post("/v2/models/multi/infer", json=body)
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                    continue
                t1 = time.perf_counter()
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                j = r.json()
                results.append((t0, t1, int(j["model_version"]), j["outputs"][0]["data"][0]))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    primary, previous = 2, 1
    try:
        for i in range(200):
            t0 = time.perf_counter()
            if i % 2 == 0:
                live.ok("POST", "/api/v1/deployments/multi/rollback")
            else:  # promote: deploy the previous version as candidate, then promote it
                live.ok("POST", "/api/v1/deployments/multi/deploy", json={"model": "multi", "version": previous})
                live.ok("POST", "/api/v1/deployments/multi/promote")
            primary, previous = previous, primary
            ops.append((t0, time.perf_counter(), primary))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    assert len(results) > 200
    for t0, t1, version, y0 in results:
        assert y0 == {1: 1.0, 2: 2.0}[version], "the answer does not come from the version it names"
        possible = set()
        for k, (_, _, p) in enumerate(ops):
            became = ops[k][0]
            left = ops[k + 1][1] if k + 1 < len(ops) else float("inf")
            if became <= t1 and left >= t0:
                possible.add(p)
        assert version in possible, f"request [{t0}, {t1}] answered by {version}, primaries then: {possible}"


def test_restart_restores_slots_and_failed_load_changes_nothing(live, start_server, bundles):
    """After a restart the same versions serve from the same slots; deploying a corrupt blob fails and serving continues."""
    before = live.ok("GET", "/api/v1/deployments/multi")
    live.srv.stop()
    srv = start_server(live.cfg)
    live.http = httpx.Client(base_url=srv.url, headers=live.headers, timeout=30)
    after = live.ok("GET", "/api/v1/deployments/multi")
    assert [(s["slot"], s["version"], s["loaded"]) for s in after["slots"]] == [(s["slot"], s["version"], True) for s in before["slots"]]
    live.http.post("/api/v1/bundles", content=bundles(3.0).read_bytes()).raise_for_status()
    v3 = live.ok("GET", "/api/v1/models/multi/versions/3")
    sha = next(f["sha256"] for f in v3["files"] if f["path"] == "model.onnx")
    blob = live.cfg.parent / "data" / "blobs" / sha[:2] / sha
    os.chmod(blob, 0o644)
    blob.write_bytes(b"corrupt")
    resp = live.http.post("/api/v1/deployments/multi/deploy", json={"model": "multi", "version": 3})
    assert resp.status_code == 422 and "corrupt" in resp.json()["error"]
    assert live.ok("GET", "/api/v1/deployments/multi") == after
    r = live.http.post("/v2/models/multi/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}, {"name": "w", "datatype": "FP64", "shape": [1, 2], "data": [1, 1]}]})
    assert r.status_code == 200 and r.json()["model_version"] == "2"


def test_metrics_exposed(live):
    """/metrics serves Prometheus text with request, latency, batch, queue, in-flight, load-time and swap series labelled by deployment, model, version and slot."""
    live.http.post("/v2/models/multi/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}, {"name": "w", "datatype": "FP64", "shape": [1, 2], "data": [1, 1]}]}).raise_for_status()
    live.ok("POST", "/api/v1/deployments/multi/rollback")
    text = live.http.get("/metrics").text
    for series in (
        'shepherd_inference_requests_total{deployment="multi",model="multi",outcome="success",slot="primary",version="2"} 1.0',
        "shepherd_inference_request_seconds_bucket",
        "shepherd_inference_queue_seconds_bucket",
        "shepherd_inference_compute_seconds_bucket",
        "shepherd_inference_batch_size_bucket",
        "shepherd_inference_in_flight",
        "shepherd_inference_queue_depth",
        'shepherd_model_load_seconds{deployment="multi",model="multi",slot="primary",version="1"}',
        'shepherd_deployment_swap_seconds{action="rollback",deployment="multi",phase="effective"}',
    ):
        assert series in text, series
