"""Page–Hinkley test for changes in the mean of a stream, after ``river.drift.PageHinkley``."""

from __future__ import annotations

import numpy as np
from numba import njit

from shepherd.monitoring.detectors.base import DRIFT, Detector

# f[0] drift flag; running count and mean; cumulative sums and their extrema; then the parameters
_N, _MEAN, _SUM_INC, _SUM_DEC, _MIN_INC, _MAX_DEC = 1, 2, 3, 4, 5, 6
_MIN_INSTANCES, _DELTA, _THRESHOLD, _ALPHA, _MODE = 7, 8, 9, 10, 11
_MODES = {"both": 0, "up": 1, "down": 2}


@njit(cache=True, error_model="numpy")
def _reset(f):
    f[DRIFT] = 0.0
    f[_N] = 0.0
    f[_MEAN] = 0.0
    f[_SUM_INC] = 0.0
    f[_SUM_DEC] = 0.0
    f[_MIN_INC] = np.inf
    f[_MAX_DEC] = -1.0


@njit(cache=True, error_model="numpy")
def _update_one(f, x):
    # river resets at the start of the update that follows a detection
    if f[DRIFT] != 0.0:
        _reset(f)
    # stats.Mean.update with w = 1.0, same operation order
    f[_N] += 1.0
    f[_MEAN] += (1.0 / f[_N]) * (x - f[_MEAN])
    dev = x - f[_MEAN]
    f[_SUM_INC] = f[_ALPHA] * f[_SUM_INC] + dev - f[_DELTA]
    f[_SUM_DEC] = f[_ALPHA] * f[_SUM_DEC] + dev + f[_DELTA]
    if f[_SUM_INC] < f[_MIN_INC]:
        f[_MIN_INC] = f[_SUM_INC]
    if f[_SUM_DEC] > f[_MAX_DEC]:
        f[_MAX_DEC] = f[_SUM_DEC]
    if f[_N] >= f[_MIN_INSTANCES]:
        up = f[_SUM_INC] - f[_MIN_INC] > f[_THRESHOLD]
        down = f[_MAX_DEC] - f[_SUM_DEC] > f[_THRESHOLD]
        drift = (up or down) if f[_MODE] == 0.0 else (up if f[_MODE] == 1.0 else down)
        f[DRIFT] = 1.0 if drift else 0.0
    return f[DRIFT] != 0.0


@njit(cache=True, error_model="numpy", nogil=True)  # the monitor thread runs it: leave the GIL to serving
def _update_many(f, xs):
    out = np.empty(xs.shape[0], dtype=np.int64)
    n = 0
    for t in range(xs.shape[0]):
        if _update_one(f, xs[t]):
            out[n] = t
            n += 1
    return out[:n].copy()


class PageHinkley(Detector):
    """Page–Hinkley method for concept drift detection (two-sided CUSUM on a fading mean).

    Parameters
    ----------
    min_instances
        The minimum number of values before a change can be detected.
    delta
        The delta factor (tolerated magnitude of change) of the test.
    threshold
        The change detection threshold (lambda).
    alpha
        The forgetting factor that weights the cumulative sums.
    mode
        Which changes of the mean to detect: ``"up"``, ``"down"`` or ``"both"``.

    Examples
    --------
    >>> import random
    >>> from shepherd.monitoring.detectors import PageHinkley

    >>> rng = random.Random(12345)
    >>> ph = PageHinkley()
    >>> data_stream = rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)

    >>> for i, val in enumerate(data_stream):
    ...     if ph.update(val).drift_detected:
    ...         print(f"Change detected at index {i}, input value: {val}")
    Change detected at index 1006, input value: 5

    The same stream in one compiled pass:

    >>> PageHinkley().update_many(data_stream).tolist()
    [1006]
    """

    _update_one = staticmethod(_update_one)
    _update_many = staticmethod(_update_many)

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"Invalid 'mode'. Valid values are: {list(_MODES)}")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        super().__init__()

    def _initial_state(self) -> np.ndarray:
        f = np.zeros(12)
        f[_MIN_INSTANCES:] = self.min_instances, self.delta, self.threshold, self.alpha, _MODES[self.mode]
        _reset(f)
        return f
