"""Malformed requests get a 4xx that names the field, never a 500: wrong JSON types, numbers beyond 64 bits,
lists of the wrong things, filters and tokens built to break SQL or the parser."""

from __future__ import annotations

import base64
import json

import pytest

MLFLOW = "/api/2.0/mlflow"
HUGE = 2**70
BEYOND_INT64 = 2**63


def _token(obj: object | str) -> str:
    raw = obj if isinstance(obj, str) else json.dumps(obj)
    return base64.b64encode(raw.encode()).decode()


@pytest.fixture
def run_id(api, tokens) -> str:
    r = api.post(f"{MLFLOW}/runs/create", json={"experiment_id": "0"}, headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert r.status_code == 200, r.text
    return r.json()["run"]["info"]["run_id"]


MLFLOW_CASES = [
    ("POST", "experiments/create", {"name": "x", "artifact_location": ["x"]}, "artifact_location"),
    ("POST", "experiments/create", {"name": "x", "tags": [{"key": "a", "value": "1"}, {"key": None, "value": "2"}]}, "tags[1].key"),
    ("POST", "experiments/update", {"experiment_id": "0", "new_name": 1}, "new_name"),
    ("POST", "experiments/search", {"filter": 1}, "filter"),
    ("POST", "experiments/search", {"page_token": _token({"offset": 10**30})}, "page_token"),
    ("GET", "experiments/get", {"experiment_id": str(BEYOND_INT64)}, "experiment_id"),
    ("POST", "runs/search", {"experiment_ids": -1}, "experiment_ids"),
    ("POST", "runs/search", {"experiment_ids": ["0"], "order_by": [1]}, "order_by[0]"),
    ("POST", "runs/search", {"experiment_ids": ["0"] * 5000}, "experiment_ids"),
    ("POST", "runs/search", {"experiment_ids": ["0"], "filter": " AND ".join(["params.a = '1'"] * 1500)}, "filter"),
    ("POST", "runs/search", {"experiment_ids": ["0"], "page_token": _token("[" * 100_000)}, "page_token"),
    ("POST", "runs/create", {"experiment_id": "0", "start_time": HUGE}, "start_time"),
    ("POST", "runs/create", {"experiment_id": "0", "run_name": ["x"]}, "run_name"),
    ("POST", "runs/update", {"run_id": "RUN", "status": ["x"]}, "status"),
    ("POST", "runs/log-batch", {"run_id": "RUN", "metrics": ["x"]}, "metrics[0]"),
    ("POST", "runs/log-batch", {"run_id": "RUN", "params": [None]}, "params[0]"),
    ("POST", "runs/log-batch", {"run_id": "RUN", "metrics": [{"key": "k", "value": 1, "timestamp": BEYOND_INT64}]}, "metrics[0].timestamp"),
    ("POST", "runs/log-batch", {"run_id": "RUN", "metrics": [{"key": "k", "value": 1, "timestamp": 1, "step": -HUGE}]}, "metrics[0].step"),
    ("POST", "runs/log-metric", {"run_id": "RUN", "key": "m", "value": 1.0, "timestamp": 1, "step": BEYOND_INT64}, "step"),
    ("POST", "runs/log-inputs", {"run_id": "RUN", "datasets": [{"dataset": "s"}]}, "datasets[0].dataset"),
    ("POST", "runs/log-inputs", {"run_id": "RUN", "datasets": "abc"}, "datasets"),
    ("POST", "runs/delete-tag", {"run_id": "RUN", "key": []}, "key"),
    ("POST", "registered-models/create", {"name": 0}, "name"),
    ("GET", "registered-models/search", {"max_results": "abc"}, "max_results"),
    ("GET", "model-versions/search", {"max_results": "-3"}, "max_results"),
    ("POST", "logged-models", {"experiment_id": "0", "params": [{"key": ["x"], "value": "1"}]}, "params[0].key"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), MLFLOW_CASES, ids=[f"{c[1]}:{c[3]}" for c in MLFLOW_CASES])
def test_mlflow_bad_types_are_400_naming_the_field(api, tokens, run_id, method, path, body, field):
    body = {k: (run_id if v == "RUN" else v) for k, v in body.items()}
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    if method == "GET":
        r = api.get(f"{MLFLOW}/{path}", params=body, headers=headers)
    else:
        r = api.post(f"{MLFLOW}/{path}", json=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert field in r.json()["message"], r.json()


def test_v1_numbers_beyond_64_bits_and_bad_destinations(api, tokens, tmp_path):
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    assert api.get(f"/api/v1/alerts?after={BEYOND_INT64}", headers=admin).status_code == 400
    assert api.get(f"/api/v1/audit?after={BEYOND_INT64}", headers=admin).status_code == 400
    r = api.post(f"/api/v1/alerts/{BEYOND_INT64}/ack", headers=admin)
    assert r.status_code == 404, r.text
    r = api.post("/api/v1/feedback", json={"request_id": "x", "label": 1, "row": BEYOND_INT64}, headers=admin)
    assert r.status_code == 400 and r.json()["field"] == "row", r.text  # one label: its fields as the body has them
    afile = tmp_path / "a-file"
    afile.write_text("x")
    for dest in (str(afile), str(tmp_path / "a\u0000b"), str(tmp_path / ("n" * 300)), str(afile / "below")):
        r = api.post("/api/v1/admin/backup", json={"dest": dest}, headers=admin)
        assert r.status_code == 400 and r.json()["field"] == "dest", (dest[:60], r.text)
