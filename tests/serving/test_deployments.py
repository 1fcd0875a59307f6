"""Deployments: load into candidate, promote, rollback, restore, failed loads, draining."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any


import pytest

from shepherd import config as config_mod
from shepherd.appliance import Appliance
from shepherd.deploy.manager import Unavailable
from shepherd.errors import Conflict, NotFound
from shepherd.serving.engine import LoadError
from shepherd.serving.slots import LoadedVersion
from shepherd.store import audit, registry
from tests.conftest import snapshot


@pytest.fixture
def seeded(appliance, make_bundle):
    for bias in (1.0, 2.0, 3.0):
        appliance.importer.import_file(make_bundle(bias=bias), actor="t")
    return appliance


def run(coro):
    return asyncio.run(coro)


async def promoted(mgr: Any, *versions: int) -> None:
    """Deploy each version of model "tiny" to deployment "d" and promote it, in order: the last is primary, the one before previous."""
    for v in versions:
        await mgr.deploy("d", "tiny", v, actor="t")
        await mgr.promote("d", actor="t")


def slots(appl: Appliance, name: str = "d") -> dict[str, int | None]:
    return appl.deployments.get(name).slots.versions()


def deployment_rows(appl: Appliance) -> list[tuple]:
    return appl.db.read(lambda c: list(c.execute("SELECT * FROM deployments")))


class Held:
    """`fn` made to wait, inside each call, until `release()` (at most 10 s): `entered` is set once
    a call has arrived, and `returned` keeps what the calls returned."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.entered, self._open = threading.Event(), threading.Event()
        self.returned: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self._open.wait(10)
        out = self.fn(*args, **kwargs)
        self.returned.append(out)
        return out

    def release(self) -> None:
        self._open.set()


def cancel_while_held(held: Held, operation: Coroutine[Any, Any, Any]) -> None:
    """Run `operation`, cancel it while it is inside `held`, then let `held` go on: the operation must end cancelled."""

    async def scenario() -> None:
        task = asyncio.create_task(operation)
        assert await asyncio.to_thread(held.entered.wait, 10)
        task.cancel()
        await asyncio.sleep(0.05)
        held.release()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())


def released_load(held: Held) -> LoadedVersion:
    """The one version that `held` (a load) returned, once released on its own thread (waits at most 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (held.returned and not held.returned[0].batcher._thread.is_alive()):
        time.sleep(0.05)
    assert len(held.returned) == 1
    lv = held.returned[0]
    assert not lv.batcher._thread.is_alive()
    assert not lv.acquire()  # closed: it takes no request
    return lv


def test_deploy_promote_rollback_cycle(seeded):
    """deploy fills candidate; promote moves it to primary; rollback swaps primary and previous without loading."""
    mgr = seeded.deployments

    async def scenario():
        await mgr.deploy("d", "tiny", 1, actor="t")
        assert slots(seeded) == {"primary": None, "previous": None, "candidate": 1}
        with pytest.raises(Unavailable):
            mgr.route("d")
        assert mgr.route("d", 1)[0] == "candidate"
        await mgr.promote("d", actor="t")
        await mgr.deploy("d", "tiny", 2, actor="t")
        await mgr.promote("d", actor="t")
        assert slots(seeded) == {"primary": 2, "previous": 1, "candidate": None}
        loads = []
        original = mgr.load_version
        mgr.load_version = lambda *a: loads.append(a) or original(*a)
        await mgr.rollback("d", actor="t")
        assert loads == []
        assert slots(seeded) == {"primary": 1, "previous": 2, "candidate": None}
        assert mgr.route("d")[1].version == 1

    run(scenario())
    assert seeded.db.read(lambda c: registry.resolve(c, "tiny", "production")).version == 1
    actions = [e.action for e in seeded.db.read(lambda c: audit.query(c, action="deployment."))]
    assert actions == ["deployment.deploy", "deployment.promote", "deployment.deploy", "deployment.promote", "deployment.rollback"]


def test_outputs_match_onnxruntime(seeded):
    """A request through the batcher returns what onnxruntime computes directly (y = x + bias)."""
    import numpy as np

    mgr = seeded.deployments

    async def scenario():
        await mgr.deploy("d", "tiny", 2, actor="t")
        await mgr.promote("d", actor="t")
        _, lv = mgr.route("d")
        lv.batcher.delay = 0.05  # a generous window, so batching does not depend on this machine's load
        xs = [np.random.default_rng(i).random((1 + i % 3, 3), dtype=np.float32) for i in range(40)]
        for _ in xs:
            assert lv.acquire()  # as the request path does: the batcher waits only for admitted requests
        pend = [lv.batcher.submit({"x": x}) for x in xs]
        outs = await asyncio.gather(*(p.future for p in pend))
        for _ in xs:
            lv.release()
        for x, out in zip(xs, outs):
            np.testing.assert_array_equal(out["y"], lv.session.run({"x": x})[0])
            np.testing.assert_allclose(out["y"], x + 2.0)
        assert lv.stats.execution_count < 40, "40 concurrent requests should have been batched"
        assert lv.stats.inference_count == sum(x.shape[0] for x in xs)

    run(scenario())


def test_restart_restores_slots(seeded, config):
    """A new process on the same data directory loads the same versions into the same slots."""
    mgr = seeded.deployments

    async def scenario():
        await promoted(mgr, 1, 2)
        await mgr.deploy("d", "tiny", 3, actor="t")

    run(scenario())
    before = slots(seeded)
    seeded.close()
    again = Appliance(config)
    again.start()
    try:
        assert slots(again) == before == {"primary": 2, "previous": 1, "candidate": 3}
        assert all(s.loaded is not None for s in again.deployments.get("d").slots)
    finally:
        again.close()



def test_failed_load_changes_nothing(seeded, config):
    """Deploying a version whose blob is corrupt fails and leaves every slot, record and alias as it was."""
    mgr = seeded.deployments

    async def setup():
        await mgr.deploy("d", "tiny", 1, actor="t")
        await mgr.promote("d", actor="t")

    run(setup())
    rec = seeded.db.read(lambda c: registry.get_version(c, "tiny", 2))
    blob = seeded.blobs.path(next(f.sha256 for f in rec.files if f.path == "model.onnx"))
    os.chmod(blob, 0o644)
    blob.write_bytes(b"garbage")
    before_slots, before_db = slots(seeded), snapshot(config.data_dir)
    with pytest.raises(LoadError, match="corrupt"):
        run(mgr.deploy("d", "tiny", 2, actor="t"))
    assert slots(seeded) == before_slots
    assert snapshot(config.data_dir)["tables"] == before_db["tables"]
    assert mgr.route("d")[1].version == 1


def test_rules_for_bad_operations(seeded):
    """Promote without candidate, rollback without previous, unknown names and a second model are refused."""
    mgr = seeded.deployments

    async def scenario():
        with pytest.raises(NotFound):
            await mgr.promote("nope", actor="t")
        with pytest.raises(NotFound, match="no version 9"):
            await mgr.deploy("d", "tiny", 9, actor="t")
        assert "d" not in mgr.deployments
        await mgr.deploy("d", "tiny", 1, actor="t")
        with pytest.raises(Conflict, match="no previous"):
            await mgr.rollback("d", actor="t")
        await mgr.promote("d", actor="t")
        with pytest.raises(Conflict, match="no candidate"):
            await mgr.promote("d", actor="t")
        with pytest.raises(Conflict, match="serves model"):
            await mgr.deploy("d", "other", 1, actor="t")

    run(scenario())


@pytest.fixture
def cold(tmp_path, keys, make_bundle):
    """An appliance with serving.keep_previous_warm = false and versions 1 and 2 of tiny imported."""
    cfg = config_mod.parse(
        {"storage": {"data_dir": str(tmp_path / "cold")}, "bundles": {"trusted_keys_dir": str(keys.trusted_dir)}, "serving": {"keep_previous_warm": False}}
    )
    appl = Appliance(cfg)
    appl.start()
    try:
        for bias in (1.0, 2.0):
            appl.importer.import_file(make_bundle(bias=bias), actor="t")
        yield appl
    finally:
        appl.close()


def test_cold_previous_is_reloaded_on_rollback(cold):
    """With keep_previous_warm = false, promote unloads the old primary and rollback loads it back first."""
    mgr = cold.deployments

    async def scenario():
        await promoted(mgr, 1, 2)
        assert mgr.get("d").slots.previous.loaded is None
        await mgr.rollback("d", actor="t")
        assert mgr.route("d")[1].version == 1

    run(scenario())


def test_retired_version_drains_before_release(seeded):
    """A version that leaves its slot keeps serving its in-flight requests and is released only after them."""
    mgr = seeded.deployments

    async def scenario():
        await mgr.deploy("d", "tiny", 1, actor="t")
        await mgr.promote("d", actor="t")
        _, old = mgr.route("d")
        assert old.acquire()
        await mgr.deploy("d", "tiny", 2, actor="t")
        await mgr.promote("d", actor="t")
        await mgr.deploy("d", "tiny", 3, actor="t")
        await mgr.promote("d", actor="t")  # version 1 leaves every slot now
        await asyncio.sleep(0.2)
        assert old.batcher._thread.is_alive(), "released while a request was in flight"
        import numpy as np

        out = await old.batcher.submit({"x": np.zeros((1, 3), np.float32)}).future
        assert out["y"].tolist() == [[1.0, 1.0, 1.0]]
        old.release()
        for _ in range(50):
            if not old.batcher._thread.is_alive():
                break
            await asyncio.sleep(0.05)
        assert not old.batcher._thread.is_alive()
        assert not old.acquire()

    run(scenario())



def test_unloaded_candidate_is_not_promoted(seeded):
    """A candidate whose load failed (recorded but not in memory) cannot be promoted into an outage."""
    from shepherd.serving.slots import Slot

    mgr = seeded.deployments

    async def scenario():
        await mgr.deploy("d", "tiny", 1, actor="t")
        await mgr.promote("d", actor="t")
        dep = mgr.get("d")
        dep.slots = dep.slots._replace(candidate=Slot(2, None))  # as restore() leaves a failed load
        with pytest.raises(Conflict, match="failed to load"):
            await mgr.promote("d", actor="t")
        assert mgr.route("d")[1].version == 1

    run(scenario())


def test_rollback_does_not_wait_for_a_slow_deploy(seeded):
    """A rollback completes while another version of the same deployment is still loading."""
    mgr = seeded.deployments
    gate = threading.Event()
    original = mgr.load_version

    def slow(name, model, version):
        if version == 3:
            gate.wait(10)
        return original(name, model, version)

    async def scenario():
        await promoted(mgr, 1, 2)
        mgr.load_version = slow
        deploying = asyncio.create_task(mgr.deploy("d", "tiny", 3, actor="t"))
        await asyncio.sleep(0.1)
        await asyncio.wait_for(mgr.rollback("d", actor="t"), 5)
        assert not deploying.done()
        assert mgr.route("d")[1].version == 1
        gate.set()
        await deploying
        assert slots(seeded) == {"primary": 1, "previous": 2, "candidate": 3}

    run(scenario())


def test_deployed_versions_cannot_be_archived(seeded):
    """A version in any slot of a deployment cannot be archived (a later rollback or restart would fail)."""
    mgr = seeded.deployments

    async def scenario():
        await promoted(mgr, 1, 2)

    run(scenario())
    with pytest.raises(Conflict, match="deployment"):
        seeded.db.write(lambda c: registry.set_archived(c, "tiny", 1, True, actor="t"))


def test_a_version_archived_while_it_loads_does_not_enter_a_slot(seeded, monkeypatch):
    """Deploy checks "archived" before it loads, and the load takes seconds: an archive committed
    meanwhile (the version is in no slot yet, so the archive is allowed) must make the deploy fail
    with 409, leave the slots as they were, and release what was loaded."""
    mgr = seeded.deployments
    run(mgr.deploy("d", "tiny", 1, actor="t"))
    run(mgr.promote("d", actor="t"))
    real = mgr.load_version
    loaded = []

    def load_then_archive(deployment, model, version):
        lv = real(deployment, model, version)
        loaded.append(lv)
        seeded.db.write(lambda c: registry.set_archived(c, model, version, True, actor="other"))
        return lv

    monkeypatch.setattr(mgr, "load_version", load_then_archive)
    before = deployment_rows(seeded)
    with pytest.raises(Conflict, match="archived"):
        run(mgr.deploy("d", "tiny", 2, actor="t"))
    assert slots(seeded) == {"primary": 1, "previous": None, "candidate": None}
    assert deployment_rows(seeded) == before
    assert not loaded[0].acquire()  # closed: it takes no request
    assert seeded.db.read(lambda c: registry.get_version(c, "tiny", 2)).archived


def test_one_appliance_per_data_directory(seeded, config):
    """A second appliance on a data directory in use is refused before it touches anything."""
    from shepherd.errors import ShepherdError

    with pytest.raises(ShepherdError, match="in use by another Shepherd process"):
        Appliance(config)


def test_request_timeout_answers_504_and_drops_the_request(seeded):
    """A request not answered within the timeout gets RequestTimeout (504) and is dropped from the queue."""
    from shepherd.serving import inference
    from shepherd.serving.inference import RequestTimeout

    mgr = seeded.deployments
    gate = threading.Event()

    async def scenario():
        await mgr.deploy("d", "tiny", 1, actor="t")
        await mgr.promote("d", actor="t")
        _, lv = mgr.route("d")
        lv.batcher.inline_ok = False  # this test is about the queue: the blocked run must be on the worker
        original = lv.session.run
        lv.session.run = lambda feed, outputs=None: (gate.wait(5), original(feed, outputs))[1]
        body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}'
        blocker = asyncio.create_task(inference.infer(mgr, seeded.metrics, "d", None, body, None, 5.0))
        await asyncio.sleep(0.05)  # the worker is now stuck in the first run
        with pytest.raises(RequestTimeout):
            await inference.infer(mgr, seeded.metrics, "d", None, body, None, 0.05)
        gate.set()
        out = await blocker
        assert out.version == 1
        assert lv.stats.fail_count == 1 and lv.stats.success_count == 1


    run(scenario())


def test_lone_request_runs_inline_without_yielding_when_the_server_says_so(seeded):
    """With the HTTP server reporting one active request, an inline model answers without giving the loop a turn;
    with more (or unknown), the request first yields so that requests arriving with it can join its batch."""
    from shepherd.serving import inference

    mgr = seeded.deployments
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}'

    async def setup():
        await mgr.deploy("d", "tiny", 1, actor="t")
        await mgr.promote("d", actor="t")
        lv = mgr.route("d")[1]
        lv.batcher.inline_ok = True  # as warm-up finds for this tiny model on an idle machine
        return lv

    lv = run(setup())

    def steps(active):
        """How many times the coroutine suspends before it returns."""
        coro = inference.infer(mgr, seeded.metrics, "d", None, body, None, 5.0, active_requests=active)
        n = 0
        try:
            while True:
                coro.send(None)
                n += 1
        except StopIteration as done:
            assert done.value.version == 1
        return n

    assert steps(lambda: 1) == 0
    assert steps(lambda: 2) == 1
    assert steps(None) == 1
    assert lv.stats.success_count == 3


def test_a_swap_cancelled_during_its_write_ends_as_the_database_says(seeded, monkeypatch):
    """A promote whose caller is cancelled (client gone, shutdown) while the slot write is on the
    writer thread: the write cannot be called back and commits, so the swap must complete as well.
    Memory then agrees with the database (a restart serves what ran before it), the displaced
    version stays warm as previous, and the caller still sees its cancellation."""
    from shepherd.deploy import manager

    mgr = seeded.deployments
    run(mgr.deploy("d", "tiny", 1, actor="t"))
    run(mgr.promote("d", actor="t"))
    run(mgr.deploy("d", "tiny", 2, actor="t"))
    save = Held(manager.store.save)
    monkeypatch.setattr(manager.store, "save", save)
    cancel_while_held(save, mgr.promote("d", actor="t"))
    assert slots(seeded) == {"primary": 2, "previous": 1, "candidate": None}
    assert seeded.db.read(lambda c: registry.resolve(c, "tiny", "production")).version == 2
    record = seeded.db.read(lambda c: list(c.execute("SELECT primary_version, previous_version, candidate_version FROM deployments")))
    assert record == [(2, 1, None)]
    previous = mgr.get("d").slots.previous.loaded
    assert previous.acquire()  # still warm: a rollback loads nothing
    previous.release()
    assert mgr.route("d")[1].version == 2


def test_an_error_after_the_slot_write_keeps_the_committed_swap(seeded, monkeypatch):
    """Once the slot write has committed, a failure in what follows (metrics, releasing the old
    version) is logged, not raised: raising would make deploy close a version the database and
    the slots still hold."""
    mgr = seeded.deployments

    def broken(dep):
        raise RuntimeError("metrics are broken")

    monkeypatch.setattr(mgr, "_label", broken)
    rec = run(mgr.deploy("d", "tiny", 1, actor="t"))
    assert rec.candidate == 1
    assert slots(seeded) == {"primary": None, "previous": None, "candidate": 1}
    candidate = mgr.route("d", 1)[1]
    assert candidate.acquire()  # not closed behind the slots' back
    candidate.release()


def test_a_deploy_cancelled_while_it_loads_releases_what_it_loaded(seeded, monkeypatch):
    """The load runs on a thread that cannot be called back: a deploy cancelled meanwhile must
    release the version once the load ends (its session, batcher thread and memory), and change
    no slot and no record."""
    mgr = seeded.deployments
    run(mgr.deploy("d", "tiny", 1, actor="t"))
    run(mgr.promote("d", actor="t"))
    load = Held(mgr.load_version)
    monkeypatch.setattr(mgr, "load_version", load)
    before = deployment_rows(seeded)
    cancel_while_held(load, mgr.deploy("d", "tiny", 2, actor="t"))
    released_load(load)
    assert slots(seeded) == {"primary": 1, "previous": None, "candidate": None}
    assert deployment_rows(seeded) == before


def test_a_swap_cancelled_while_its_write_is_queued_never_happens(seeded):
    """Cancelled while its slot write still waits behind another write, a promote is undone: the
    write is cancelled before it runs, so memory and the database both keep the old slots."""
    mgr = seeded.deployments
    run(mgr.deploy("d", "tiny", 1, actor="t"))
    run(mgr.promote("d", actor="t"))
    run(mgr.deploy("d", "tiny", 2, actor="t"))
    before = deployment_rows(seeded)
    hold = Held(lambda c: None)

    async def scenario():
        busy = seeded.db.submit(hold)  # the writer thread is taken
        assert await asyncio.to_thread(hold.entered.wait, 10)
        promoting = asyncio.create_task(mgr.promote("d", actor="t"))
        await asyncio.sleep(0.05)  # its write is queued
        promoting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await promoting
        hold.release()
        await asyncio.wrap_future(busy)

    run(scenario())
    assert slots(seeded) == {"primary": 1, "previous": None, "candidate": 2}
    assert deployment_rows(seeded) == before
    assert mgr.route("d")[1].version == 1


def test_an_undone_deploy_serves_its_requests_to_the_end_before_it_is_released(seeded, monkeypatch):
    """While a deploy's slot write is pending, the new candidate is already in its slot and can take
    requests. When the write fails, the slots go back, and a request the candidate took meanwhile is
    still answered: the version is released only after it, as a retired one is."""
    import numpy as np

    from shepherd.deploy import manager

    mgr = seeded.deployments
    run(mgr.deploy("d", "tiny", 1, actor="t"))
    run(mgr.promote("d", actor="t"))

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    save = Held(refuse)
    monkeypatch.setattr(manager.store, "save", save)

    async def scenario() -> LoadedVersion:
        deploying = asyncio.create_task(mgr.deploy("d", "tiny", 2, actor="t"))
        assert await asyncio.to_thread(save.entered.wait, 10)
        candidate = mgr.get("d").slots.candidate.loaded
        assert candidate.version == 2 and candidate.acquire()  # a request routed to it meanwhile
        save.release()
        with pytest.raises(OSError, match="disk full"):
            await deploying
        assert slots(seeded) == {"primary": 1, "previous": None, "candidate": None}
        await asyncio.sleep(0.2)
        assert candidate.batcher._thread.is_alive(), "released under a request in flight"
        out = await candidate.batcher.submit({"x": np.zeros((1, 3), np.float32)}).future
        assert out["y"].tolist() == [[2.0, 2.0, 2.0]]
        candidate.release()
        return candidate

    candidate = run(scenario())
    deadline = time.monotonic() + 10
    while candidate.batcher._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not candidate.batcher._thread.is_alive() and not candidate.acquire()
    assert mgr.route("d")[1].version == 1


def test_an_undone_deploy_with_nothing_in_flight_is_released_at_once(seeded, monkeypatch):
    """With no request in it, a version whose deploy failed is closed before the deploy returns."""
    from shepherd.deploy import manager

    mgr = seeded.deployments
    run(mgr.deploy("d", "tiny", 1, actor="t"))
    loads = []
    real = mgr.load_version
    monkeypatch.setattr(mgr, "load_version", lambda *a: loads.append(real(*a)) or loads[-1])

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(manager.store, "save", refuse)
    with pytest.raises(OSError, match="disk full"):
        run(mgr.deploy("d", "tiny", 2, actor="t"))
    assert len(loads) == 1 and not loads[0].acquire()
    loads[0].batcher._thread.join(5)
    assert not loads[0].batcher._thread.is_alive()
    assert slots(seeded) == {"primary": None, "previous": None, "candidate": 1}


def test_a_load_in_flight_at_shutdown_is_released(seeded, monkeypatch):
    """A shutdown cancels every task, not only the deploy's: the version whose load was still
    running must still be released when that load ends, on its own thread, with no loop left."""
    mgr = seeded.deployments
    load = Held(mgr.load_version)
    monkeypatch.setattr(mgr, "load_version", load)

    async def scenario():
        asyncio.create_task(mgr.deploy("d", "tiny", 1, actor="t"))  # still loading when asyncio.run ends: cancelled
        assert await asyncio.to_thread(load.entered.wait, 10)

    run(scenario())
    load.release()
    released_load(load)
    assert "d" not in mgr.deployments


def test_an_undeploy_cancelled_during_its_write_still_removes_the_deployment(seeded, monkeypatch):
    """Cancelled while its DELETE is on the writer thread, an undeploy still ends as the database
    says: the deployment is gone from memory too (a restart would not bring it back either)."""
    from shepherd.deploy import manager

    mgr = seeded.deployments
    run(mgr.deploy("d", "tiny", 1, actor="t"))
    run(mgr.promote("d", actor="t"))
    delete = Held(manager.store.delete)
    monkeypatch.setattr(manager.store, "delete", delete)
    cancel_while_held(delete, mgr.undeploy("d", actor="t"))
    assert "d" not in mgr.deployments
    assert deployment_rows(seeded) == []


def test_a_rollback_cancelled_while_it_loads_the_previous_version_changes_nothing(cold, monkeypatch):
    """With keep_previous_warm = false a rollback loads the previous version first; cancelled
    meanwhile, it leaves the slots and the record as they were and releases what it loaded."""
    mgr = cold.deployments
    run(promoted(mgr, 1, 2))
    before = deployment_rows(cold)
    load = Held(mgr.load_version)
    monkeypatch.setattr(mgr, "load_version", load)
    cancel_while_held(load, mgr.rollback("d", actor="t"))
    released_load(load)
    assert slots(cold) == {"primary": 2, "previous": 1, "candidate": None}
    assert mgr.get("d").slots.previous.loaded is None
    assert deployment_rows(cold) == before
