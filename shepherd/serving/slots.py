"""Loaded versions and the slot set of a deployment.

A deployment's slots are one immutable `SlotSet`; a promote or rollback builds a new one and
assigns it in a single reference change. A request takes a reference to the `LoadedVersion` it
was routed to and holds it until it answers, so a swap never interrupts it; a retired version is
released only once its in-flight count reaches zero (or the drain timeout passes).
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import structlog

from shepherd.serving.batcher import Batcher
from shepherd.serving.engine import ModelSession

log = structlog.get_logger()
SLOTS = ("primary", "previous", "candidate")


class VersionStats:
    """Counters for Triton's statistics extension ({count, ns} pairs), kept per loaded version."""

    __slots__ = (
        "success_count", "success_ns", "fail_count", "fail_ns", "queue_count", "queue_ns",
        "compute_count", "compute_ns", "inference_count", "execution_count", "last_inference_ms",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class LoadedVersion:
    """A warmed session and its batcher for one model version."""

    def __init__(self, model: str, version: int, session: ModelSession, batcher: Batcher, load_seconds: float) -> None:
        self.model = model
        self.version = version
        self.session = session
        self.batcher = batcher
        self.load_seconds = load_seconds
        self.signature = session.signature
        self.stats = VersionStats()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closed = False
        self._draining = False  # set by a retire: only then does release() signal the drain
        self._drained = threading.Event()
        self._labels: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        batcher.in_flight = lambda: self._in_flight

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def labels(self, deployment: str, slot: str) -> tuple[str, str, str, str]:
        """The (deployment, model, version, slot) metric labels of requests served here, one shared tuple per pair."""
        key = (deployment, slot)
        hit = self._labels.get(key)
        if hit is None:
            hit = self._labels[key] = (deployment, self.model, str(self.version), slot)
        return hit

    def acquire(self) -> bool:
        """Count a request in; False once the version is closed (the caller routes again)."""
        with self._lock:
            if self._closed:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0 and self._draining:
                self._drained.set()

    def retire(self, drain_timeout: float) -> threading.Thread:
        """Release this version in the background once its in-flight requests have finished."""
        t = threading.Thread(target=self._drain_and_close, args=(drain_timeout,), name=f"retire:{self.model}:{self.version}", daemon=True)
        t.start()
        return t

    def _drain_and_close(self, drain_timeout: float) -> None:
        deadline = time.monotonic() + drain_timeout
        while True:
            with self._lock:
                if self._in_flight == 0:
                    self._closed = True
                    break
                self._draining = True
                self._drained.clear()
            if not self._drained.wait(max(0.0, deadline - time.monotonic())):
                with self._lock:
                    log.warning("drain_timeout", model=self.model, version=self.version, in_flight=self._in_flight)
                    self._closed = True
                break
        self._release()
        log.info("version_released", model=self.model, version=self.version)

    def release_undone(self, drain_timeout: float) -> None:
        """Release a version whose slot change was undone (a failed or cancelled write): it was
        routable meanwhile, so a request it took is served to the end first (as `retire`). With
        none in flight, at once and on this thread, so that a routed request finds it closed."""
        with self._lock:
            idle = self._in_flight == 0
            if idle:
                self._closed = True
        if idle:
            self._release()
        else:
            self.retire(drain_timeout)

    def close_now(self) -> None:
        """Stop at once (shutdown, or a version that never took traffic)."""
        with self._lock:
            self._closed = True
        self._release()

    def _release(self) -> None:
        """Stop the worker and drop the session now (GPU memory), not at some later cycle collection."""
        self.batcher.stop()
        self.batcher.observe = self.batcher.record = None
        self.session = self.batcher.session = None  # type: ignore[assignment]


class Slot(NamedTuple):
    version: int
    loaded: LoadedVersion | None  # None: recorded but not in memory (previous with keep_previous_warm = false)


class SlotSet(NamedTuple):
    primary: Slot | None = None
    previous: Slot | None = None
    candidate: Slot | None = None

    def versions(self) -> dict[str, int | None]:
        return {name: (s.version if s else None) for name, s in zip(SLOTS, self)}

    def loaded(self) -> list[LoadedVersion]:
        return [s.loaded for s in self if s is not None and s.loaded is not None]

    def find(self, version: int) -> tuple[str, LoadedVersion] | None:
        """The slot name and loaded version holding `version`, preferring primary."""
        for name, s in zip(SLOTS, self):
            if s is not None and s.version == version and s.loaded is not None:
                return name, s.loaded
        return None


class Deployment:
    """A named endpoint: one model, three slots, swapped atomically."""

    def __init__(self, name: str, model: str, slots: SlotSet | None = None) -> None:
        self.name = name
        self.model = model
        self.slots = slots or SlotSet()
