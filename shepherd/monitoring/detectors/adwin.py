"""ADaptive WINdowing (Bifet & Gavaldà, 2007), a line-by-line port of river's ADWIN.

river's ``drift.ADWIN`` keeps its window in ``AdaptiveWindowing`` (``rust_src/adwin.rs`` in river
0.26, itself a port of the older Cython ``adwin_c.pyx``): an exponential histogram where level ``k``
holds up to ``max_buckets`` buckets that each summarise ``2**k`` values (their total and their
variance). Every ``clock`` values all cut points of the window are tested; while two sub-windows'
means differ by more than the Hoeffding-style bound, the oldest bucket is dropped, and a drift is
flagged. The arithmetic below keeps river's operation order so that every float, and hence every
detection, is identical.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from shepherd.monitoring.detectors.base import DRIFT, Detector

_LEVELS = 64  # level k holds buckets of 2**k values: 64 levels outlast any stream
# The whole state is one float64 array s (one array keeps a single-value update cheap to call):
# s[0] drift flag; window total, variance (sum of squared deviations) and width; the parameters;
# the number of levels in use and the clock phase (river's tick modulo clock); from _C, the bucket
# count of each level; from _B, rows of max_buckets + 1 slots: row k holds the totals of the buckets
# of level k, oldest first, and row _LEVELS + k their variances.
_TOTAL, _VARIANCE, _WIDTH = 1, 2, 3
_DELTA, _MIN_WINDOW_LENGTH, _GRACE_PERIOD, _CLOCK, _MAX_BUCKETS = 4, 5, 6, 7, 8
_N_LEVELS, _PHASE = 9, 10
_C = 11
_B = _C + _LEVELS


@njit(cache=True, error_model="numpy")
def _reset(s):
    s[:_DELTA] = 0.0
    s[_N_LEVELS] = 1.0
    s[_PHASE:] = 0.0


@njit(cache=True, error_model="numpy")
def _shift(s, row, n, m):
    # drop the m oldest of the n entries of a row
    for j in range(n - m):
        s[row + j] = s[row + j + m]
    for j in range(n - m, n):
        s[row + j] = 0.0


@njit(cache=True, error_model="numpy")
def _insert(s, x):
    w = int(s[_MAX_BUCKETS]) + 1  # row width
    v0 = _B + _LEVELS * w  # start of the variance rows
    n = int(s[_C])
    s[_B + n] = x
    s[v0 + n] = 0.0
    s[_C] = n + 1
    s[_WIDTH] += 1.0
    inc = 0.0
    if s[_WIDTH] > 1.0:
        d = x - s[_TOTAL] / (s[_WIDTH] - 1.0)
        inc = (s[_WIDTH] - 1.0) * d * d / s[_WIDTH]
    s[_VARIANCE] += inc
    s[_TOTAL] += x
    # merge the two oldest buckets of every full level into one bucket of the next level
    k = 0
    while int(s[_C + k]) == w:
        n1 = float(1 << k)
        t, v = _B + k * w, v0 + k * w
        mu1 = s[t] / n1
        mu2 = s[t + 1] / n1
        temp = n1 * 0.5 * (mu1 - mu2) * (mu1 - mu2)
        v12 = s[v] + s[v + 1] + temp
        if k + 1 >= s[_N_LEVELS]:
            s[_N_LEVELS] += 1.0
        n = int(s[_C + k + 1])
        s[t + w + n] = s[t] + s[t + 1]
        s[v + w + n] = v12
        s[_C + k + 1] = n + 1
        _shift(s, t, w, 2)
        _shift(s, v, w, 2)
        s[_C + k] = w - 2
        if n + 1 < w:
            break
        k += 1


@njit(cache=True, error_model="numpy")
def _delete_oldest(s):
    w = int(s[_MAX_BUCKETS]) + 1
    last = int(s[_N_LEVELS]) - 1
    t, v = _B + last * w, _B + (_LEVELS + last) * w
    n = float(1 << last)
    mu = s[t] / n
    s[_WIDTH] -= n
    s[_TOTAL] -= s[t]
    mu_window = s[_TOTAL] / s[_WIDTH]
    s[_VARIANCE] -= s[v] + n * s[_WIDTH] * (mu - mu_window) * (mu - mu_window) / (n + s[_WIDTH])
    m = int(s[_C + last])
    _shift(s, t, m, 1)
    _shift(s, v, m, 1)
    s[_C + last] = m - 1
    # river pops the emptied last level; with max_buckets == 1 the level below can be empty as well
    # (river then panics on its next deletion), so drop every empty trailing level
    while s[_N_LEVELS] > 1.0 and s[_C + int(s[_N_LEVELS]) - 1] == 0.0:
        s[_N_LEVELS] -= 1.0


@njit(cache=True, error_model="numpy")
def _detect(s):
    change = False
    s[_PHASE] += 1.0
    if s[_PHASE] == s[_CLOCK]:
        s[_PHASE] = 0.0
    if s[_PHASE] != 0.0 or not s[_WIDTH] > s[_GRACE_PERIOD]:
        return change
    w = int(s[_MAX_BUCKETS]) + 1
    mwl = s[_MIN_WINDOW_LENGTH]
    reduce_width = True
    while reduce_width:
        reduce_width = False
        # the parts of river's evaluate_cut that only depend on the window
        delta_prime = math.log(2.0 * math.log(s[_WIDTH]) / s[_DELTA])
        mean_variance = s[_VARIANCE] / s[_WIDTH]
        n0, n1, u0, u1 = 0.0, s[_WIDTH], 0.0, s[_TOTAL]
        done = False
        for k in range(int(s[_N_LEVELS]) - 1, -1, -1):  # oldest (largest) buckets first
            size = float(1 << k)
            m = int(s[_C + k])
            for j in range(m):
                total = s[_B + k * w + j]
                n0 += size
                n1 -= size
                u0 += total
                u1 -= total
                if k == 0 and j == m - 1:
                    done = True
                    break
                delta_mean = (u0 / n0) - (u1 / n1)
                if n1 >= mwl and n0 >= mwl:
                    m_recip = 1.0 / (n0 - mwl + 1.0) + 1.0 / (n1 - mwl + 1.0)
                    epsilon = math.sqrt(2.0 * m_recip * mean_variance * delta_prime) + 2.0 / 3.0 * delta_prime * m_recip
                    if abs(delta_mean) > epsilon:
                        reduce_width = True
                        change = True
                        if s[_WIDTH] > 0.0:
                            _delete_oldest(s)
                            done = True
                            break
            if done:
                break
    return change


@njit(cache=True, error_model="numpy")
def _update_one(s, x):
    # river's ADWIN starts a fresh window at the start of the update that follows a detection
    if s[DRIFT] != 0.0:
        _reset(s)
    _insert(s, x)
    s[DRIFT] = 1.0 if _detect(s) else 0.0
    return s[DRIFT] != 0.0


@njit(cache=True, error_model="numpy")
def _update_many(s, xs):
    out = np.empty(xs.shape[0], dtype=np.int64)
    n = 0
    for t in range(xs.shape[0]):
        if _update_one(s, xs[t]):
            out[n] = t
            n += 1
    return out[:n].copy()


class ADWIN(Detector):
    """Adaptive Windowing: keeps the longest recent window in which no two sub-windows differ in mean.

    As in river, the update after a detection starts again from an empty window.

    Parameters
    ----------
    delta
        Significance value of the test between the two sub-windows.
    clock
        How often (in values) the cut points are checked; 1 checks after every value.
    max_buckets
        How many buckets of each size are kept before the two oldest are merged.
    min_window_length
        The smallest sub-window considered at a cut point.
    grace_period
        No change is looked for until the window holds more than this many values.

    Examples
    --------
    >>> import random
    >>> from shepherd.monitoring.detectors import ADWIN

    >>> rng = random.Random(12345)
    >>> adwin = ADWIN()
    >>> data_stream = rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)

    >>> for i, val in enumerate(data_stream):
    ...     if adwin.update(val).drift_detected:
    ...         print(f"Change detected at index {i}, input value: {val}")
    Change detected at index 1023, input value: 4

    The same stream in one compiled pass:

    >>> ADWIN().update_many(data_stream).tolist()
    [1023]
    """

    _update_one = staticmethod(_update_one)
    _update_many = staticmethod(_update_many)

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        if max_buckets < 1 or clock < 1:
            raise ValueError("max_buckets and clock must be at least 1")
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        super().__init__()

    def _initial_state(self) -> np.ndarray:
        s = np.zeros(_B + 2 * _LEVELS * (self.max_buckets + 1))
        s[_DELTA:_N_LEVELS] = self.delta, self.min_window_length, self.grace_period, self.clock, self.max_buckets
        _reset(s)
        return s

    @property
    def width(self) -> float:
        """Number of values in the window."""
        return float(self._s[_WIDTH])

    @property
    def total(self) -> float:
        """Sum of the values in the window."""
        return float(self._s[_TOTAL])

    @property
    def variance(self) -> float:
        """Sum of squared deviations from the mean in the window (river's ``variance``)."""
        return float(self._s[_VARIANCE])

    @property
    def estimation(self) -> float:
        """Mean of the window (0.0 when it is empty)."""
        return self.total / self.width if self.width else 0.0

