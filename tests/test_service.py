"""The serving process's garbage-collector settings (shepherd.service.settle_heap)."""

from __future__ import annotations

import gc
import weakref

import pytest

from shepherd import service


class Node:
    pass


@pytest.fixture
def restore_gc():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_heap_frees_start_up_garbage_and_freezes_the_live_objects(restore_gc):
    """Unreachable cycles from start-up are collected, not frozen; every live object is frozen out of the collector's generations."""
    cycle = Node()
    cycle.me = cycle
    dead = weakref.ref(cycle)
    del cycle
    kept = [Node() for _ in range(1000)]
    frozen = gc.get_freeze_count()

    service.settle_heap()

    assert dead() is None
    assert gc.get_freeze_count() >= frozen + len(kept)
    walked = {id(o) for o in gc.get_objects()}  # generations 0-2 only: frozen objects are not listed
    assert not any(id(o) in walked for o in kept)


def test_settle_heap_makes_young_collections_rare_and_keeps_the_older_thresholds(restore_gc):
    """The young generation's threshold becomes GC_YOUNG_THRESHOLD (far above CPython's 700); the two older ones are unchanged."""
    gc.set_threshold(700, 11, 12)

    service.settle_heap()

    assert service.GC_YOUNG_THRESHOLD >= 10 * 700
    assert gc.get_threshold() == (service.GC_YOUNG_THRESHOLD, 11, 12)
