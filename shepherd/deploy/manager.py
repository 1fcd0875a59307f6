"""The deployment manager: owns every deployment's slots, loads and warms versions, swaps slots.

Rules it keeps:
- deploy loads and warms a version into `candidate` before anything changes; a failed load or
  warm-up leaves every slot exactly as it was;
- promote and rollback build a new SlotSet and assign it in one reference change, then persist;
  a version that leaves every slot is released only after its in-flight requests drain;
- the SQLite record and the registry's `production` alias follow each change, in one transaction;
- a caller cancelled mid-operation (a client gone, shutdown) does not split memory from the
  database: a slot write already on the writer thread is followed to its end, and a version loaded
  for an operation that goes no further is released.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import structlog

from shepherd.config import Config
from shepherd.errors import Conflict, InvalidInput, NotFound, ShepherdError
from shepherd.monitoring.predlog import PredictionLog
from shepherd.serving.batcher import Batcher, Pending
from shepherd.serving.engine import LoadError, ModelRunner, ModelSession
from shepherd.serving.metrics import ServingMetrics
from shepherd.serving.slots import SLOTS, Deployment, LoadedVersion, Slot, SlotSet
from shepherd.store import deployments as store
from shepherd.store import registry
from shepherd.store.blobs import BlobStore, sha256_file
from shepherd.store.sqlite import Database

log = structlog.get_logger()
T = TypeVar("T")
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


class Unavailable(ShepherdError):
    """The deployment exists but has nothing to serve this request with."""

    status = 503
    code = "UNAVAILABLE"


class DeploymentManager:
    def __init__(
        self, config: Config, db: Database, blobs: BlobStore, metrics: ServingMetrics, predlog: PredictionLog | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.blobs = blobs
        self.metrics = metrics
        self.predlog = predlog  # every loaded version's batcher logs what it ran here
        self.deployments: dict[str, Deployment] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Told of every version loaded (deploy, restore, a previous version loaded again):
        # (deployment, model, version, a function running the version's model by output name).
        # The appliance points it at the monitor, which profiles the version's reference in the
        # background (a candidate has it before it is promoted). It must not block or raise.
        self.on_loaded: Callable[[str, str, int, ModelRunner], None] | None = None

    def slotted(self, name: str) -> set[tuple[str, int]]:
        """The (model, version)s in deployment `name`'s slots (primary, previous, candidate); none when it does not exist.
        Read from any thread: a swap replaces the SlotSet whole."""
        dep = self.deployments.get(name)
        return set() if dep is None else {(dep.model, s.version) for s in dep.slots if s is not None}

    # ------------------------------------------------------------------ loading
    def load_version(self, deployment: str, model: str, version: int) -> LoadedVersion:
        """Verify the blob, create the session, warm it and start its batcher (blocking; run in a thread)."""
        started = time.perf_counter()
        rec = self.db.read(lambda c: registry.get_version(c, model, version))
        if rec.archived:
            raise Conflict(f"model {model!r} version {version} is archived; unarchive it before deploying")
        model_file = next((f for f in rec.files if f.path == "model.onnx"), None)
        if model_file is None:
            raise LoadError(f"{model}:{version} has no model.onnx")
        path = self.blobs.path(model_file.sha256)
        try:
            actual, _ = sha256_file(path)
        except FileNotFoundError:
            raise LoadError(f"{model}:{version}: model blob {model_file.sha256} is missing from the blob store") from None
        if actual != model_file.sha256:
            raise LoadError(f"{model}:{version}: model blob is corrupt (sha256 {actual} != registered {model_file.sha256})")
        cfg = self.config.serving
        session = ModelSession(self.config, path, rec.signature, label=f"{model}:{version}")
        session.warm_up()
        batcher = Batcher(
            session, max_batch_size=cfg.max_batch_size, max_queue_delay_us=cfg.max_queue_delay_us, max_queue_size=cfg.max_queue_size,
            inline_max_us=cfg.inline_max_us, slice_us=cfg.request_slice_us,
        )
        seconds = time.perf_counter() - started
        log.info("version_loaded", deployment=deployment, model=model, version=version, providers=session.providers, seconds=round(seconds, 4))
        loaded = LoadedVersion(model, version, session, batcher, seconds)
        batcher.observe = functools.partial(self._observe, loaded)
        if self.predlog is not None:
            batcher.record = functools.partial(self._record, self.predlog, loaded.signature)
        if self.on_loaded is not None:
            self.on_loaded(deployment, model, version, session.run_named)
        return loaded

    @staticmethod
    def _record(
        predlog: PredictionLog, signature: dict, batch: list[Pending], inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
        answered: float,
    ) -> None:
        """Log a batch the model answered at `answered` (perf_counter); a request that timed out meanwhile was not answered and is not logged."""
        predlog.record(signature, [(p.labels, None if p.dropped else p.request_id, answered - p.started, p.rows) for p in batch], inputs, outputs)

    def _observe(self, loaded: LoadedVersion, batch: list[Pending], started: float, done: float, rows: int) -> None:
        st = loaded.stats
        waits = [started - p.enqueued for p in batch]
        st.queue_ns += int(sum(waits) * 1e9)
        st.queue_count += len(batch)
        st.compute_count += 1
        st.compute_ns += int((done - started) * 1e9)
        st.execution_count += 1
        st.inference_count += rows
        # Each request's wait counts under its own labels (a swap can change a request's slot while
        # it waits); the run counts under the first request's. From the queue the depth changed; an
        # inline run leaves it as it was.
        by_labels: dict[tuple, list[float]] = {}
        for p, wait in zip(batch, waits):
            if p.labels:
                by_labels.setdefault(p.labels, []).append(wait)
        first = batch[0].labels
        for labels, group in by_labels.items():
            if labels == first:
                depth = loaded.batcher.depth() if batch[0].future is not None else None
                self.metrics.series(labels).batch_done(group, done - started, rows, depth)
            else:
                self.metrics.series(labels).batch_done(group, None, 0, None)

    def _label(self, dep: Deployment) -> None:
        for slot_name, slot in zip(SLOTS, dep.slots):
            if slot is not None and slot.loaded is not None:
                self.metrics.load_seconds.labels(dep.name, dep.model, str(slot.version), slot_name).set(slot.loaded.load_seconds)

    def restore(self) -> None:
        """Load every deployment's slots as recorded (start-up). A version that fails to load is logged and left empty."""
        keep_warm = self.config.serving.keep_previous_warm
        for rec in self.db.read(store.list_all):
            slots = []
            for slot_name in SLOTS:
                version = getattr(rec, slot_name)
                if version is None:
                    slots.append(None)
                    continue
                loaded = None
                if slot_name != "previous" or keep_warm:
                    try:
                        loaded = self.load_version(rec.name, rec.model, version)
                    except Exception as err:  # one bad version must not stop the appliance from starting
                        log.error("restore_failed", deployment=rec.name, slot=slot_name, version=version, error=str(err))
                slots.append(Slot(version, loaded))
            dep = Deployment(rec.name, rec.model, SlotSet(*slots))
            self.deployments[rec.name] = dep
            self._label(dep)
            log.info("deployment_restored", deployment=rec.name, model=rec.model, **dep.slots.versions())

    def close(self) -> None:
        for dep in self.deployments.values():
            for loaded in dep.slots.loaded():
                loaded.close_now()
        self.deployments.clear()

    # --------------------------------------------------------------- operations
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def get(self, name: str) -> Deployment:
        dep = self.deployments.get(name)
        if dep is None:
            raise NotFound(f"deployment {name!r} does not exist")
        return dep

    def _persist(self, dep: Deployment, slots: SlotSet, action: str, actor: str) -> concurrent.futures.Future[store.DeploymentRecord]:
        rec = store.DeploymentRecord(name=dep.name, model=dep.model, **slots.versions())
        return self.db.submit(lambda c: store.save(c, rec, action=action, actor=actor))

    def _retire(self, old: SlotSet, new: SlotSet) -> None:
        keep = {id(v) for v in new.loaded()}
        for v in old.loaded():
            if id(v) not in keep:
                v.retire(self.config.serving.drain_timeout_s)

    async def _swap(self, dep: Deployment, new: SlotSet, action: str, actor: str, began: float) -> store.DeploymentRecord:
        """Assign `new` (one reference change), persist it, and release what left; undo on a failed write.

        A caller cancelled meanwhile (a client gone, shutdown) gets what `_settle` gives: a write
        still queued never runs and the swap is undone; one already on the writer thread is waited
        for, and the slots end as the database says. The cancellation is raised after. After the
        commit nothing raises: a failure there (metrics, releasing the old version) is logged, since
        raising would make the caller release a version that the slots and the database hold.
        """
        old = dep.slots
        dep.slots = new
        effective = time.perf_counter() - began
        try:
            rec, cancelled = await _settle(self._persist(dep, new, action, actor))
        except BaseException:
            dep.slots = old
            raise
        durable = time.perf_counter() - began
        try:
            kind = action.rpartition(".")[2]
            self.metrics.swap_seconds.labels(dep.name, kind, "effective").set(effective)
            self.metrics.swap_seconds.labels(dep.name, kind, "durable").set(durable)
            self._retire(old, new)
            self._label(dep)
        except Exception:
            log.exception("swap_aftermath_failed", deployment=dep.name, action=action)
        log.info("slots_swapped", deployment=dep.name, action=action, effective_us=round(effective * 1e6, 1), durable_ms=round(durable * 1e3, 3), **new.versions())
        if cancelled:
            raise asyncio.CancelledError
        return rec

    async def _load(self, name: str, model: str, version: int) -> LoadedVersion:
        """`load_version` on a thread of its own. A cancellation does not stop the thread, so a
        caller cancelled meanwhile (a client gone, or a shutdown, which cancels every task) leaves
        the version to be released on that thread as soon as its load ends. No asyncio task holds
        the load, so nothing but the caller can be cancelled in between and drop the version."""
        loading: concurrent.futures.Future[LoadedVersion] = concurrent.futures.Future()

        def run() -> None:
            if not loading.set_running_or_notify_cancel():
                return
            try:
                loading.set_result(self.load_version(name, model, version))
            except BaseException as err:
                loading.set_exception(err)

        # A daemon thread of its own, not an executor's worker: the interpreter joins those at exit,
        # and a TensorRT build in progress would then hold up a shutdown for minutes.
        threading.Thread(target=run, name=f"load:{model}:{version}", daemon=True).start()
        try:
            return await asyncio.wrap_future(loading)
        except asyncio.CancelledError:
            loading.add_done_callback(_close_loaded)
            raise

    def _release_unless_serving(self, dep: Deployment | None, loaded: LoadedVersion) -> None:
        """Release a version an operation loaded, unless a slot took it (its swap committed). It may
        have taken requests while its swap's write was pending; those finish first."""
        if dep is None or all(v is not loaded for v in dep.slots.loaded()):
            loaded.release_undone(self.config.serving.drain_timeout_s)

    async def deploy(self, name: str, model: str, version: int, *, actor: str) -> store.DeploymentRecord:
        """Load and warm `model` `version` into the candidate slot of `name` (created if new)."""
        if not DEPLOYMENT_NAME.match(name):
            raise InvalidInput(f"deployment = {name!r}: must be 1-128 letters, digits, '_', '.', '-'", field="deployment")
        current = self.deployments.get(name)
        if current is not None and current.model != model:
            raise Conflict(f"deployment {name!r} serves model {current.model!r}, not {model!r}")
        # Load and warm outside the lock (minutes for a TensorRT build), so a rollback never waits on it.
        loaded = await self._load(name, model, version)
        dep: Deployment | None = None
        try:
            async with self._lock(name):
                dep = self.deployments.get(name)
                if dep is not None and dep.model != model:
                    raise Conflict(f"deployment {name!r} serves model {dep.model!r}, not {model!r}")
                began = time.perf_counter()
                fresh = dep is None
                dep = dep or Deployment(name, model)
                if fresh:
                    self.deployments[name] = dep
                try:
                    return await self._swap(dep, dep.slots._replace(candidate=Slot(version, loaded)), "deployment.deploy", actor, began)
                except BaseException:
                    if fresh and not any(dep.slots):  # the swap did not take: no empty deployment stays behind
                        self.deployments.pop(name, None)
                    raise
        except BaseException:
            self._release_unless_serving(dep, loaded)
            raise

    async def promote(self, name: str, *, actor: str) -> store.DeploymentRecord:
        """candidate -> primary, primary -> previous (kept warm unless serving.keep_previous_warm = false)."""
        async with self._lock(name):
            began = time.perf_counter()
            dep = self.get(name)
            old = dep.slots
            if old.candidate is None:
                raise Conflict(f"deployment {name!r} has no candidate to promote; deploy a version first")
            if old.candidate.loaded is None:
                raise Conflict(f"deployment {name!r}: candidate version {old.candidate.version} failed to load; deploy it again")
            previous = old.primary
            if previous is not None and not self.config.serving.keep_previous_warm:
                previous = Slot(previous.version, None)
            return await self._swap(dep, SlotSet(primary=old.candidate, previous=previous, candidate=None), "deployment.promote", actor, began)

    async def rollback(self, name: str, *, actor: str) -> store.DeploymentRecord:
        """Swap primary and previous; loads nothing when previous is warm."""
        async with self._lock(name):
            began = time.perf_counter()
            dep = self.get(name)
            old = dep.slots
            if old.previous is None:
                raise Conflict(f"deployment {name!r} has no previous version to roll back to")
            previous, fresh = old.previous, None
            if previous.loaded is None:
                fresh = await self._load(name, dep.model, previous.version)
                previous = Slot(previous.version, fresh)
            demoted = old.primary
            if demoted is not None and not self.config.serving.keep_previous_warm:
                demoted = Slot(demoted.version, None)
            try:
                return await self._swap(dep, SlotSet(primary=previous, previous=demoted, candidate=old.candidate), "deployment.rollback", actor, began)
            except BaseException:
                if fresh is not None:
                    self._release_unless_serving(dep, fresh)
                raise

    async def undeploy(self, name: str, *, actor: str) -> store.DeploymentRecord:
        """Remove the deployment; its versions are released after they drain. Like a swap, it
        follows its write to the end even when the caller is cancelled meanwhile."""
        async with self._lock(name):
            dep = self.get(name)
            rec, cancelled = await _settle(self.db.submit(lambda c: store.delete(c, name, actor=actor)))
            del self.deployments[name]
            self._retire(dep.slots, SlotSet())
            log.info("deployment_removed", deployment=name)
            if cancelled:
                raise asyncio.CancelledError
            assert rec is not None
            return rec

    # ------------------------------------------------------------------ routing
    def route(self, name: str, version: int | None = None) -> tuple[str, LoadedVersion]:
        """The slot and loaded version that should answer a request (primary when no version is named)."""
        dep = self.deployments.get(name)
        if dep is None:
            raise NotFound(f"model {name!r} is not deployed")
        slots = dep.slots
        if version is None:
            if slots.primary is None or slots.primary.loaded is None:
                raise Unavailable(f"deployment {name!r} has no primary version loaded; promote a candidate first")
            return "primary", slots.primary.loaded
        found = slots.find(version)
        if found is None:
            loaded = ", ".join(str(s.version) for s in slots if s is not None and s.loaded is not None) or "none"
            raise NotFound(f"version {version} of {name!r} is not loaded (loaded versions: {loaded})")
        return found


async def _settle(write: concurrent.futures.Future[T]) -> tuple[T, bool]:
    """Wait for a SQLite write (`Database.submit`) to end even if the caller is cancelled meanwhile.

    The cancellation reaches the write itself: one still queued is cancelled and never runs; one
    already on the writer thread cannot be called back, and is waited for to the end. Raises
    CancelledError when the write never ran, or failed after the caller was cancelled; the write's
    own error when it failed otherwise. Returns its result and whether the caller was cancelled,
    for the caller to make memory follow the committed write before it raises the cancellation.
    No asyncio task stands between the caller and the write, so a shutdown that cancels every task
    cannot lose the outcome either.
    """
    cancelled = False
    while not write.done():
        try:
            await asyncio.wrap_future(write)
        except asyncio.CancelledError:
            cancelled = True  # the wrapper's cancellation has tried write.cancel(); wait again if it was running
        except BaseException:  # the write failed: raised below
            break
    if write.cancelled() or (cancelled and write.exception() is not None):
        raise asyncio.CancelledError  # the caller undoes what it changed, and ends cancelled
    return write.result(), cancelled


def _close_loaded(loading: concurrent.futures.Future[LoadedVersion]) -> None:
    """Release the version whose load a cancelled caller left behind, once that load ends (it may also have failed)."""
    if not loading.cancelled() and loading.exception() is None:
        loading.result().close_now()
