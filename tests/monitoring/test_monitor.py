"""Monitoring end to end on the real appliance: prediction log, feedback, drift windows, performance, alerts."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import duckdb
import msgspec
import numpy as np
import pytest
from litestar.testing import TestClient
from msgspec import to_builtins as msgspec_builtins
from prometheus_client import CollectorRegistry

from shepherd import config as config_mod
from shepherd.app import create_app
from shepherd.appliance import Appliance
from shepherd.auth import create_token
from shepherd.errors import Conflict
from shepherd.monitoring.references import VersionReference
from shepherd.serving import inference
from shepherd.store import audit

IRIS_LOW = np.array([5.1, 3.5, 1.4, 0.2], dtype=np.float32)


def _build_iris(out: Path, seed: int = 0) -> Path:
    """The demo bundle (a model trained with `seed`), signed with out/keys (made when missing)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_model", Path(__file__).parents[2] / "packaging" / "demo_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.build(out, seed=seed)


@pytest.fixture(scope="session")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo iris bundle (built once per worker) and its public key beside it in keys/."""
    return _build_iris(tmp_path_factory.mktemp("iris"))


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "iris.toml").write_text("[drift]\nwindow_rows = 200\n[performance]\nmin_labels = 20\nwindow_labels = 200\n")
    return d


@pytest.fixture
def mon_config(tmp_path: Path, keys, iris: Path, policies: Path) -> config_mod.Config:
    shutil.copy(iris.parent / "keys" / "demo.pub", keys.trusted_dir / "demo.pub")
    return config_mod.parse({
        "storage": {"data_dir": str(tmp_path / "data")}, "bundles": {"trusted_keys_dir": str(keys.trusted_dir)},
        "auth": {"token_cache_seconds": 0},
        "monitoring": {"interval_s": 3600, "flush_interval_s": 0.05, "policies_dir": str(policies)},
    })


def _serving_iris(mon_config: config_mod.Config, iris: Path, **monitoring) -> Appliance:
    """A started appliance on mon_config, with these [monitoring] settings changed, serving the iris bundle as
    deployment "iris" (deployed and promoted). The caller closes it."""
    raw = msgspec_builtins(mon_config)
    raw["monitoring"].update(monitoring)
    a = Appliance(config_mod.parse(raw))
    a.start()
    try:
        a.importer.import_file(iris, actor="t")

        async def deploy():
            await a.deployments.deploy("iris", "iris", 1, actor="t")
            await a.deployments.promote("iris", actor="t")

        asyncio.run(deploy())
    except BaseException:
        a.close()
        raise
    return a


@pytest.fixture
def appl(mon_config: config_mod.Config, iris: Path):
    a = _serving_iris(mon_config, iris)
    yield a
    a.close()


def _body(rows: np.ndarray, request_id: str | None = None) -> bytes:
    import json

    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]}
    if request_id:
        body["id"] = request_id
    return json.dumps(body).encode()


def serve(a: Appliance, rows_list: list[np.ndarray], ids: list[str | None] | None = None) -> list[dict]:
    import json

    async def go():
        out = []
        for i, rows in enumerate(rows_list):
            rid = ids[i] if ids else None
            r = await inference.infer_for(a, "iris", None, _body(rows, rid), None)
            out.append(json.loads(r.body))
        return out

    return asyncio.run(go())


def profiled(a: Appliance, model: str, version: int) -> VersionReference | None:
    """The version's reference profile, once the background build after its load has stored it (60 s at most)."""
    deadline = time.monotonic() + 60
    while a.references.get(model, version) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return a.references.get(model, version)


def reference_like(n: int, seed: int = 0) -> np.ndarray:
    """Rows drawn from the reference sample itself (no drift)."""
    ref = duckdb.sql(f"SELECT * FROM read_parquet('{_ref_path()}')").fetchnumpy()
    x = np.column_stack([ref[c] for c in ref]).astype(np.float32)
    return x[np.random.default_rng(seed).integers(0, len(x), n)]


_REF: list[Path] = []


def _ref_path() -> Path:
    return _REF[0]


@pytest.fixture(autouse=True)
def _remember_ref(iris: Path):
    _REF[:] = [iris.parent / "reference.parquet"]


def test_every_request_is_logged_with_ids_inputs_outputs_and_slot(appl: Appliance):
    """Each answered request lands in DuckDB after a flush: id (given or generated and echoed), x, y, version, slot."""
    rows = reference_like(5)
    answers = serve(appl, [rows[i:i + 1] for i in range(5)], ids=["a", None, "c", None, "e"])
    assert answers[0]["id"] == "a" and answers[1]["id"] and answers[1]["id"] != "a"
    assert appl.predlog.flush()
    got = appl.events.cursor().execute(
        "SELECT request_id, deployment, model, version, slot, x, y FROM predictions ORDER BY seq"
    ).fetchall()
    assert [g[0] for g in got] == [a["id"] for a in answers]
    for g, row, ans in zip(got, rows, answers):
        assert g[1:5] == ("iris", "iris", 1, "primary")
        np.testing.assert_allclose(g[5], row.astype(np.float64), rtol=1e-6)
        label = ans["outputs"][0]["data"][0]
        probs = ans["outputs"][1]["data"]
        np.testing.assert_allclose(g[6], [label, *probs], rtol=1e-6)


def test_a_deployed_versions_reference_is_profiled_before_any_request(appl: Appliance):
    """Deploying a version profiles its bundle's reference (inputs, and outputs through the loaded model) in the
    background, before any request is served or any monitor pass runs."""
    ref = profiled(appl, "iris", 1)
    assert ref is not None and ref.outputs is not None
    assert ref.outputs.numeric_names  # the model ran over the reference rows
    info = appl.references.info("iris", 1)
    assert info is not None and info.source == "bundle" and info.actor == "import"
    assert appl.events.cursor().execute("SELECT count(*) FROM predictions").fetchone()[0] == 0
    assert appl.events.cursor().execute("SELECT count(*) FROM drift_windows").fetchone()[0] == 0


def test_a_reference_stored_meanwhile_is_kept_and_adopting_over_it_is_refused(appl: Appliance, monkeypatch):
    """References never change. A bundle profile that finds one stored since it looked (the monitor
    and a request building it at once) returns the stored one; an adoption that does gets 409, not
    a database error; and the stored reference is untouched either way."""
    profiled(appl, "iris", 1)
    before = appl.references.info("iris", 1)
    assert before is not None and before.source == "bundle"
    real = appl.events.reference
    calls = []

    def missing_once(model, version):  # as if the other builder stored it just after this one looked
        calls.append((model, version))
        return None if len(calls) == 1 else real(model, version)

    serve(appl, [reference_like(1, seed=i) for i in range(20)])
    assert appl.predlog.flush()
    appl.references._cache.clear()
    monkeypatch.setattr(appl.events, "reference", missing_once)
    ref = appl.monitor.reference("iris", "iris", 1)
    assert ref is not None and ref == msgspec.msgpack.decode(real("iris", 1)["profile"], type=VersionReference)
    calls.clear()
    with pytest.raises(Conflict, match="already has a reference"):
        appl.monitor.adopt_reference("iris", "iris", 1, 20, "op")
    assert len(calls) == 1  # the adoption got past its own check, as in the race
    assert appl.references.info("iris", 1) == before


def test_nulls_in_a_bundles_reference_are_missing_values_not_zeros(appliance: Appliance, keys, tmp_path: Path):
    """A NULL in reference.parquet (pandas writes NaN as one) is a missing value of the reference: NaN in the
    version's table and counted in the profile's missing rate, never a zero in its bins and sorted sample.
    DuckDB's fetchnumpy masks NULLs, and a masked array read as a plain one gives 0 in their place."""
    import hashlib

    from shepherd.bundles.create import create
    from tests.conftest import METADATA, write_model

    work = tmp_path / "nulls"
    work.mkdir()
    meta = work / "meta.toml"
    meta.write_text(METADATA.format(name="tiny", digest=hashlib.sha256(b"nulls").hexdigest()))
    ref = work / "reference.parquet"
    duckdb.execute(
        "COPY (SELECT CASE WHEN i % 4 = 0 THEN NULL ELSE 5 + random() END AS a, "
        "CASE WHEN i % 5 = 0 THEN NULL ELSE i END::BIGINT AS b, 5 + random() AS c FROM range(100) t(i)) "
        f"TO '{ref}' (FORMAT parquet)"
    )
    create(model=write_model(work / "model.onnx"), metadata=meta, out=work / "tiny.shb", reference=ref, sign_key=keys.private)
    appliance.importer.import_file(work / "tiny.shb", actor="t")

    _, _, table = appliance.version_info("tiny", 1)
    assert np.isnan(table["a"]).sum() == 25 and np.nanmin(table["a"]) >= 5
    assert np.isnan(table["b"]).sum() == 20 and np.nanmin(table["b"]) == 1
    assert not np.isnan(table["c"]).any()

    asyncio.run(appliance.deployments.deploy("tiny", "tiny", 1, actor="t"))  # the model runs over the reference too
    profile = profiled(appliance, "tiny", 1)
    assert profile is not None and profile.outputs is not None
    inputs = {f.name: f for f in profile.inputs.numeric}
    assert (inputs["a"].n_missing, inputs["a"].n_values, inputs["a"].missing_rate) == (25, 75, 0.25)
    assert (inputs["b"].n_missing, inputs["b"].missing_rate) == (20, 0.2)
    assert profile.inputs.sample("a").min() >= 5 and profile.inputs.sample("b").min() == 1
    # y = x + 1 over the same rows: a missing input is a missing output, not 0 + 1
    outputs = profile.outputs.numeric
    assert [f.n_missing for f in outputs] == [25, 20, 0]
    assert profile.outputs.sample(outputs[0].name).min() >= 6


def test_an_integer_input_gets_the_reference_rows_without_a_missing_value(appliance: Appliance):
    """An INT64 input has no NaN to give the model: the outputs' profile runs the model over the reference
    rows that have every feature, while the inputs' profile still counts the missing ones."""
    from shepherd.monitoring.layout import build_layout

    sig = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, 2]}], "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]}
    table = {"a": np.array([1.0, np.nan, 3.0, 4.0]), "b": np.array([1.0, 2.0, 3.0, np.nan])}
    fed = []

    def run(feed):
        fed.append(feed["x"])
        return {"y": feed["x"].sum(axis=1, keepdims=True).astype(np.float32)}

    ref = appliance.references.from_bundle("ints", 1, table, build_layout(sig, ["a", "b"]), 10, [], run)
    assert fed[0].dtype == np.int64 and fed[0].tolist() == [[1, 1], [3, 3]]
    assert [f.n_missing for f in ref.inputs.numeric] == [1, 1]
    assert ref.outputs is not None and ref.outputs.numeric[0].n_values == 2
    assert ref.outputs.sample(ref.outputs.numeric[0].name).tolist() == [2.0, 6.0]


def test_a_multi_row_request_is_logged_row_by_row(appl: Appliance):
    """A request of 3 rows becomes 3 logged rows: one id, row indices 0-2, each row's inputs and outputs."""
    rows = reference_like(3, seed=7)
    (answer,) = serve(appl, [rows])
    assert appl.predlog.flush()
    got = appl.events.cursor().execute('SELECT request_id, "row", x, y FROM predictions ORDER BY seq').fetchall()
    assert [(g[0], g[1]) for g in got] == [(answer["id"], i) for i in range(3)]
    labels = answer["outputs"][0]["data"]
    probs = np.array(answer["outputs"][1]["data"]).reshape(3, -1)
    for i, g in enumerate(got):
        np.testing.assert_allclose(g[2], rows[i].astype(np.float64), rtol=1e-6)
        np.testing.assert_allclose(g[3], [labels[i], *probs[i]], rtol=1e-6)


def test_generated_request_ids_are_unique_hex_and_differ_between_processes():
    """Generated ids look like a UUID's hex (32 digits), never repeat, and carry a per-process random prefix."""
    import subprocess
    import sys

    ids = [inference.new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    other = subprocess.run([sys.executable, "-c", "from shepherd.serving import inference; print(inference.new_request_id())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert len(other) == 32 and other[:20] != ids[0][:20]


def test_monitor_kernel_threads_follow_the_config(mon_config: config_mod.Config, iris: Path):
    """monitoring.kernel_threads caps the drift kernels' threads on the monitor thread; 0 means half the CPUs."""
    import numba

    from shepherd.monitoring.monitor import Monitor

    def threads(n: int) -> int:
        cfg = config_mod.parse({**msgspec_builtins(mon_config), "monitoring": {**msgspec_builtins(mon_config)["monitoring"], "kernel_threads": n}})
        return Monitor(cfg, None, None, None, list, None, CollectorRegistry(), lambda m, v: None).kernel_threads()

    top = numba.config.NUMBA_NUM_THREADS
    assert threads(1) == 1
    assert threads(0) == max(1, min(top, config_mod.cpus() // 2))
    assert threads(1000) == top


def test_sigterm_path_flushes_everything_and_a_reopen_sees_it(mon_config: config_mod.Config, iris: Path):
    """close() (the shutdown path) writes every buffered record before the stores close."""
    a = _serving_iris(mon_config, iris, flush_interval_s=3600)
    serve(a, [reference_like(1, seed=i) for i in range(37)])
    a.close()
    with duckdb.connect(str(mon_config.data_dir / "events.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM predictions").fetchone()[0] == 37


def test_sampling_keeps_about_the_configured_share(mon_config: config_mod.Config, iris: Path):
    """sample_rate = 0.25 keeps roughly a quarter of requests; 0 keeps none."""
    a = _serving_iris(mon_config, iris, sample_rate=0.25)
    serve(a, [reference_like(1, seed=i) for i in range(800)])
    a.predlog.flush()
    n = a.events.cursor().execute("SELECT count(*) FROM predictions").fetchone()[0]
    a.close()
    assert 120 <= n <= 280, n


def test_drift_window_flags_a_shift_and_raises_one_warning(appl: Appliance):
    """A window like the reference is clean; a shifted one drifts, is stored per feature, sets gauges and raises one Warning."""
    serve(appl, [reference_like(200, seed=1)])
    appl.predlog.flush()
    appl.monitor.tick()
    hist = appl.monitor.drift_history("iris", None, None, 10)
    assert len(hist) == 1 and hist[0]["n_rows"] == 200 and not hist[0]["drifted"]
    names = {f["feature"] for f in hist[0]["features"]}
    assert {"sepal_length", "sepal_width", "petal_length", "petal_width"} <= names, "reference column names are used"
    assert any(f["role"] == "output" for f in hist[0]["features"]), "prediction drift is computed"

    shifted = reference_like(400, seed=2) + np.float32(3.0)
    serve(appl, [shifted[:200], shifted[200:]])
    appl.predlog.flush()
    appl.monitor.tick()
    hist = appl.monitor.drift_history("iris", None, None, 10)
    assert [w["window_id"] for w in hist] == [3, 2, 1]
    assert hist[0]["drifted"] and hist[1]["drifted"]
    f = {x["feature"]: x for x in hist[0]["features"]}
    assert f["petal_length"]["psi"] > 0.2 and f["petal_length"]["pvalue_adjusted"] < 0.05
    alerts = appl.alerts.list(deployment="iris")
    drift_alerts = [x for x in alerts if x.kind == "data_drift"]
    assert len(drift_alerts) == 1 and drift_alerts[0].level == "warning", "two drifted windows are one incident"
    text = _metrics(appl)
    assert 'shepherd_drift_detected{deployment="iris",model="iris",version="1"} 1.0' in text
    assert 'shepherd_drift_feature_psi{deployment="iris",feature="petal_length",model="iris",version="1"}' in text


def test_an_alert_that_cannot_be_recorded_is_raised_at_the_next_pass(appl: Appliance, monkeypatch):
    """The windows of a pass are stored before their alerts; when the alerts table cannot take one (a failed SQLite
    write), the alert waits for the next pass instead of being lost with the window that caused it."""
    import apsw

    real = appl.alerts.raise_alert
    failing = [True]

    def raise_alert(*args, **kwargs):
        if failing[0]:
            raise apsw.IOError("disk I/O error")
        return real(*args, **kwargs)

    monkeypatch.setattr(appl.alerts, "raise_alert", raise_alert)
    serve(appl, [reference_like(200, seed=2) + np.float32(3.0)])
    appl.predlog.flush()
    appl.monitor.tick()
    assert appl.monitor.drift_history("iris", None, None, 10)[0]["drifted"]
    assert not appl.alerts.list(deployment="iris")
    appl.monitor.tick()  # the store still fails: still waiting, not lost
    failing[0] = False
    appl.monitor.tick()
    alerts = appl.alerts.list(deployment="iris")
    assert [(x.kind, x.level, x.details["window_id"]) for x in alerts] == [("data_drift", "warning", 1)]
    appl.monitor.tick()
    assert len(appl.alerts.list(deployment="iris")) == 1 and appl.alerts.list(deployment="iris")[0].occurrences == 1


def _metrics(a: Appliance) -> str:
    from prometheus_client import generate_latest

    return generate_latest(a.metrics.registry).decode()


def test_feedback_joins_late_labels_reports_unknown_and_newest_wins(appl: Appliance):
    """Labels match by request id; unknown ids come back; a second label for a request replaces the first."""
    answers = serve(appl, [reference_like(1, seed=i) for i in range(3)])
    from shepherd.monitoring import feedback as fb

    items = [fb.Label(answers[2]["id"], 1.0), fb.Label(answers[0]["id"], 0.0), fb.Label("nope", 1.0), fb.Label(answers[0]["id"], 2.0)]
    res = fb.ingest(appl.events, appl.predlog, items)
    assert res.accepted == 2 and res.replaced == 0 and [u.request_id for u in res.unknown] == ["nope"]
    res = fb.ingest(appl.events, appl.predlog, [fb.Label(answers[2]["id"], 2.0)])
    assert res.replaced == 1
    got = dict(appl.events.cursor().execute("SELECT request_id, label FROM feedback").fetchall())
    assert got == {answers[0]["id"]: 2.0, answers[2]["id"]: 2.0}



def test_a_deployment_name_reused_for_another_model_keeps_each_models_windows_apart(appl: Appliance, policies: Path, make_bundle):
    """After an undeploy the same name serves another model, whose versions count from 1 again. Each model's windows
    hold its own rows only, judged by its own reference and columns; window ids go on; labels and streams keep apart."""
    import json

    from shepherd.monitoring import feedback as fb

    (policies / "svc.toml").write_text("[drift]\nwindow_rows = 100\n")
    appl.importer.import_file(make_bundle(name="tiny", reference=True), actor="t")

    async def serve_as(model: str, bodies: list[bytes]) -> list[dict]:
        await appl.deployments.deploy("svc", model, 1, actor="t")
        await appl.deployments.promote("svc", actor="t")
        return [json.loads((await inference.infer_for(appl, "svc", None, b, None)).body) for b in bodies]

    rng = np.random.default_rng(3)
    tiny = [json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": rng.random(3).tolist()}]}).encode()
            for _ in range(200)]
    asyncio.run(serve_as("tiny", tiny))
    assert profiled(appl, "tiny", 1)
    appl.predlog.flush()
    appl.monitor.tick()
    asyncio.run(appl.deployments.undeploy("svc", actor="t"))
    answers = asyncio.run(serve_as("iris", [_body(reference_like(1, seed=i)) for i in range(300)]))
    assert profiled(appl, "iris", 1)
    fb.ingest(appl.events, appl.predlog, [fb.Label(a["id"], float(a["outputs"][0]["data"][0])) for a in answers[:60]])
    appl.predlog.flush()
    appl.monitor.tick()

    hist = sorted(appl.monitor.drift_history("svc", None, None, 20), key=lambda w: w["window_id"])
    assert [(w["model"], w["window_id"], w["n_rows"]) for w in hist] == [
        ("tiny", 1, 100), ("tiny", 2, 100), ("iris", 3, 100), ("iris", 4, 100), ("iris", 5, 100)]
    names = {m: {frozenset(f["feature"] for f in w["features"]) for w in hist if w["model"] == m} for m in ("tiny", "iris")}
    assert len(names["tiny"]) == len(names["iris"]) == 1 and names["tiny"] != names["iris"]
    assert all(f["n"] == 100 for w in hist for f in w["features"])
    assert not any(w["drifted"] for w in hist if w["model"] == "iris")  # iris rows from iris's reference, judged by it
    assert [w["performance"] and w["performance"]["n_labels"] for w in hist] == [None, None, 60, None, None]
    [evaluation] = appl.events.performance("svc", None, None, 10)
    assert (evaluation["model"], evaluation["n_labels"]) == ("iris", 60)


def test_a_failed_window_pass_does_not_cost_new_labels_their_evaluation(appl: Appliance, monkeypatch):
    """Labels arrive, and the pass that should evaluate them fails in its drift windows: the evaluation still runs in
    that pass, and when it is the evaluation that fails, the next pass runs it (the feedback is not marked seen);
    a failing streams step neither stops the evaluation nor makes it run again."""
    from shepherd.monitoring import feedback as fb

    answers = serve(appl, [reference_like(1, seed=i) for i in range(60)])
    fb.ingest(appl.events, appl.predlog, [fb.Label(x["id"], 0.0) for x in answers[:50]])

    def broken(*args, **kwargs):
        raise RuntimeError("transient")

    real_windows, real_performance = appl.monitor._windows, appl.monitor._performance
    monkeypatch.setattr(appl.monitor, "_windows", broken)
    appl.monitor.tick()
    evaluations = appl.events.performance("iris", None, None, 10)
    assert [e["n_labels"] for e in evaluations] == [50]
    monkeypatch.setattr(appl.monitor, "_windows", real_windows)

    fb.ingest(appl.events, appl.predlog, [fb.Label(x["id"], 0.0) for x in answers[50:]])
    monkeypatch.setattr(appl.monitor, "_performance", broken)
    appl.monitor.tick()
    assert len(appl.events.performance("iris", None, None, 10)) == 1
    monkeypatch.setattr(appl.monitor, "_performance", real_performance)
    appl.monitor.tick()
    assert [e["n_labels"] for e in appl.events.performance("iris", None, None, 10)] == [60, 50]
    appl.monitor.tick()  # nothing new: no further evaluation
    assert len(appl.events.performance("iris", None, None, 10)) == 2

    # the streams step failing does not make the evaluation run (and store a row) again each pass
    fb.ingest(appl.events, appl.predlog, [fb.Label(answers[0]["id"], 1.0)])
    monkeypatch.setattr(appl.monitor, "_streams_step", broken)
    for _ in range(3):
        appl.monitor.tick()
    assert len(appl.events.performance("iris", None, None, 10)) == 3


def test_each_drift_window_reports_the_performance_of_its_own_labelled_rows(appl: Appliance):
    """A drift window's performance is over the labels of its own rows, joined when asked: a window without labels has
    none, late labels count from the next read, and a replaced label changes it (the newest wins)."""
    from shepherd.monitoring import feedback as fb
    from shepherd.monitoring import performance

    answers = serve(appl, [reference_like(1, seed=i) for i in range(400)])  # two windows of 200 rows
    preds = np.array([a["outputs"][0]["data"][0] for a in answers], dtype=float)
    probs = np.array([a["outputs"][1]["data"] for a in answers], dtype=float)
    truth = preds.copy()
    truth[10:30] = (preds[10:30] + 1) % 3  # 20 of the first window's labelled 100 are wrong
    labelled = list(range(0, 200, 2))
    fb.ingest(appl.events, appl.predlog, [fb.Label(answers[i]["id"], truth[i]) for i in labelled])
    appl.monitor.tick()

    def windows() -> dict[int, dict | None]:
        return {w["window_id"]: w["performance"] for w in appl.monitor.drift_history("iris", None, None, 10)}

    got = windows()
    assert got[2] is None, "no label for any row of the second window"
    first = got[1]
    assert first["task"] == "classification" and first["n_labels"] == 100
    expected = performance.classification(truth[labelled], preds[labelled], probs[labelled])
    assert first["metrics"] == pytest.approx(expected)
    assert first["metrics"]["accuracy"] == pytest.approx(0.9)  # 10 of the 20 wrong ones are on even rows

    late = list(range(200, 250))
    fb.ingest(appl.events, appl.predlog, [fb.Label(answers[i]["id"], preds[i]) for i in late])
    fb.ingest(appl.events, appl.predlog, [fb.Label(answers[10]["id"], preds[10])])  # the first window's label for row 10, corrected
    got = windows()
    assert got[2]["n_labels"] == 50 and got[2]["metrics"]["accuracy"] == 1.0
    assert got[1]["n_labels"] == 100 and got[1]["metrics"]["accuracy"] == pytest.approx(0.91)


def test_a_classifiers_label_must_be_a_class_and_a_bad_one_stores_nothing(client, appl: Appliance, monkeypatch):
    """A fractional label for a request the iris classifier answered refuses the whole send, naming that label, and stores
    nothing; whole numbers are stored; a regressor's answer takes any number."""
    answers = serve(appl, [reference_like(1, seed=i) for i in range(3)])
    h = _h(client, "operator")

    def stored() -> int:
        return appl.events.cursor().execute("SELECT count(*) FROM feedback").fetchone()[0]

    batch = [{"request_id": answers[0]["id"], "label": 1}, {"request_id": answers[1]["id"], "label": 1.5},
             {"request_id": "never-served", "label": 0.5}]  # an unknown id is not checked: it is reported, as before
    r = client.post("/api/v1/feedback", json={"labels": batch}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "labels[1].label", r.text
    assert "classifier iris version 1" in r.text and "1.5" in r.text, r.text
    assert stored() == 0
    r = client.post("/api/v1/feedback", json={"request_id": answers[2]["id"], "label": 2.25}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "label", r.text
    r = client.post("/api/v1/feedback", json={"labels": [batch[0], dict(batch[1], label=2.0), batch[2]]}, headers=h)
    assert r.status_code == 200 and r.json()["accepted"] == 2 and stored() == 2, r.text

    monkeypatch.setattr(appl.monitor, "task_of", lambda deployment, model, version: "regression")
    r = client.post("/api/v1/feedback", json={"request_id": answers[2]["id"], "label": 2.25}, headers=h)
    assert r.status_code == 200 and r.json()["accepted"] == 1 and stored() == 3, r.text

def test_feedback_while_the_log_cannot_flush_is_refused_not_reported_unknown(appl: Appliance, monkeypatch):
    """A label for a request that was answered but is not in DuckDB yet (the flush is stuck or failing) is not an
    unknown id: the whole send is refused (503, retry later) and nothing is stored."""
    from shepherd.errors import Busy
    from shepherd.monitoring import feedback as fb

    answers = serve(appl, [reference_like(1, seed=i) for i in range(3)])
    monkeypatch.setattr(fb, "FLUSH_WAIT_S", 0.2)
    monkeypatch.setattr(appl.predlog, "flush", lambda timeout=30.0: False)
    with pytest.raises(Busy) as err:
        fb.ingest(appl.events, appl.predlog, [fb.Label(a["id"], 1.0) for a in answers])
    assert err.value.status == 503 and "retry" in err.value.message
    assert appl.events.cursor().execute("SELECT count(*) FROM feedback").fetchone()[0] == 0


def test_performance_drop_raises_critical_then_emergency(appl: Appliance):
    """Correct labels give accuracy 1; labels that contradict 30% of predictions drop it >15% below baseline: Emergency."""
    from shepherd.monitoring import feedback as fb

    answers = serve(appl, [reference_like(1, seed=i) for i in range(100)])
    preds = [a["outputs"][0]["data"][0] for a in answers]
    fb.ingest(appl.events, appl.predlog, [fb.Label(a["id"], float(p)) for a, p in zip(answers, preds)])
    appl.monitor.tick()
    perf = appl.monitor.evaluate_performance("iris", "iris", 1, appl.monitor.policy("iris"))
    assert perf["metrics"]["accuracy"] == 1.0 and perf["drop"] <= 0
    assert not [x for x in appl.alerts.list(deployment="iris") if x.kind == "performance_drop"]
    wrong = [fb.Label(a["id"], float((p + 1) % 3)) for a, p in list(zip(answers, preds))[:30]]
    fb.ingest(appl.events, appl.predlog, wrong)
    appl.monitor.tick()
    perf = appl.monitor.evaluate_performance("iris", "iris", 1, appl.monitor.policy("iris"))
    assert perf["metrics"]["accuracy"] == pytest.approx(0.7)
    levels = [x.level for x in appl.alerts.list(deployment="iris") if x.kind == "performance_drop"]
    assert levels == ["emergency"]
    assert 'shepherd_model_performance{deployment="iris",metric="accuracy",model="iris",version="1"} 0.7' in _metrics(appl)


def test_a_baseline_metric_the_bundle_lacks_is_logged_once(appl: Appliance, policies: Path):
    """With no bundle metric to compare with there is no drop, so no Critical or Emergency alert can come:
    the operator hears of it once per version and metric, not on every pass, and not at all when the metric exists."""
    from structlog.testing import capture_logs

    from shepherd.monitoring import feedback as fb

    answers = serve(appl, [reference_like(1, seed=i) for i in range(60)])
    preds = [a["outputs"][0]["data"][0] for a in answers]
    with capture_logs() as logs:
        fb.ingest(appl.events, appl.predlog, [fb.Label(a["id"], float(p)) for a, p in zip(answers[:30], preds[:30])])
        appl.monitor.tick()  # accuracy: in the iris bundle's metrics
        (policies / "iris.toml").write_text((policies / "iris.toml").read_text() + 'baseline_metric = "f1"\n')
        for chunk in (answers[30:45], answers[45:]):
            fb.ingest(appl.events, appl.predlog, [fb.Label(a["id"], 0.0) for a in chunk])
            appl.monitor.tick()
    missing = [e for e in logs if e["event"] == "performance_baseline_missing"]
    assert [(e["model"], e["version"], e["metric"]) for e in missing] == [("iris", 1, "f1")]
    perf = appl.monitor.evaluate_performance("iris", "iris", 1, appl.monitor.policy("iris"))
    assert perf["baseline"] is None and perf["drop"] is None and perf["metrics"]["f1"] is not None


def test_invalid_policy_file_keeps_the_last_good_policy(appl: Appliance, policies: Path):
    """An edited policy that fails validation is refused and the previous one stays in force."""
    assert appl.monitor.policy("iris").drift.window_rows == 200
    import os
    import time

    (policies / "iris.toml").write_text("[drift]\nwindow_rows = -5\n")
    os.utime(policies / "iris.toml", (time.time() + 5, time.time() + 5))
    assert appl.monitor.policy("iris").drift.window_rows == 200
    (policies / "iris.toml").write_text("[drift]\nwindow_rows = 50\n")
    os.utime(policies / "iris.toml", (time.time() + 10, time.time() + 10))
    assert appl.monitor.policy("iris").drift.window_rows == 50


def test_retention_by_rows_keeps_the_newest(mon_config: config_mod.Config, iris: Path):
    """retention_rows keeps only the newest rows (and drops feedback for deleted ones)."""
    a = _serving_iris(mon_config, iris, retention_rows=10)
    answers = serve(a, [reference_like(1, seed=i) for i in range(25)])
    a.predlog.flush()
    deleted = a.events.apply_retention(None, 10)
    ids = [r[0] for r in a.events.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    a.close()
    assert deleted == 15 and ids == [x["id"] for x in answers[-10:]]


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def client(mon_config: config_mod.Config, appl: Appliance):
    toks = {r: create_token(appl.db, role=r, name=f"t-{r}", actor="t")[0] for r in ("viewer", "operator")}
    with TestClient(create_app(mon_config, appliance=appl)) as c:
        c.toks = toks  # type: ignore[attr-defined]
        yield c


def _h(client, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.toks[role]}"}


def test_http_feedback_drift_performance_export(client, appl: Appliance, tmp_path: Path):
    """The monitoring routes work through the real app: feedback, drift history, performance and Parquet export."""
    ids = []
    for i in range(200):
        r = client.post("/v2/models/iris/infer", content=_body(reference_like(1, seed=i) + 3), headers=_h(client, "viewer"))
        assert r.status_code == 200
        ids.append(r.json()["id"])
    r = client.post("/api/v1/feedback", json={"labels": [{"request_id": i, "label": 2} for i in ids] + [{"request_id": "x", "label": 1}]},
                    headers=_h(client, "operator"))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 200 and r.json()["unknown"] == [{"request_id": "x", "label": 1.0, "row": 0}]
    assert client.post("/api/v1/feedback", json={"request_id": ids[0], "label": 2}, headers=_h(client, "viewer")).status_code == 403
    appl.monitor.tick()
    r = client.get("/api/v1/deployments/iris/drift", headers=_h(client, "viewer"))
    assert r.status_code == 200 and r.json()[0]["drifted"] is True
    assert client.get("/api/v1/deployments/iris/drift?from=yesterday", headers=_h(client, "viewer")).json()["field"] == "from"
    assert client.get("/api/v1/deployments/nope/drift", headers=_h(client, "viewer")).status_code == 404
    r = client.get("/api/v1/deployments/iris/performance", headers=_h(client, "viewer"))
    assert r.status_code == 200 and r.json()["current"][0]["n_labels"] == 200
    r = client.get("/api/v1/deployments/iris/predictions", headers=_h(client, "operator"))
    assert r.status_code == 200 and r.headers["x-rows"] == "200"
    (tmp_path / "p.parquet").write_bytes(r.content)
    rows = duckdb.sql(f"SELECT count(*), count(label) FROM read_parquet('{tmp_path / 'p.parquet'}')").fetchall()[0]
    assert rows == (200, 200)
    # one column per feature and output, named as the drift results name them; the names in the file's metadata too
    x_names, y_names = appl.monitor.feature_names("iris", 1)
    assert "petal_length" in x_names and y_names
    got = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / 'p.parquet'}') ORDER BY seq")
    assert got.columns[9:-2] == [f"x.{n}" for n in x_names] + [f"y.{n}" for n in y_names]
    first = dict(zip(got.columns, got.limit(1).fetchall()[0]))
    assert first["x.petal_length"] == pytest.approx(float(reference_like(1, seed=0)[0, x_names.index("petal_length")]) + 3, rel=1e-6)
    (meta,) = duckdb.sql(f"SELECT decode(value) FROM parquet_kv_metadata('{tmp_path / 'p.parquet'}') "
                         "WHERE decode(key) = 'shepherd.features'").fetchall()[0]
    assert msgspec.json.decode(meta) == {"iris:1": {"x": x_names, "y": y_names}}
    # a time range: [from, to)
    ts = [t for (t,) in duckdb.sql(f"SELECT ts FROM read_parquet('{tmp_path / 'p.parquet'}') ORDER BY seq").fetchall()]
    r = client.get("/api/v1/deployments/iris/predictions", params={"from": ts[100].isoformat()}, headers=_h(client, "operator"))
    assert r.status_code == 200 and int(r.headers["x-rows"]) == sum(t >= ts[100] for t in ts)
    r = client.get("/api/v1/deployments/iris/predictions", params={"to": ts[0].isoformat()}, headers=_h(client, "operator"))
    assert r.status_code == 200 and r.headers["x-rows"] == "0"
    r = client.get("/api/v1/deployments/iris/reference", headers=_h(client, "viewer"))
    assert r.status_code == 200 and r.json()["source"] == "bundle" and r.json()["rows"] == 105


def test_reading_the_reference_of_a_version_not_loaded_stores_no_profile(client, appl: Appliance, iris: Path, tmp_path: Path):
    """A profile is stored once, for good, and its outputs' part needs the model: a viewer asking for the reference
    of a version no deployment has loaded gets 404 (nothing stored), and loading the version builds it whole."""
    src = tmp_path / "v2"
    shutil.copytree(iris.parent / "keys", src / "keys")
    appl.importer.import_file(_build_iris(src, seed=1), actor="t")
    r = client.get("/api/v1/deployments/iris/reference?version=2", headers=_h(client, "viewer"))
    assert r.status_code == 404 and "when a deployment loads it" in r.json()["error"], r.text
    assert appl.references.get("iris", 2) is None
    asyncio.run(appl.deployments.deploy("iris", "iris", 2, actor="t"))  # the candidate's load profiles it
    profiled(appl, "iris", 2)
    assert appl.references.get("iris", 2).outputs is not None
    r = client.get("/api/v1/deployments/iris/reference?version=2", headers=_h(client, "viewer"))
    assert r.status_code == 200 and r.json()["source"] == "bundle"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"request_id": "a"}, "label"),
        ({"label": 1}, "request_id"),
        ({"labels": []}, "labels"),
        ({"labels": [{"request_id": "", "label": 1}]}, "labels[0].request_id"),
        ({"labels": [{"request_id": "a", "label": 1, "row": -1}]}, "labels[0].row"),
        ({"labels": [{"request_id": "a", "label": 1}, {"request_id": "b" * 257, "label": 1}]}, "labels[1].request_id"),
        ({"request_id": "", "label": 1}, "request_id"),
        ({"request_id": "a", "label": 1, "row": -1}, "row"),
        ({"request_id": "a", "label": 1, "labels": [{"request_id": "a", "label": 1}]}, "labels"),
        ({"row": 2, "labels": [{"request_id": "a", "label": 1}]}, "row"),
        ({"row": None, "labels": [{"request_id": "a", "label": 1}]}, "row"),
        ({"request_id": "a", "label": 1, "row": None}, "row"),
    ],
)
def test_bad_feedback_names_the_field(client, body, field):
    """Malformed feedback gets a 400 that names the bad field."""
    r = client.post("/api/v1/feedback", json=body, headers=_h(client, "operator"))
    assert r.status_code == 400 and r.json()["field"] == field, r.text


def test_adopt_reference_for_a_version_without_one(client, appl: Appliance, make_bundle):
    """A version shipped without reference.parquet adopts its first N logged rows, once, audited."""
    appl.importer.import_file(make_bundle(), actor="t")

    async def deploy():
        await appl.deployments.deploy("tiny", "tiny", 1, actor="t")
        await appl.deployments.promote("tiny", actor="t")

    asyncio.run(deploy())
    assert client.get("/api/v1/deployments/tiny/reference", headers=_h(client, "viewer")).status_code == 404
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.3]}]}
    for _ in range(30):
        assert client.post("/v2/models/tiny/infer", json=body, headers=_h(client, "viewer")).status_code == 200
    r = client.post("/api/v1/deployments/tiny/reference", json={"rows": 50}, headers=_h(client, "operator"))
    assert r.status_code == 409 and "only 30" in r.json()["error"]
    r = client.post("/api/v1/deployments/tiny/reference", json={"rows": 20}, headers=_h(client, "operator"))
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "adopted" and r.json()["features"] == ["x[0]", "x[1]", "x[2]"]
    assert r.json()["outputs"] == ["y[0]", "y[1]", "y[2]"]
    assert client.post("/api/v1/deployments/tiny/reference", json={"rows": 20}, headers=_h(client, "operator")).status_code == 409
    entries = appl.db.read(lambda c: audit.query(c, action="reference.adopt"))
    assert [e.target for e in entries] == ["tiny:1"]


def test_a_failed_flush_loses_nothing_and_is_retried(appl: Appliance, monkeypatch):
    """When DuckDB refuses a batch, the records go back to the buffer and land with the next flush."""
    real = appl.events.append_predictions
    calls = []

    def flaky(table, versions):
        calls.append(table.num_rows)
        if len(calls) == 1:
            raise RuntimeError("disk full")
        return real(table, versions)

    monkeypatch.setattr(appl.events, "append_predictions", flaky)
    answers = serve(appl, [reference_like(1, seed=i) for i in range(12)])
    assert appl.predlog.flush()
    ids = [r[0] for r in appl.events.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    assert ids == [a["id"] for a in answers] and len(calls) >= 2
    assert appl.predlog.failures._value.get() >= 1


def test_close_flushes_what_arrived_during_the_last_flush(appl: Appliance, monkeypatch):
    """Records appended while a flush is under way (after it took its batch) are flushed by close(), not dropped."""
    import threading

    real = appl.events.append_predictions
    in_flush, release = threading.Event(), threading.Event()

    def slow(table, versions):
        in_flush.set()
        release.wait(10)
        return real(table, versions)

    monkeypatch.setattr(appl.events, "append_predictions", slow)
    first = serve(appl, [reference_like(1, seed=0)])
    assert in_flush.wait(10)  # the flusher holds the first record and waits inside its flush
    later = serve(appl, [reference_like(1, seed=i) for i in range(1, 40)])
    closer = threading.Thread(target=appl.predlog.close)
    closer.start()  # close() while that flush is still running
    time.sleep(0.1)
    release.set()
    closer.join(10)
    ids = [r[0] for r in appl.events.cursor().execute("SELECT request_id FROM predictions ORDER BY seq").fetchall()]
    assert ids == [a["id"] for a in first + later]


def test_full_buffer_drops_and_counts_instead_of_waiting(mon_config: config_mod.Config, iris: Path):
    """With the flusher unable to keep up, records beyond buffer_rows are dropped and counted; requests still succeed."""
    a = _serving_iris(mon_config, iris, buffer_rows=5, flush_interval_s=3600, flush_rows=1000)
    answers = serve(a, [reference_like(1, seed=i) for i in range(8)])
    dropped = a.predlog.dropped._value.get()
    a.close()
    assert len(answers) == 8 and dropped == 3


def test_error_stream_detector_raises_a_warning(appl: Appliance):
    """DDM on the error stream fires when the error rate jumps, and raises an error_stream_drift Warning."""
    from shepherd.monitoring import feedback as fb

    answers = serve(appl, [reference_like(1, seed=i) for i in range(400)])
    preds = [a["outputs"][0]["data"][0] for a in answers]
    good = [fb.Label(a["id"], float(p)) for a, p in zip(answers[:300], preds[:300])]
    bad = [fb.Label(a["id"], float((p + 1) % 3)) for a, p in zip(answers[300:], preds[300:])]
    fb.ingest(appl.events, appl.predlog, good)
    appl.monitor.tick()
    assert not [x for x in appl.alerts.list(deployment="iris") if x.kind == "error_stream_drift"]
    fb.ingest(appl.events, appl.predlog, bad)
    appl.monitor.tick()
    found = [x for x in appl.alerts.list(deployment="iris") if x.kind == "error_stream_drift"]
    assert len(found) == 1 and found[0].level == "warning"


def test_the_error_stream_starts_from_the_present_after_a_restart(mon_config: config_mod.Config, iris: Path):
    """The detectors' state is in memory and starts fresh: after a restart the labels stored before it are not
    replayed into them (that would raise the old incident again), and labels that arrive after it are read."""
    from shepherd.monitoring import feedback as fb

    def bad_then(a: Appliance, good: int, bad: int, seed: int) -> None:
        answers = serve(a, [reference_like(1, seed=seed + i) for i in range(good + bad)])
        preds = [x["outputs"][0]["data"][0] for x in answers]
        fb.ingest(a.events, a.predlog, [fb.Label(x["id"], float(p)) for x, p in zip(answers[:good], preds[:good])])
        a.monitor.tick()
        fb.ingest(a.events, a.predlog, [fb.Label(x["id"], float((p + 1) % 3)) for x, p in zip(answers[good:], preds[good:])])
        a.monitor.tick()

    def incident(a: Appliance):
        (found,) = [x for x in a.alerts.list(deployment="iris") if x.kind == "error_stream_drift"]
        return found

    def detections(a: Appliance) -> float:
        return a.metrics.registry.get_sample_value(
            "shepherd_stream_drift_detections", {"deployment": "iris", "model": "iris", "version": "1", "stream": "error"}) or 0.0

    first = _serving_iris(mon_config, iris)
    try:
        bad_then(first, 300, 100, seed=0)
        assert incident(first).occurrences == 1
    finally:
        first.close()
    again = Appliance(mon_config)
    again.start()
    try:
        again.monitor.tick()
        again.monitor.tick()
        assert detections(again) == 0 and incident(again).occurrences == 1
        bad_then(again, 300, 100, seed=1000)  # the same incident again, after the restart: read, and deduplicated
        assert detections(again) >= 1 and incident(again).occurrences == 2
    finally:
        again.close()


def test_score_stream_detectors_raise_a_warning_when_the_scores_move(appl: Appliance):
    """ADWIN and Page-Hinkley watch each version's score stream (the top class probability of every logged row):
    scores like the reference's raise nothing; scores that move raise one score_stream_drift Warning and count."""
    def score_alerts() -> list:
        return [x for x in appl.alerts.list(deployment="iris") if x.kind == "score_stream_drift"]

    def detections() -> float:
        return appl.metrics.registry.get_sample_value(
            "shepherd_stream_drift_detections", {"deployment": "iris", "model": "iris", "version": "1", "stream": "score"}) or 0.0

    def pass_over(rows: np.ndarray) -> None:
        serve(appl, [rows[i:i + 1] for i in range(len(rows))])
        appl.predlog.flush()
        appl.monitor.tick()

    pass_over(reference_like(1, seed=10))  # the stream starts here: before the first drift window
    pass_over(reference_like(600, seed=11))
    assert score_alerts() == [] and detections() == 0
    pass_over(reference_like(600, seed=12) + np.float32(4.0))  # top probability 0.88 -> 0.999 on average
    found = score_alerts()
    assert len(found) == 1 and found[0].level == "warning" and found[0].details["version"] == 1
    assert detections() >= 1


def test_time_windows_are_epoch_aligned_and_an_empty_one_has_no_data(appl: Appliance, policies: Path, monkeypatch):
    """With window_seconds, closed windows are evaluated on their rows, and a window without rows is stored as 'no data'."""
    from datetime import timedelta

    (policies / "iris.toml").write_text("[drift]\nwindow_rows = 0\nwindow_seconds = 60\n")
    serve(appl, [reference_like(50, seed=4)])
    appl.predlog.flush()
    first = appl.events.first_ts("iris", "iris", 1)
    end = first.replace(second=0, microsecond=0) + timedelta(seconds=60)  # the first window's end
    # the passes below run at made-up times: the log, as it would be then, holds every row logged before them
    monkeypatch.setattr(appl.monitor, "durable_before", lambda: int((end + timedelta(seconds=125)).timestamp() * 1e6))
    appl.monitor.tick(now=end - timedelta(seconds=1))  # not closed yet
    assert appl.monitor.drift_history("iris", None, None, 10) == []
    appl.monitor.tick(now=end + timedelta(seconds=125))
    hist = sorted(appl.monitor.drift_history("iris", None, None, 10), key=lambda w: w["window_id"])
    assert len(hist) == 3 and sum(w["n_rows"] for w in hist) == 50 and hist[0]["n_rows"] > 0
    assert all((w["end_ts"] - w["start_ts"]) == timedelta(seconds=60) for w in hist)
    assert hist[0]["start_ts"].timestamp() % 60 == 0
    assert hist[2]["n_rows"] == 0 and not hist[2]["drifted"]
    assert all(not f["has_data"] and f["psi"] is None for f in hist[2]["features"]), "no data, never NaN"


def test_a_version_no_slot_holds_gets_no_empty_time_windows(appl: Appliance, policies: Path, monkeypatch):
    """Empty time windows ("no data") are for the versions in a deployment's slots. A version in none (retired) gets
    windows for the time it logged rows only: none for the gap between its rows, none after its last, for ever."""
    from datetime import UTC, datetime, timedelta

    assert appl.deployments.slotted("iris") == {("iris", 1)} and appl.deployments.slotted("nope") == set()
    (policies / "iris.toml").write_text("[drift]\nwindow_rows = 0\nwindow_seconds = 60\n")
    serve(appl, [reference_like(50, seed=4)])
    appl.predlog.flush()
    appl.events.cursor().execute("UPDATE predictions SET ts = ts - INTERVAL 10 MINUTE")  # logged ten minutes ago
    serve(appl, [reference_like(50, seed=5)])
    appl.predlog.flush()
    later = datetime.now(UTC) + timedelta(minutes=30)
    monkeypatch.setattr(appl.monitor, "durable_before", lambda: int(later.timestamp() * 1e6))
    monkeypatch.setattr(appl.monitor, "slotted", lambda deployment: set())  # as after an undeploy
    appl.monitor.tick(now=later)
    hist = appl.monitor.drift_history("iris", None, None, 100)
    assert sum(w["n_rows"] for w in hist) == 100 and 2 <= len(hist) <= 4
    assert all(w["n_rows"] for w in hist), [(w["start_ts"], w["n_rows"]) for w in hist]
    assert sorted(w["window_id"] for w in hist) == list(range(1, len(hist) + 1))
    appl.monitor.tick(now=later + timedelta(hours=1))
    assert len(appl.monitor.drift_history("iris", None, None, 100)) == len(hist)


def test_a_time_window_waits_for_its_rows_still_on_the_way_to_duckdb(appl: Appliance, policies: Path, monkeypatch):
    """A time window closes when every row of it is in DuckDB, not a fixed flush interval after its end: while a
    flush is stuck (its INSERT blocked here), the window waits rather than being judged on the rows that made it;
    once they land, it is evaluated on all of them."""
    import threading
    from datetime import UTC, datetime, timedelta

    (policies / "iris.toml").write_text("[drift]\nwindow_rows = 0\nwindow_seconds = 4\n")
    while time.time() % 4 > 0.3:  # start early in a window, so that all 40 rows (and the first flush) fall in it
        time.sleep(0.01)
    window_end = datetime.fromtimestamp((time.time() // 4 + 1) * 4, UTC)
    serve(appl, [reference_like(1, seed=i) for i in range(10)])
    assert appl.predlog.flush()
    real, entered, release = appl.events.append_predictions, threading.Event(), threading.Event()

    def stuck(table, versions):
        entered.set()
        assert release.wait(30)
        return real(table, versions)

    monkeypatch.setattr(appl.events, "append_predictions", stuck)
    serve(appl, [reference_like(1, seed=100 + i) for i in range(30)])
    assert entered.wait(10)
    assert datetime.now(UTC) < window_end, "the machine stalled: the rows did not all fall in one window"
    while datetime.now(UTC) < window_end + timedelta(seconds=0.2):
        time.sleep(0.05)
    appl.monitor.tick()  # the window is over, and 30 of its 40 rows are not in DuckDB yet
    assert appl.monitor.drift_history("iris", None, None, 10) == []
    release.set()
    assert appl.predlog.flush()
    appl.monitor.tick()
    (window,) = appl.monitor.drift_history("iris", None, None, 10)
    assert window["n_rows"] == 40 and window["end_ts"] == window_end


def _behind(a: Appliance) -> str:
    return next(line.split()[1] for line in _metrics(a).splitlines() if line.startswith("shepherd_drift_behind{"))


def test_a_pass_takes_a_bounded_number_of_count_windows_and_says_when_more_are_waiting(appl: Appliance, monkeypatch):
    """Five complete windows and a partial one, two windows a pass: the passes take 2, 2 and 1 windows and report
    (return value and gauge) whether another complete window is still waiting; the partial one never counts."""
    from shepherd.monitoring import monitor as mon

    monkeypatch.setattr(mon, "MAX_WINDOWS_PER_TICK", 2)
    serve(appl, [reference_like(200, seed=i) for i in range(5)] + [reference_like(150, seed=9)])
    appl.predlog.flush()
    seen = []
    for _ in range(4):
        behind = appl.monitor.tick()
        seen.append((behind, len(appl.monitor.drift_history("iris", None, None, 100)), _behind(appl)))
    assert seen == [(True, 2, "1.0"), (True, 4, "1.0"), (False, 5, "0.0"), (False, 5, "0.0")]
    hist = sorted(appl.monitor.drift_history("iris", None, None, 100), key=lambda w: w["window_id"])
    assert [w["n_rows"] for w in hist] == [200] * 5
    assert [w["first_seq"] for w in hist] == [hist[0]["first_seq"] + 200 * k for k in range(5)], "no row skipped or repeated"


def test_a_pass_takes_a_bounded_number_of_time_windows_and_says_when_more_have_closed(appl: Appliance, policies: Path, monkeypatch):
    """Time windows: five closed, two a pass; the third pass takes the last and reports nothing more waiting."""
    from datetime import timedelta

    from shepherd.monitoring import monitor as mon

    monkeypatch.setattr(mon, "MAX_WINDOWS_PER_TICK", 2)
    (policies / "iris.toml").write_text("[drift]\nwindow_rows = 0\nwindow_seconds = 60\n")
    serve(appl, [reference_like(50, seed=4)])
    appl.predlog.flush()
    first = appl.events.first_ts("iris", "iris", 1)
    now = first.replace(second=0, microsecond=0) + timedelta(seconds=5 * 60 + 30)  # five windows closed, the sixth open
    monkeypatch.setattr(appl.monitor, "durable_before", lambda: int(now.timestamp() * 1e6))  # the log as it would be then
    seen = [(appl.monitor.tick(now=now), len(appl.monitor.drift_history("iris", None, None, 100))) for _ in range(4)]
    assert seen == [(True, 2), (True, 4), (False, 5), (False, 5)]


def test_the_monitor_thread_passes_again_at_once_while_windows_are_waiting(mon_config: config_mod.Config, iris: Path, monkeypatch):
    """With one window a pass and three waiting, the thread does not wait interval_s between passes that leave windows
    waiting; after the pass that catches up, it waits the interval again."""
    from shepherd.monitoring import monitor as mon

    monkeypatch.setattr(mon, "MAX_WINDOWS_PER_TICK", 1)
    passes: list[tuple[float, float, bool]] = []  # (start, end, behind)
    real_tick = mon.Monitor.tick

    def tick(self, now=None):
        start = time.monotonic()
        behind = real_tick(self, now)
        passes.append((start, time.monotonic(), behind))
        return behind

    monkeypatch.setattr(mon.Monitor, "tick", tick)
    interval = 3.0
    a = _serving_iris(mon_config, iris, interval_s=interval)
    try:
        serve(a, [reference_like(200, seed=i) for i in range(3)])
        a.predlog.flush()
        deadline = time.monotonic() + 120
        while len(a.monitor.drift_history("iris", None, None, 10)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(a.monitor.drift_history("iris", None, None, 10)) == 3
        time.sleep(0.5)  # the thread now waits a whole interval
        done = list(passes)
    finally:
        a.close()
    assert [b for _, _, b in done].count(True) >= 2, done  # the first two windows each left another waiting
    for (_, end, behind), (start, _, _) in zip(done, done[1:]):
        gap = start - end
        assert gap < interval if behind else gap >= interval - 0.05, done
    assert not done[-1][2]


def _thread_priority(tid: int) -> tuple[int, int]:
    """(scheduling policy, nice value) of one thread of this process, as the kernel reports them."""
    import os

    with open(f"/proc/self/task/{tid}/stat") as f:
        nice = int(f.read().rsplit(")", 1)[1].split()[16])  # field 19 of stat; the 17th after the command name
    return os.sched_getscheduler(tid), nice


@pytest.mark.parametrize("priority", ["low", "idle", "normal"])
def test_drift_kernels_run_on_their_own_thread_at_the_configured_priority(
    mon_config: config_mod.Config, iris: Path, monkeypatch, priority: str,
):
    """The window pass hands the kernels to the drift-kernels thread, which runs at monitoring.kernel_priority; the rest stays put."""
    import os
    import threading

    from shepherd.monitoring import kernels

    base = _thread_priority(threading.get_native_id())  # what a thread of this process gets by default (CI may run niced)
    ran_on: list[int] = []
    for name in ("_numeric_kernel", "_categorical_kernel"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _real=real: ran_on.append(threading.get_native_id()) or _real(*a))
    a = _serving_iris(mon_config, iris, kernel_priority=priority)
    try:
        serve(a, [reference_like(200, seed=1) + np.float32(3.0)])
        a.predlog.flush()
        for t in threading.enumerate():
            if t.name == "drift-compile":  # the start-up warm-up runs the kernels on its own thread
                t.join()
        ran_on.clear()
        before = time.perf_counter()
        a.monitor.tick()
        took = time.perf_counter() - before
        hist = a.monitor.drift_history("iris", None, None, 10)
        assert len(hist) == 1 and hist[0]["drifted"], "the results came back from the kernel thread"
        passed = float(next(line.split()[1] for line in _metrics(a).splitlines() if line.startswith("shepherd_monitor_pass_seconds ")))
        assert 0 < passed <= took, "the gauge holds the last pass's wall time"
        threads = {t.native_id for t in threading.enumerate() if t.name.startswith("drift-kernels")}
        assert len(threads) == 1 and set(ran_on) == threads, "every kernel ran there, and not on the ticking thread"
        policy, nice = _thread_priority(threads.pop())
        assert (policy, nice) == {"low": (base[0], 19), "idle": (os.SCHED_IDLE, base[1]), "normal": base}[priority]
        assert _thread_priority(threading.get_native_id()) == base, "the calling thread keeps its priority"
    finally:
        a.close()
    assert not any(t.name.startswith("drift-kernels") for t in threading.enumerate()), "close() ends the kernel thread"


def test_a_refused_kernel_priority_is_logged_and_the_kernels_still_run(mon_config: config_mod.Config, iris: Path, monkeypatch):
    """Where the OS refuses the lower priority (no permission, not Linux), the kernels run at normal priority and say so once."""
    import os

    from structlog.testing import capture_logs

    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    from shepherd.monitoring.monitor import KernelThread
    from shepherd.monitoring import kernels

    profile, x = _profile_for_test(), {"x": np.arange(50.0)}
    with capture_logs() as logs:
        thread = KernelThread(1, "low")
        try:
            (res,) = kernels.numeric_drift_windows(profile, x, None, thread)
            assert thread(lambda v: v + 1, 41) == 42  # the thread is still there for the next call
        finally:
            thread.close()
    direct = kernels.numeric_drift(profile, x)  # the same result as on the calling thread
    for field in ("psi", "ks_stat", "ks_pvalue", "wasserstein", "wasserstein_norm", "js", "n"):
        np.testing.assert_array_equal(getattr(res, field), getattr(direct, field))
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["kernel_priority_not_set"]


def _profile_for_test():
    from shepherd.monitoring.profile import build_profile

    return build_profile({"x": np.random.default_rng(0).normal(size=100)}, n_bins=5)


def test_a_regressor_is_scored_by_mae_and_rmse_and_alerts_on_its_error(appliance: Appliance, keys, tmp_path: Path):
    """The regression path end to end: a float output makes the task regression; performance is MAE and RMSE
    of the served predictions against the labels (numpy as the oracle); an RMSE far above the bundle's baseline is
    an Emergency, and ADWIN on the absolute error raises an error_stream_drift Warning."""
    import hashlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    from shepherd.bundles.create import create
    from shepherd.monitoring import feedback as fb
    from tests.conftest import METADATA

    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    names = [f"f{i}" for i in range(x.shape[1])]
    reg = LinearRegression().fit(x[:300], y[:300])
    served, truth = x[300:400], y[300:400]
    baseline = float(np.sqrt(np.mean((reg.predict(served) - truth) ** 2)))
    work = tmp_path / "diabetes"
    work.mkdir()
    (work / "model.onnx").write_bytes(to_onnx(reg, x[:1], target_opset=17).SerializeToString())
    pq.write_table(pa.table({n: x[:300, i] for i, n in enumerate(names)}), work / "reference.parquet")
    meta = METADATA.format(name="diabetes", digest=hashlib.sha256(b"diabetes").hexdigest()).replace(
        "accuracy = 0.9", f"rmse = {baseline!r}")
    (work / "meta.toml").write_text(meta)
    create(model=work / "model.onnx", metadata=work / "meta.toml", out=work / "d.shb", reference=work / "reference.parquet",
           sign_key=keys.private)
    appliance.importer.import_file(work / "d.shb", actor="t")

    async def deploy_and_serve(rows: np.ndarray) -> list[dict]:
        if "diabetes" not in appliance.deployments.deployments:
            await appliance.deployments.deploy("diabetes", "diabetes", 1, actor="t")
            await appliance.deployments.promote("diabetes", actor="t")
        out = []
        for r in rows:
            body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, len(r)], "data": r.tolist()}]}).encode()
            out.append(json.loads((await inference.infer_for(appliance, "diabetes", None, body, None)).body))
        return out

    def label_and_pass(answers: list[dict], labels: np.ndarray) -> None:
        fb.ingest(appliance.events, appliance.predlog, [fb.Label(a["id"], float(v)) for a, v in zip(answers, labels)])
        appliance.monitor.tick()

    def alerts(kind: str) -> list:
        return [a for a in appliance.alerts.list(deployment="diabetes") if a.kind == kind]

    first = asyncio.run(deploy_and_serve(served))
    label_and_pass(first, truth)
    policy = appliance.monitor.policy("diabetes")
    perf = appliance.monitor.evaluate_performance("diabetes", "diabetes", 1, policy)
    pred = np.array([a["outputs"][0]["data"][0] for a in first], dtype=np.float64)
    assert perf["task"] == "regression" and perf["baseline_metric"] == "rmse" and perf["baseline"] == pytest.approx(baseline)
    assert perf["metrics"]["mae"] == pytest.approx(np.mean(np.abs(pred - truth)), rel=1e-12)
    assert perf["metrics"]["rmse"] == pytest.approx(np.sqrt(np.mean((pred - truth) ** 2)), rel=1e-12)
    assert abs(perf["drop"]) < 1e-4 and not alerts("performance_drop") and not alerts("error_stream_drift")

    second = asyncio.run(deploy_and_serve(served))
    label_and_pass(second, truth + 150)  # the world moved: every prediction is now 150 off
    perf = appliance.monitor.evaluate_performance("diabetes", "diabetes", 1, policy)
    err = np.concatenate([pred - truth, pred - truth - 150])
    assert perf["metrics"]["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-9) and perf["drop"] > 0.15
    assert [a.level for a in alerts("performance_drop")] == ["emergency"]
    assert [a.level for a in alerts("error_stream_drift")] == ["warning"]


def test_a_categorical_feature_gets_chi_square_through_the_monitor(mon_config: config_mod.Config, iris: Path, policies: Path):
    """A feature the policy lists as categorical is profiled by category and judged by chi-square (and Jensen-Shannon),
    not PSI or KS: like the reference it does not drift; a category the reference never had makes it drift."""
    (policies / "iris.toml").write_text('[drift]\nwindow_rows = 200\ncategorical = ["petal_width"]\n')
    a = _serving_iris(mon_config, iris)
    try:
        profiled(a, "iris", 1)
        assert a.references.get("iris", 1).inputs.categorical_names == ["petal_width"]

        def window(rows: np.ndarray) -> dict:
            serve(a, [rows[i:i + 1] for i in range(len(rows))])
            a.predlog.flush()
            a.monitor.tick()
            (f,) = [f for f in a.monitor.drift_history("iris", None, None, 1)[0]["features"] if f["feature"] == "petal_width"]
            return f

        same = window(reference_like(200, seed=21))
        assert same["kind"] == "categorical" and same["psi"] is None and same["ks"] is None
        assert same["chi2"] is not None and same["chi2_pvalue"] > 0.05 and not same["drifted"]
        new = reference_like(200, seed=22)
        new[::2, 3] = 9.5  # half the rows: a petal width the reference never had
        moved = window(new)
        assert moved["kind"] == "categorical" and moved["chi2_pvalue"] < 1e-6 and moved["js"] > same["js"] and moved["drifted"]
    finally:
        a.close()
