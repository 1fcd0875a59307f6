"""Tracking rules: MLflow's limits, atomic batches, frozen finished runs, paged history, the latest-metric rule, lineage."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shepherd.errors import Conflict, InvalidInput, NotFound
from shepherd.store.blobs import BlobStore
from shepherd.store.schema import MIGRATIONS
from shepherd.store.sqlite import Database
from shepherd.tracking.service import Tracker
from tests.conftest import at_once


def snapshot(db: Database) -> dict[str, list]:
    """Every tracking table, for before/after comparisons around a refused change."""
    tables = ("experiments", "experiment_tags", "runs", "run_params", "run_tags", "run_metrics", "run_latest_metrics", "run_inputs", "artifacts")
    return db.read(lambda c: {name: list(c.execute(f"SELECT * FROM {name} ORDER BY rowid" if name in ("experiments", "runs") else f"SELECT * FROM {name}")) for name in tables})


@pytest.fixture
def t(tmp_path):
    db = Database(tmp_path / "s.sqlite", MIGRATIONS)
    yield Tracker(db, BlobStore(tmp_path / "blobs"))
    db.close()


def m(key: str, value: float, step: int = 0, ts: int = 1) -> dict:
    return {"key": key, "value": value, "timestamp": ts, "step": step}


def test_a_tag_key_given_twice_keeps_its_last_value(t):
    """create_experiment with one key twice (the REST API takes a list) keeps the last value, as
    setting a tag twice does, instead of failing on the table's key."""
    exp = t.experiment(t.create_experiment("x", tags=[("a", "1"), ("b", "2"), ("a", "3")]))
    assert sorted((tag["key"], tag["value"]) for tag in exp.tags) == [("a", "3"), ("b", "2")]


def test_default_experiment_exists_and_names_are_unique(t):
    """Experiment '0' (Default) is always there; a second experiment of the same name is RESOURCE_ALREADY_EXISTS."""
    assert t.experiment("0").name == "Default"
    t.create_experiment("x")
    with pytest.raises(Conflict) as info:
        t.create_experiment("x")
    assert info.value.code == "RESOURCE_ALREADY_EXISTS"
    with pytest.raises(NotFound) as info:
        t.experiment("999")
    assert info.value.code == "RESOURCE_DOES_NOT_EXIST"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"metrics": [m("k", 1.0, i) for i in range(1001)]}, "metrics"),
        ({"params": [{"key": f"p{i}", "value": "v"} for i in range(101)]}, "params"),
        ({"tags": [{"key": f"t{i}", "value": "v"} for i in range(101)]}, "tags"),
        ({"metrics": [m("k", 1.0, i) for i in range(950)], "params": [{"key": f"p{i}", "value": "v"} for i in range(51)]}, "metrics"),
        ({"params": [{"key": "k" * 251, "value": "v"}]}, "params[0].key"),
        ({"params": [{"key": "p", "value": "v" * 6001}]}, "params[0].value"),
        ({"tags": [{"key": "t", "value": "v" * 8001}]}, "tags[0].value"),
        ({"metrics": [m("../up", 1.0)]}, "metrics[0].key"),
        ({"metrics": [{"key": "k", "value": "high", "timestamp": 1, "step": 0}]}, "metrics[0].value"),
        ({"metrics": [{"key": "k", "value": 1.0, "timestamp": 1, "step": 1.5}]}, "metrics[0].step"),
        ({"params": [{"key": "p", "value": "a"}, {"key": "p", "value": "b"}]}, "params[1].value"),
        ({"metrics": [m("k", 1.0), {"key": ["k"], "value": 1.0, "timestamp": 1, "step": 0}]}, "metrics[1].key"),
        ({"metrics": [m("k", 1.0), {"key": "k", "value": True, "timestamp": 1, "step": 0}]}, "metrics[1].value"),
        ({"metrics": [m("k", 1.0), {"key": "k", "value": 1.0, "timestamp": "soon", "step": 0}]}, "metrics[1].timestamp"),
        ({"metrics": [m("k", 1.0), {"key": "k", "value": 1.0, "timestamp": 1, "step": None}, m("../x", 2.0)]}, "metrics[2].key"),
    ],
)
def test_limits_are_refused_naming_the_field_and_nothing_is_written(t, kwargs, field):
    """A batch over MLflow's limits is INVALID_PARAMETER_VALUE naming the field, and the database is untouched."""
    run = t.create_run("0").info.run_id
    before = snapshot(t.db)
    with pytest.raises(InvalidInput) as info:
        t.log_batch(run, **kwargs)
    assert info.value.field == field and info.value.code == "INVALID_PARAMETER_VALUE"
    assert snapshot(t.db) == before


def test_a_batch_failing_late_leaves_nothing_behind(t):
    """A param conflict found inside the transaction rolls back the metrics and tags of the same batch."""
    run = t.create_run("0").info.run_id
    t.log_batch(run, params=[{"key": "lr", "value": "0.1"}])
    before = snapshot(t.db)
    with pytest.raises(InvalidInput, match="Changing param values is not allowed"):
        t.log_batch(run, metrics=[m("loss", 1.0)], params=[{"key": "lr", "value": "0.2"}], tags=[{"key": "x", "value": "y"}])
    assert snapshot(t.db) == before
    t.log_batch(run, params=[{"key": "lr", "value": "0.1"}])  # the same value again is fine


def test_finished_and_deleted_runs_take_no_writes_until_resumed(t):
    """A FINISHED run refuses writes; setting it RUNNING again (start_run(run_id=...)) accepts them; a deleted run refuses them."""
    run = t.create_run("0").info.run_id
    t.update_run(run, status="FINISHED")
    assert t.get_run(run).info.end_time is not None
    with pytest.raises(InvalidInput, match="FINISHED"):
        t.log_batch(run, metrics=[m("k", 1.0)])
    t.update_run(run, status="RUNNING")
    t.log_batch(run, metrics=[m("k", 1.0)])
    t.set_run_deleted(run, True)
    with pytest.raises(InvalidInput, match="active"):
        t.log_batch(run, metrics=[m("k", 2.0)])
    assert t.search_runs(["0"], view_type="DELETED_ONLY")[0][0].info.run_id == run


entries = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 3), st.sampled_from([0.0, 1.0, -2.5, 3.0, math.nan, math.inf])), min_size=1, max_size=30
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries, st.integers(1, 7))
def test_latest_metric_and_paged_history(t, values, page):
    """The run's metric is the one with the largest (step, timestamp, value); paging the history returns every distinct entry once."""
    run = t.create_run("0").info.run_id
    t.log_batch(run, metrics=[m("k", v, step, ts) for step, ts, v in values])
    latest = next(x for x in t.get_run(run).data["metrics"] if x["key"] == "k")
    key = lambda e: (e[0], e[1], -math.inf if math.isnan(e[2]) else e[2])  # noqa: E731
    step, ts, value = max(values, key=key)
    assert (latest["step"], latest["timestamp"]) == (step, ts)
    stored = 1.7976931348623157e308 if value == math.inf else value
    assert (math.isnan(latest["value"]) and math.isnan(value)) or latest["value"] == stored
    seen, token = [], None
    while True:
        chunk, token = t.metric_history(run, "k", page, token)
        assert len(chunk) <= page
        seen += chunk
        if token is None:
            break
    distinct = {(s, ts_, "nan" if math.isnan(v) else v) for s, ts_, v in values}
    assert len(seen) == len(distinct)
    assert [(x.step, x.timestamp) for x in seen] == sorted((x.step, x.timestamp) for x in seen)


def test_migration_5_keeps_every_metric_entry_and_its_order(tmp_path):
    """A v4 database (history with a rowid and a unique index) upgrades to the keyed table with the same entries, paged the same way."""
    db = Database(tmp_path / "s.sqlite", MIGRATIONS[:4])
    old = Tracker(db, BlobStore(tmp_path / "blobs"))
    run = old.create_run("0").info.run_id
    values = [(s, ts, v) for s in range(4) for ts in (2, 1) for v in (0.5, math.nan, -1.0)] + [(1, 1, 0.5)]  # one duplicate
    old.log_batch(run, metrics=[m("k", v, s, ts) for s, ts, v in values])
    before = old.metric_history(run, "k", 1000)[0]
    latest = old.get_run(run).data["metrics"]
    db.close()
    db = Database(tmp_path / "s.sqlite", MIGRATIONS)
    try:
        new = Tracker(db, BlobStore(tmp_path / "blobs"))
        assert db.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)
        after = new.metric_history(run, "k", 1000)[0]
        key = lambda x: (x.step, x.timestamp, x.value if not math.isnan(x.value) else "nan")  # noqa: E731
        assert sorted(map(key, after), key=str) == sorted(map(key, before), key=str) and len(after) == 4 * 2 * 3
        assert [(x.step, x.timestamp) for x in after] == sorted((x.step, x.timestamp) for x in after)
        assert new.get_run(run).data["metrics"] == latest
        paged, token = [], None
        while True:
            chunk, token = new.metric_history(run, "k", 5, token)
            paged += chunk
            if token is None:
                break
        assert list(map(key, paged)) == list(map(key, after))
        new.log_batch(run, metrics=[m("k", 0.5, 1, 1), m("k", 9.0, 9, 9)])  # the duplicate is still stored once
        assert len(new.metric_history(run, "k", 1000)[0]) == 4 * 2 * 3 + 1
    finally:
        db.close()


def test_registration_links_run_and_version_both_ways(t, tmp_path):
    """A version registered from run artifacts carries the run, its params and dataset digests; the run lists the version."""
    run = t.create_run("0").info.run_id
    t.log_batch(run, params=[{"key": "lr", "value": "0.1"}], metrics=[m("auc", 0.9)])
    t.log_inputs(run, [{"dataset": {"name": "train", "digest": "d1", "source_type": "local", "source": "x"}}])
    art = t.get_run(run).info.artifact_uri.removeprefix("mlflow-artifacts:/")
    f = tmp_path / "MLmodel"
    f.write_text("flavors: {}\n")
    t.put_artifact(f"{art}/model/MLmodel", f)
    rec = t.register_from_artifacts("churn", f"{art}/model", run_id=run, description="", actor="test")
    assert rec.version == 1 and [x.path for x in rec.files] == ["MLmodel"]
    assert rec.lineage["run_id"] == run and rec.lineage["params"] == {"lr": "0.1"} and rec.lineage["dataset_digests"] == ["d1"]
    assert t.registered_versions(run) == [{"model": "churn", "version": 1}]
    assert {x["key"]: x["value"] for x in t.get_run(run).data["tags"]}["shepherd.registered_versions"] == "churn/1"


def test_registrations_from_one_run_at_once_are_all_linked_back(t, tmp_path):
    """Several versions registered from the same run at the same moment: the run's
    shepherd.registered_versions tag lists every one of them."""
    run = t.create_run("0").info.run_id
    art = t.get_run(run).info.artifact_uri.removeprefix("mlflow-artifacts:/")
    f = tmp_path / "MLmodel"
    f.write_text("flavors: {}\n")
    t.put_artifact(f"{art}/model/MLmodel", f)
    names = [f"m{i}" for i in range(4)]

    def register(worker: int, _: int) -> None:
        t.register_from_artifacts(names[worker], f"{art}/model", run_id=run, description="", actor="test")

    assert at_once(register, len(names)) == []
    tag = {x["key"]: x["value"] for x in t.get_run(run).data["tags"]}["shepherd.registered_versions"]
    assert sorted(tag.split(",")) == [f"{n}/1" for n in names]
    assert t.registered_versions(run) == [{"model": n, "version": 1} for n in names]


def test_artifact_paths_cannot_escape(t, tmp_path):
    """Artifact paths with .. or a leading / are refused."""
    f = tmp_path / "x"
    f.write_text("x")
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(InvalidInput):
            t.put_artifact(bad, f)


def test_logged_model_tags_and_params_set_at_once_are_all_kept(t):
    """MLflow's set_logged_model_tags / log_logged_model_params add keys to a JSON object. Calls at
    the same moment (one thread each, started together) must each keep the other's keys."""
    from shepherd.tracking.mlflow import MlflowApi

    api = MlflowApi(t)
    model_id = api.create_logged_model({"experiment_id": "0", "name": "m"}, "t")["model"]["info"]["model_id"]
    rounds = 25

    def add(worker: int, i: int) -> None:  # workers 0-1 set tags, 2-3 log params
        kind, k = ("tag", "param")[worker // 2], worker % 2
        item = [{"key": f"{kind}{k}-{i}", "value": str(i)}]
        if kind == "tag":
            api.set_logged_model_tags({"model_id": model_id, "tags": item}, "t")
        else:
            api.log_logged_model_params({"model_id": model_id, "params": item}, "t")

    assert at_once(add, 4, rounds) == []
    got = api.get_logged_model({"model_id": model_id}, "t")["model"]
    tags = {x["key"] for x in got["info"]["tags"]}
    params = {x["key"] for x in got["data"]["params"]}
    assert tags == {f"tag{k}-{i}" for k in range(2) for i in range(rounds)}
    assert params == {f"param{k}-{i}" for k in range(2) for i in range(rounds)}


def test_logged_model_params_without_a_key_are_refused_naming_the_field(t):
    from shepherd.tracking.mlflow import MlflowApi

    api = MlflowApi(t)
    with pytest.raises(InvalidInput) as info:
        api.create_logged_model({"experiment_id": "0", "params": [{"value": "1"}]}, "t")
    assert info.value.field == "params[0]"
    model_id = api.create_logged_model({"experiment_id": "0"}, "t")["model"]["info"]["model_id"]
    with pytest.raises(InvalidInput) as info:
        api.log_logged_model_params({"model_id": model_id, "params": [{"value": "1"}]}, "t")
    assert info.value.field == "params[0]"
