"""Run search against MLflow's own in-memory implementation (mlflow.utils.search_utils) as the oracle."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shepherd.errors import InvalidInput
from shepherd.store.schema import MIGRATIONS
from shepherd.store.blobs import BlobStore
from shepherd.store.sqlite import Database
from shepherd.tracking.service import Tracker

mlflow_search = pytest.importorskip("mlflow.utils.search_utils")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An experiment of 60 runs with overlapping metrics, params and tags (some missing), and its MLflow entities."""
    from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

    d = tmp_path_factory.mktemp("search")
    db = Database(d / "s.sqlite", MIGRATIONS)
    t = Tracker(db, BlobStore(d / "blobs"))
    exp = t.create_experiment("search")
    entities = []
    for i in range(60):
        run = t.create_run(exp, user_id=f"user{i % 3}", start_time=1_000 + i * 7 % 60, run_name=f"run-{i % 11}")
        metrics = [{"key": "acc", "value": (i * 37 % 100) / 100, "timestamp": 5, "step": 1}] if i % 5 else []
        metrics += [{"key": "loss", "value": float(i % 7), "timestamp": 5, "step": 0}] if i % 4 else []
        params = [{"key": "lr", "value": ["0.1", "0.01", "0.001", "Adam"][i % 4]}] + ([{"key": "opt", "value": ["adam", "sgd", "ADAM"][i % 3]}] if i % 2 else [])
        tags = [{"key": "team", "value": ["ml", "data", "ML"][i % 3]}] if i % 3 else []
        t.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        if i % 6 == 0:
            t.update_run(run.info.run_id, status="FINISHED", end_time=2_000 + i)
        got = t.get_run(run.info.run_id)
        info = RunInfo(
            run_id=got.info.run_id, experiment_id=exp, user_id=got.info.user_id, status=got.info.status,
            start_time=got.info.start_time, end_time=got.info.end_time, lifecycle_stage="active",
            artifact_uri=got.info.artifact_uri, run_name=got.info.run_name,
        )
        data = RunData(
            metrics=[Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in got.data["metrics"]],
            params=[Param(p["key"], p["value"]) for p in got.data["params"]],
            tags=[RunTag(x["key"], x["value"]) for x in got.data["tags"]],
        )
        entities.append(Run(info, data))
    yield t, exp, entities
    db.close()


CLAUSES = st.sampled_from([
    "metrics.acc > 0.5", "metrics.acc <= 0.37", "metrics.loss = 3", "metrics.loss != 2", "metrics.acc >= 0",
    "params.lr = '0.1'", "params.lr != 'Adam'", "params.opt LIKE 'ad%'", "params.opt ILIKE 'ad%'", "params.lr LIKE '%0_'",
    "tags.team = 'ml'", "tags.team ILIKE 'ML'", "tags.team != 'data'", "tags.`team` LIKE 'M%'",
    "attributes.status = 'FINISHED'", "attributes.status != 'RUNNING'", "attributes.user_id = 'user1'",
    "attributes.start_time > 1030", "attributes.run_name = 'run-3'", "attributes.run_name LIKE 'run-1%'",
])
ORDERS = st.sampled_from([
    [], ["metrics.acc DESC"], ["metrics.acc ASC"], ["metrics.loss DESC", "metrics.acc ASC"], ["params.lr"], ["tags.team DESC"],
    ["attributes.start_time ASC"], ["attributes.run_name DESC"],
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(CLAUSES, min_size=0, max_size=3), ORDERS)
def test_filter_and_order_equal_mlflow(world, clauses, order):
    """For any AND of clauses and any order_by, the matching runs and their order are MLflow's own."""
    t, exp, entities = world
    text = " and ".join(clauses)
    got = [r.info.run_id for r in t.search_runs([exp], text, max_results=1000, order_by=order)[0]]
    expected = mlflow_search.SearchUtils.sort(mlflow_search.SearchUtils.filter(entities, text), order)
    expected_ids = [r.info.run_id for r in expected]
    assert sorted(got) == sorted(expected_ids), text
    if order:
        # MLflow breaks ties by start_time DESC then run_id, as Shepherd does
        assert got == expected_ids, (text, order)


def test_in_lists_match_membership(world):
    """IN / NOT IN (MLflow has them for run_id; Shepherd also for params, tags and string attributes) test membership."""
    t, exp, entities = world
    some = [r.info.run_id for r in entities[:3]]
    ids = ", ".join(f"'{i}'" for i in some)
    assert sorted(r.info.run_id for r in t.search_runs([exp], f"attributes.run_id IN ({ids})")[0]) == sorted(some)
    got = {r.info.run_id for r in t.search_runs([exp], "params.lr IN ('0.1', '0.001')", max_results=1000)[0]}
    assert got == {r.info.run_id for r in entities if r.data.params.get("lr") in ("0.1", "0.001")}
    got = {r.info.run_id for r in t.search_runs([exp], "tags.team NOT IN ('ml')", max_results=1000)[0]}
    assert got == {r.info.run_id for r in entities if "team" in r.data.tags and r.data.tags["team"] != "ml"}


def test_pages_cover_everything_once(world):
    """Walking page tokens returns every matching run exactly once, in the unpaged order."""
    t, exp, _ = world
    full = [r.info.run_id for r in t.search_runs([exp], "metrics.acc > 0.2", max_results=1000, order_by=["metrics.acc DESC"])[0]]
    seen, token = [], None
    while True:
        page, token = t.search_runs([exp], "metrics.acc > 0.2", max_results=7, order_by=["metrics.acc DESC"], page_token=token)
        seen += [r.info.run_id for r in page]
        if token is None:
            break
    assert seen == full and len(full) > 7


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("metrics.acc <<< 1", "needs a number"),
        ("metrics.acc LIKE 'x'", "does not apply to metrics"),
        ("params.lr > '1'", "does not apply to params"),
        ("colour.x = 'y'", "not one of metrics"),
        ("metrics.acc > 1 or metrics.acc < 0", "OR is not supported"),
        ("attributes.flavour = 'x'", "unknown attribute"),
        ("params.lr = 0.1", "needs a quoted string"),
        ("params.lr IN '0.1'", "parenthesised list"),
        ("metrics.acc >", "ends too early"),
        ("tags.t IS NOT", "IS [NOT] NULL"),
    ],
)
def test_bad_filters_name_the_problem(world, text, fragment):
    """A malformed filter is INVALID_PARAMETER_VALUE on `filter`, saying what is wrong."""
    t, exp, _ = world
    with pytest.raises(InvalidInput) as info:
        t.search_runs([exp], text)
    assert info.value.field == "filter" and fragment in info.value.message
    assert info.value.code == "INVALID_PARAMETER_VALUE"


def test_bad_order_and_token_are_refused(world):
    """A malformed order_by or page_token names its field."""
    t, exp, _ = world
    with pytest.raises(InvalidInput) as info:
        t.search_runs([exp], "", order_by=["nonsense"])
    assert info.value.field == "order_by"
    with pytest.raises(InvalidInput) as info:
        t.search_runs([exp], "", page_token="not-base64!")
    assert info.value.field == "page_token"
