"""ADaptive WINdowing (Bifet & Gavaldà, 2007), a line-by-line port of river's ADWIN.

river's ``drift.ADWIN`` keeps its window in ``AdaptiveWindowing`` (``rust_src/adwin.rs`` in river
0.26, itself a port of the older Cython ``adwin_c.pyx``): an exponential histogram where level ``k``
holds up to ``max_buckets`` buckets that each summarise ``2**k`` values (their total and their
variance). Every ``clock`` values all cut points of the window are tested; while two sub-windows'
means differ by more than the Hoeffding-style bound, the oldest bucket is dropped, and a drift is
flagged. The arithmetic below keeps river's operation order so that every float, and hence every
detection, is identical (divisions by a bucket size 2**k are multiplications by the exact 2**-k,
which round to the same float). ``update_many`` keeps the window's running sums in locals between
cut-point scans, and a scan evaluates the test at every cut point in one vectorised loop before
acting on the first that fires, as river's scan does.
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
_INV_POW2 = 2.0 ** -np.arange(_LEVELS, dtype=np.float64)  # exact powers of two


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
    _merge(s, w, v0)


@njit(cache=True, error_model="numpy")
def _merge(s, w, v0):
    # merge the two oldest buckets of every full level into one bucket of the next level
    # (x / 2**k is computed as x * 2**-k: both are the correctly rounded value of the same real)
    k = 0
    while int(s[_C + k]) == w:
        n1 = float(1 << k)
        r = _INV_POW2[k]
        t, v = _B + k * w, v0 + k * w
        a = s[t]
        b = s[t + 1]
        mu1 = a * r
        mu2 = b * r
        temp = n1 * 0.5 * (mu1 - mu2) * (mu1 - mu2)
        v12 = s[v] + s[v + 1] + temp
        if k + 1 >= s[_N_LEVELS]:
            s[_N_LEVELS] += 1.0
        n = int(s[_C + k + 1])
        s[t + w + n] = a + b
        s[v + w + n] = v12
        s[_C + k + 1] = n + 1
        for j in range(w - 2):
            s[t + j] = s[t + j + 2]
            s[v + j] = s[v + j + 2]
        s[t + w - 2] = 0.0
        s[t + w - 1] = 0.0
        s[v + w - 2] = 0.0
        s[v + w - 1] = 0.0
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
    s[_PHASE] += 1.0
    if s[_PHASE] == s[_CLOCK]:
        s[_PHASE] = 0.0
    if s[_PHASE] != 0.0 or not s[_WIDTH] > s[_GRACE_PERIOD]:
        return False
    return _scan(s, _scratch(s))


@njit(cache=True, error_model="numpy")
def _scratch(s):
    return np.empty((5, _LEVELS * (int(s[_MAX_BUCKETS]) + 1)))


@njit(cache=True, error_model="numpy")
def _scan(s, buf):
    # river's detect_change once the clock ticks and the grace period is over: test every cut point,
    # oldest first, and drop the oldest bucket while some cut shows a change. Each round first lists
    # the cut points (the running sub-window sizes and sums, accumulated in river's order) and then
    # evaluates the test at all of them in a loop without early exit, which Numba vectorises; the
    # first cut that passes acts, exactly as in river's scan (the test has no side effects).
    change = False
    w = int(s[_MAX_BUCKETS]) + 1
    mwl = s[_MIN_WINDOW_LENGTH]
    c_n0, c_n1, c_u0, c_u1, hit = buf[0], buf[1], buf[2], buf[3], buf[4]
    reduce_width = True
    while reduce_width:
        reduce_width = False
        # the parts of river's evaluate_cut that only depend on the window
        delta_prime = math.log(2.0 * math.log(s[_WIDTH]) / s[_DELTA])
        mean_variance = s[_VARIANCE] / s[_WIDTH]
        n0, n1, u0, u1 = 0.0, s[_WIDTH], 0.0, s[_TOTAL]
        n_cuts = 0
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
                c_n0[n_cuts] = n0
                c_n1[n_cuts] = n1
                c_u0[n_cuts] = u0
                c_u1[n_cuts] = u1
                n_cuts += 1
            if done:
                break
        for i in range(n_cuts):
            a0 = c_n0[i]
            a1 = c_n1[i]
            delta_mean = (c_u0[i] / a0) - (c_u1[i] / a1)
            m_recip = 1.0 / (a0 - mwl + 1.0) + 1.0 / (a1 - mwl + 1.0)
            epsilon = math.sqrt(2.0 * m_recip * mean_variance * delta_prime) + 2.0 / 3.0 * delta_prime * m_recip
            hit[i] = 1.0 if (a1 >= mwl) & (a0 >= mwl) & (abs(delta_mean) > epsilon) else 0.0
        for i in range(n_cuts):
            if hit[i] != 0.0:
                reduce_width = True
                change = True
                if s[_WIDTH] > 0.0:
                    _delete_oldest(s)
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


@njit(cache=True, error_model="numpy", nogil=True)  # the monitor thread runs it: leave the GIL to serving
def _update_many(s, xs):
    # _update_one over xs with the window's total, variance and width, the clock phase and the
    # drift flag held in locals (not re-read from s after every store); they are written back to s
    # around every cut-point scan and at the end. Same operations in the same order: same floats.
    out = np.empty(xs.shape[0], dtype=np.int64)
    nd = 0
    w = int(s[_MAX_BUCKETS]) + 1
    v0 = _B + _LEVELS * w
    clock = s[_CLOCK]
    grace = s[_GRACE_PERIOD]
    drift = s[DRIFT] != 0.0
    total = s[_TOTAL]
    variance = s[_VARIANCE]
    width = s[_WIDTH]
    phase = s[_PHASE]
    buf = _scratch(s)
    for t in range(xs.shape[0]):
        x = xs[t]
        if drift:
            _reset(s)
            total = variance = width = phase = 0.0
        # _insert
        n = int(s[_C])
        s[_B + n] = x
        s[v0 + n] = 0.0
        width += 1.0
        inc = 0.0
        if width > 1.0:
            d = x - total / (width - 1.0)
            inc = (width - 1.0) * d * d / width
        variance += inc
        total += x
        if n + 1 < w:
            s[_C] = n + 1
        else:
            s[_C] = n + 1
            _merge(s, w, v0)
        # _detect
        phase += 1.0
        if phase == clock:
            phase = 0.0
        drift = False
        if phase == 0.0 and width > grace:
            s[_TOTAL] = total
            s[_VARIANCE] = variance
            s[_WIDTH] = width
            drift = _scan(s, buf)
            total = s[_TOTAL]
            variance = s[_VARIANCE]
            width = s[_WIDTH]
            if drift:
                out[nd] = t
                nd += 1
    s[_TOTAL] = total
    s[_VARIANCE] = variance
    s[_WIDTH] = width
    s[_PHASE] = phase
    s[DRIFT] = 1.0 if drift else 0.0
    return out[:nd].copy()


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

