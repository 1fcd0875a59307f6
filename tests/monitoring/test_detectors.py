"""Streaming drift detectors: river's contract, and exactly river's detections on the same streams."""

from __future__ import annotations

import doctest
import inspect
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import drift

from shepherd.monitoring.detectors import ADWIN, DDM, Detector, PageHinkley, adwin, ddm, page_hinkley

PAIRS = {ADWIN: drift.ADWIN, PageHinkley: drift.PageHinkley, DDM: drift.binary.DDM}
SHAPES = ["abrupt", "gradual", "none"]
SEEDS = [0, 1, 2]
PARAMS = {
    ADWIN: [{}, {"clock": 1, "delta": 0.05}, {"max_buckets": 2, "min_window_length": 2, "grace_period": 0, "clock": 4}],
    PageHinkley: [{}, {"mode": "up", "threshold": 20.0}, {"mode": "down", "threshold": 20.0, "alpha": 0.99}],
    DDM: [{}, {"warm_start": 5, "warning_threshold": 1.5, "drift_threshold": 2.5}],
}
N = 6000


def stream(cls: type, shape: str, seed: int, n: int = N) -> np.ndarray:
    """Seeded test stream: Bernoulli errors for DDM, Gaussian values for the others."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    if cls is DDM:
        level = {
            "abrupt": np.repeat([0.1, 0.5, 0.2, 0.6], n // 4),
            "gradual": 0.1 + 0.5 * t / n,
            "none": np.full(n, 0.2),
        }[shape]
        return (rng.random(n) < level).astype(np.float64)
    level = {
        "abrupt": np.repeat([0.0, 2.0, -1.0, 3.0], n // 4),
        "gradual": 3.0 / (1.0 + np.exp(-(t - n / 2) / (n / 10))),
        "none": np.zeros(n),
    }[shape]
    return level + rng.normal(0.0, 1.0, n)


def river_run(det, xs) -> tuple[list[int], list[int]]:
    """Feed river's detector one value at a time; return its drift and warning indices."""
    drifts, warnings = [], []
    for i, x in enumerate(xs):
        det.update(x)
        if det.drift_detected:
            drifts.append(i)
        if getattr(det, "warning_detected", False):
            warnings.append(i)
    return drifts, warnings


def our_run(det: Detector, xs) -> tuple[list[int], list[int]]:
    """Feed our detector one value at a time; return its drift and warning indices."""
    drifts, warnings = [], []
    for i, x in enumerate(xs):
        if det.update(x).drift_detected:
            drifts.append(i)
        if getattr(det, "warning_detected", False):
            warnings.append(i)
    return drifts, warnings


def shared_state(ours: Detector, theirs) -> tuple[list[float], list[float]]:
    """The state both implementations keep (river's through its private attributes), ours and theirs."""
    f = ours._s
    if isinstance(ours, ADWIN):
        names = ["width", "total", "variance", "estimation"]
        return [getattr(ours, n) for n in names], [getattr(theirs, n) for n in names]
    if isinstance(ours, PageHinkley):
        slots = [page_hinkley._N, page_hinkley._MEAN, page_hinkley._SUM_INC, page_hinkley._SUM_DEC]
        slots += [page_hinkley._MIN_INC, page_hinkley._MAX_DEC]
        river = [theirs._x_mean.n, theirs._x_mean.get(), theirs._sum_increase, theirs._sum_decrease]
        river += [theirs._min_increase, theirs._max_decrease]
    else:
        slots = [ddm._N, ddm._P, ddm._P_MIN, ddm._S_MIN, ddm._PS_MIN]
        river = [theirs._p.n, theirs._p.get(), theirs._p_min, theirs._s_min, theirs._ps_min]
    return [float(f[i]) for i in slots], [np.nan if v is None else float(v) for v in river]


def assert_same_state(ours: Detector, theirs) -> None:
    """Fail unless our detector's state equals river's bit for bit (NaN standing for river's None)."""
    mine, river = shared_state(ours, theirs)
    np.testing.assert_array_equal(mine, river)


@pytest.mark.parametrize("cls", list(PAIRS), ids=lambda c: c.__name__)
def test_contract(cls: type) -> None:
    """Every detector follows river's contract: defaults, update returns self, read-only flag, reset, pickling."""
    ours, theirs = inspect.signature(cls).parameters, inspect.signature(PAIRS[cls]).parameters
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]
    det = cls()
    assert isinstance(det, Detector)
    assert det.update(0.0) is det
    assert det.drift_detected is False
    with pytest.raises(AttributeError):
        det.drift_detected = True
    xs = stream(cls, "abrupt", 0)
    detections = cls().update_many(xs).tolist()
    assert detections, "the abrupt stream must trigger a drift"
    det.reset()  # forgets the 0.0 seen above
    det.update_many(xs[: detections[0] + 1])  # ends right on a detection
    assert det.drift_detected is True
    det.reset()
    assert det.drift_detected is False
    assert [i for i, x in enumerate(xs) if det.update(x).drift_detected] == detections
    half = cls()
    first = half.update_many(xs[: N // 2]).tolist()
    clone = pickle.loads(pickle.dumps(half))
    assert first + [N // 2 + i for i, x in enumerate(xs[N // 2 :]) if clone.update(x).drift_detected] == detections


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("cls", "params"),
    [(cls, p) for cls, ps in PARAMS.items() for p in ps],
    ids=lambda v: v.__name__ if isinstance(v, type) else ",".join(f"{k}={x}" for k, x in v.items()) or "defaults",
)
def test_same_detections_as_river(cls: type, params: dict, shape: str, seed: int) -> None:
    """update() one value at a time and update_many() (whole and chunked) flag exactly river's indices."""
    xs = stream(cls, shape, seed)
    values = xs.tolist()
    reference = PAIRS[cls](**params)
    expected, expected_warnings = river_run(reference, values)
    if shape == "abrupt":
        assert expected, "river must detect the abrupt changes, or the comparison is vacuous"

    one = cls(**params)
    assert our_run(one, values) == (expected, expected_warnings)
    many = cls(**params)
    assert many.update_many(xs).tolist() == expected
    assert many.drift_detected == one.drift_detected == reference.drift_detected

    chunked, cuts = cls(**params), [0, 1, 777, N // 2, N - 5, N]
    found = [start + i for start, stop in zip(cuts, cuts[1:]) for i in chunked.update_many(xs[start:stop])]
    assert found == expected

    for det in (one, many, chunked):
        assert_same_state(det, reference)


def two_regimes(xs: list[float], shift: float, repeat: int) -> list[float]:
    """A random stream, repeated, followed by the same stream moved by ``shift``."""
    return xs * repeat + [x + shift for x in xs] * repeat


@settings(max_examples=150, deadline=None)
@given(
    xs=st.lists(st.floats(-1.0, 1.0), max_size=100),
    shift=st.floats(-10.0, 10.0),
    repeat=st.integers(1, 8),
    clock=st.integers(1, 40),
    max_buckets=st.integers(2, 6),
    min_window_length=st.integers(1, 8),
    grace_period=st.integers(0, 20),
    delta=st.sampled_from([0.002, 0.05, 0.5]),
)
def test_adwin_matches_river_on_random_streams(
    xs, shift, repeat, clock, max_buckets, min_window_length, grace_period, delta
):
    """ADWIN flags river's indices, and ends in river's window, on random short streams and parameters."""
    values = two_regimes(xs, shift, repeat)
    params = dict(delta=delta, clock=clock, max_buckets=max_buckets)
    params |= dict(min_window_length=min_window_length, grace_period=grace_period)
    reference, one, many = drift.ADWIN(**params), ADWIN(**params), ADWIN(**params)
    expected, _ = river_run(reference, values)
    assert our_run(one, values)[0] == expected
    assert many.update_many(np.array(values, dtype=np.float64)).tolist() == expected
    assert_same_state(one, reference)
    assert_same_state(many, reference)


@settings(max_examples=150, deadline=None)
@given(
    xs=st.lists(st.floats(-100.0, 100.0), max_size=100),
    shift=st.floats(-100.0, 100.0),
    repeat=st.integers(1, 4),
    min_instances=st.integers(1, 40),
    threshold=st.floats(0.5, 60.0),
    alpha=st.sampled_from([1 - 0.0001, 0.99, 0.9]),
    mode=st.sampled_from(["both", "up", "down"]),
)
def test_page_hinkley_matches_river_on_random_streams(xs, shift, repeat, min_instances, threshold, alpha, mode):
    """Page–Hinkley flags river's indices, and ends in river's state, on random short streams and parameters."""
    values = two_regimes(xs, shift, repeat)
    params = dict(min_instances=min_instances, threshold=threshold, alpha=alpha, mode=mode)
    reference, one, many = drift.PageHinkley(**params), PageHinkley(**params), PageHinkley(**params)
    expected, _ = river_run(reference, values)
    assert our_run(one, values)[0] == expected
    assert many.update_many(np.array(values, dtype=np.float64)).tolist() == expected
    assert_same_state(one, reference)
    assert_same_state(many, reference)


@settings(max_examples=150, deadline=None)
@given(
    xs=st.lists(st.booleans(), max_size=200),
    tail=st.integers(0, 300),
    tail_rate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    warm_start=st.integers(0, 40),
    warning_threshold=st.floats(0.5, 3.0),
    drift_threshold=st.floats(0.5, 4.0),
)
def test_ddm_matches_river_on_random_streams(xs, tail, tail_rate, seed, warm_start, warning_threshold, drift_threshold):
    """DDM flags river's drift and warning indices, and ends in river's state, on random binary streams."""
    rng = np.random.default_rng(seed)
    values = xs + (rng.random(tail) < tail_rate).tolist()
    params = dict(warm_start=warm_start, warning_threshold=warning_threshold, drift_threshold=drift_threshold)
    reference, one, many = drift.binary.DDM(**params), DDM(**params), DDM(**params)
    expected = river_run(reference, values)
    assert our_run(one, values) == expected
    assert many.update_many(np.array(values, dtype=np.float64)).tolist() == expected[0]
    assert_same_state(one, reference)
    assert_same_state(many, reference)


def test_adwin_single_bucket_window_stays_consistent() -> None:
    """With max_buckets=1 (where river's ADWIN panics) the window still adds up to its buckets."""
    params = dict(max_buckets=1, clock=1, min_window_length=1, grace_period=0, delta=0.1)
    xs = stream(ADWIN, "abrupt", 0)
    detections = ADWIN(**params).update_many(xs)
    assert len(detections) >= 3
    for end in detections:  # the window right after each detection's deletions
        det = ADWIN(**params)
        det.update_many(xs[: end + 1])
        s, w, levels = det._s, det.max_buckets + 1, int(det._s[adwin._N_LEVELS])
        counts = s[adwin._C : adwin._C + adwin._LEVELS].astype(int)
        assert counts.min() >= 0 and counts[levels - 1] > 0 and counts[levels:].sum() == 0
        assert det.width == (counts * 2.0 ** np.arange(adwin._LEVELS)).sum()
        totals = [s[adwin._B + k * w : adwin._B + k * w + counts[k]].sum() for k in range(levels)]
        assert det.total == pytest.approx(sum(totals))


@pytest.mark.parametrize("module", [adwin, page_hinkley, ddm], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_docstring_examples(module) -> None:
    """The docstring examples of each detector module run and print river's detection indices."""
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize(("make", "n"), [(ADWIN, 4_000_000), (PageHinkley, 16_000_000), (DDM, 16_000_000)])  # ~150 ms each
def test_update_many_releases_the_gil(make, n):
    """The monitor thread runs update_many over a tick's whole stream: it must not hold the GIL (serving would stall).

    While it runs, this thread keeps running Python; with the GIL held it would stop for the whole call.
    """
    import threading
    import time

    det = make()
    xs = (np.random.default_rng(0).random(n) < 0.3).astype(np.float64)
    det.update_many(xs[:10])  # compiled (or loaded from the cache) before the measured run
    span: list[float] = []

    def work():
        t0 = time.perf_counter()
        det.update_many(xs)
        span.extend([t0, time.perf_counter()])

    t = threading.Thread(target=work)
    stamps = []
    t.start()
    while t.is_alive():
        stamps.append(time.perf_counter())
    t.join()
    start, end = span
    inside = [s for s in stamps if start <= s <= end]
    gaps = np.diff([start, *inside, end])
    assert gaps.max() < 0.5 * (end - start), f"{make.__name__}.update_many held the GIL: this thread stopped for {gaps.max():.3f} of {end - start:.3f} s"
