"""The unmodified mlflow client against the live server: tracking, artifacts, log_model, registry, aliases, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import SHEPHERD

pytest.importorskip("mlflow")

CLIENT = r'''
import json, math, os, sys, tempfile, pathlib
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from mlflow.entities import Metric, Param, RunTag

out = {}
client = MlflowClient()

def code(fn):
    try:
        fn()
    except MlflowException as e:
        return e.error_code
    return None

exp_id = mlflow.set_experiment("e2e").experiment_id
out["experiment_again"] = mlflow.set_experiment("e2e").experiment_id == exp_id
with mlflow.start_run(run_name="parent", tags={"team": "ml"}) as parent:
    mlflow.log_param("lr", 0.01)
    mlflow.log_params({"batch": 32, "optimizer": "adam"})
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_metrics({"acc": 0.9, "auc": 0.95})
    mlflow.log_metric("train/loss", 0.25, step=7)  # a key holding '/', as MLflow's own examples name them
    mlflow.set_tag("stage", "dev")
    mlflow.set_tags({"a": "1", "b": "2"})
    d = pathlib.Path(tempfile.mkdtemp())
    (d / "hello.txt").write_text("hello shepherd")
    (d / "tree").mkdir(); (d / "tree" / "x.json").write_text('{"x": 1}'); (d / "tree" / "deep").mkdir(); (d / "tree" / "deep" / "y.txt").write_text("y")
    mlflow.log_artifact(str(d / "hello.txt"))
    mlflow.log_artifacts(str(d / "tree"), artifact_path="tree")
    from mlflow.entities import Dataset, DatasetInput, InputTag
    ds = Dataset(name="train", digest="sha256:abc123", source_type="local", source='{"uri": "file:///data/train.npy"}')
    client.log_inputs(mlflow.active_run().info.run_id, [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "training")])])
    with mlflow.start_run(run_name="child", nested=True) as child:
        mlflow.log_metric("child_metric", 1.0)

    class Add(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [x + 1 for x in model_input]

    info = mlflow.pyfunc.log_model(name="model", python_model=Add(), pip_requirements=[])
    out["model_uri"] = info.model_uri

run_id = parent.info.run_id
out["run_id"], out["child_id"] = run_id, child.info.run_id
run = client.get_run(run_id)
out["params"] = run.data.params
out["metrics"] = run.data.metrics
out["tags_ok"] = run.data.tags.get("team") == "ml" and run.data.tags.get("stage") == "dev"
out["status"] = run.info.status
out["child_parent"] = client.get_run(child.info.run_id).data.tags.get("mlflow.parentRunId") == run_id
out["inputs"] = [i.dataset.name for i in run.inputs.dataset_inputs]
out["history"] = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
dl = pathlib.Path(tempfile.mkdtemp())
local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="hello.txt", dst_path=str(dl))
out["artifact"] = pathlib.Path(local).read_text()
local_tree = client.download_artifacts(run_id, "tree", str(dl))
out["tree"] = sorted(str(p.relative_to(local_tree)) for p in pathlib.Path(local_tree).rglob("*") if p.is_file())
out["listing"] = sorted(f.path for f in client.list_artifacts(run_id))

found = client.search_runs([exp_id], "metrics.acc > 0.5 and params.optimizer = 'adam' and tags.team = 'ml'", order_by=["metrics.acc DESC"])
out["search"] = [r.info.run_id for r in found]
page1 = client.search_runs([exp_id], "", max_results=1, order_by=["attributes.start_time DESC"])
page2 = client.search_runs([exp_id], "", max_results=1, order_by=["attributes.start_time DESC"], page_token=page1.token)
out["paged"] = [page1[0].info.run_id, page2[0].info.run_id, page2.token]
out["like"] = len(client.search_runs([exp_id], "params.optimizer LIKE 'ad%'"))
out["in"] = len(client.search_runs([exp_id], "attributes.run_name IN ('child', 'nope')"))

mv = mlflow.register_model(f"runs:/{run_id}/model", "e2e-model")
out["registered_version"] = mv.version
client.set_registered_model_alias("e2e-model", "champion", mv.version)
out["alias_version"] = client.get_model_version_by_alias("e2e-model", "champion").version
out["rm"] = client.get_registered_model("e2e-model").name
out["rm_search"] = [m.name for m in client.search_registered_models()]
out["mv_search"] = [v.version for v in client.search_model_versions("name='e2e-model'")]
out["mv_get_run"] = client.get_model_version("e2e-model", mv.version).run_id == run_id
model_dir = mlflow.artifacts.download_artifacts("models:/e2e-model@champion", dst_path=tempfile.mkdtemp())
out["model_files"] = sorted(p.name for p in pathlib.Path(model_dir).iterdir())
loaded = mlflow.pyfunc.load_model("models:/e2e-model@champion")
out["predict"] = list(loaded.predict([1, 2]))
client.delete_registered_model_alias("e2e-model", "champion")
out["alias_gone"] = code(lambda: client.get_model_version_by_alias("e2e-model", "champion"))

# errors the client branches on
out["unknown_run"] = code(lambda: client.get_run("0" * 32))
finished = client.create_run(exp_id)
client.set_terminated(finished.info.run_id)
out["finished_run"] = code(lambda: client.log_param(finished.info.run_id, "k", "v"))
out["big_batch"] = code(lambda: client.log_batch(run_id, metrics=[Metric("m", 1.0, 0, i) for i in range(1001)]))
out["bad_filter"] = code(lambda: client.search_runs([exp_id], "metrics.loss <<< 1"))
fresh = client.create_run(exp_id).info.run_id
client.log_param(fresh, "lr", "1")
out["param_same"] = code(lambda: client.log_param(fresh, "lr", "1"))
out["param_change"] = code(lambda: client.log_param(fresh, "lr", "2"))
client.delete_run(child.info.run_id)
out["deleted_hidden"] = child.info.run_id not in [r.info.run_id for r in client.search_runs([exp_id])]
client.restore_run(child.info.run_id)
out["restored"] = child.info.run_id in [r.info.run_id for r in client.search_runs([exp_id])]
print("RESULT" + json.dumps(out))
'''


def run_client(url: str, token: str | None, script: str = CLIENT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=url, MLFLOW_REGISTRY_URI=url)
    if token:
        env["MLFLOW_TRACKING_TOKEN"] = token
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


def token(cfg: Path, role: str) -> str:
    out = subprocess.run([*SHEPHERD, "token", "create", "--role", role, "--config", str(cfg)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def live(server_config, start_server):
    cfg = server_config()
    return start_server(cfg), cfg


def test_mlflow_client_end_to_end(live):
    """Every listed mlflow call works unmodified: tracking, artifacts, datasets, log_model, register, aliases, load by alias."""
    import json

    srv, cfg = live
    res = run_client(srv.url, token(cfg, "operator"))
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.split("RESULT", 1)[1])
    assert out["experiment_again"]
    assert out["params"] == {"lr": "0.01", "batch": "32", "optimizer": "adam"}
    assert out["metrics"]["loss"] == pytest.approx(0.2) and out["metrics"]["acc"] == 0.9
    assert out["tags_ok"] and out["status"] == "FINISHED" and out["child_parent"]
    assert out["inputs"] == ["train"]
    assert out["history"] == [[s, pytest.approx(1.0 / (s + 1))] for s in range(5)]
    assert out["artifact"] == "hello shepherd"
    assert out["tree"] == ["deep/y.txt", "x.json"]
    assert out["listing"] == ["hello.txt", "tree"]
    assert len(out["search"]) == 1
    assert out["paged"][0] != out["paged"][1]
    assert out["like"] == 1 and out["in"] == 1
    assert str(out["registered_version"]) == "1" and str(out["alias_version"]) == "1" and out["rm"] == "e2e-model"
    assert "e2e-model" in out["rm_search"] and [str(v) for v in out["mv_search"]] == ["1"] and out["mv_get_run"]
    assert "MLmodel" in out["model_files"] and "python_model.pkl" in out["model_files"]
    assert out["predict"] == [2, 3]
    assert out["alias_gone"] == "RESOURCE_DOES_NOT_EXIST"
    assert out["unknown_run"] == "RESOURCE_DOES_NOT_EXIST"
    assert out["finished_run"] == "INVALID_PARAMETER_VALUE"
    assert out["big_batch"] == "INVALID_PARAMETER_VALUE"
    assert out["bad_filter"] == "INVALID_PARAMETER_VALUE"
    assert out["param_same"] is None and out["param_change"] == "INVALID_PARAMETER_VALUE"
    assert out["deleted_hidden"] and out["restored"]

    # the same data through Shepherd's own CLI
    from tests.e2e.test_server import cli

    tok = token(cfg, "viewer")
    code, text = cli(srv.url, tok, "runs", "list", "--experiment", "e2e", "--filter", "metrics.acc > 0.5 and params.optimizer = 'adam'")
    assert code == 0 and out["run_id"] in text and out["child_id"] not in text
    code, text = cli(srv.url, tok, "runs", "show", out["run_id"])
    assert code == 0 and "registered: e2e-model version 1" in text and "lr = 0.01" in text and "dataset: train" in text
    code, text = cli(srv.url, tok, "runs", "compare", out["run_id"], out["child_id"], "--json")
    compared = json.loads(text)
    assert compared["params"]["lr"] == ["0.01", None] and compared["metrics"]["child_metric"] == [None, 1.0]
    code, text = cli(srv.url, tok, "runs", "history", out["run_id"], "loss", "--json")
    assert [m["step"] for m in json.loads(text)["metrics"]] == [0, 1, 2, 3, 4]
    code, text = cli(srv.url, tok, "runs", "history", out["run_id"], "train/loss", "--json")
    assert code == 0 and [(m["step"], m["value"]) for m in json.loads(text)["metrics"]] == [(7, 0.25)]
    code, text = cli(srv.url, tok, "runs", "list", "--experiment", "e2e", "--filter", "metrics.acc >> 1")
    assert code != 0 and "needs a number" in text
    code, text = cli(srv.url, tok, "models", "show", "e2e-model", "1", "--json")
    lineage = json.loads(text)["lineage"]
    assert lineage["run_id"] == out["run_id"] and lineage["params"]["optimizer"] == "adam" and lineage["dataset_digests"] == ["sha256:abc123"]


AUTH = textwrap.dedent('''
    import json, mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    out = {}
    try:
        MlflowClient().create_experiment("viewer-cannot")
    except MlflowException as e:
        out["write"] = e.error_code
    try:
        MlflowClient().search_experiments()
        out["read"] = "ok"
    except MlflowException as e:
        out["read"] = e.error_code
    print("RESULT" + json.dumps(out))
''')


@pytest.mark.parametrize(("role", "write", "read"), [(None, "UNAUTHENTICATED", "UNAUTHENTICATED"), ("viewer", "PERMISSION_DENIED", "ok")])
def test_tokens_and_roles_through_the_client(live, role, write, read):
    """Without a token the client gets UNAUTHENTICATED; a viewer token reads but cannot write (PERMISSION_DENIED)."""
    import json

    srv, cfg = live
    res = run_client(srv.url, token(cfg, role) if role else None, AUTH)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.split("RESULT", 1)[1])
    assert out == {"write": write, "read": read}
