"""Drift Detection Method (Gama et al., 2004) for error streams, after ``river.drift.binary.DDM``."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from shepherd.monitoring.detectors.base import DRIFT, Detector

# f[0] drift flag; warning flag, count, error rate, the (p, s) pair where p + s was smallest; parameters
_WARNING, _N, _P, _P_MIN, _S_MIN, _PS_MIN = 1, 2, 3, 4, 5, 6
_WARM_START, _WARNING_THRESHOLD, _DRIFT_THRESHOLD = 7, 8, 9


@njit(cache=True, error_model="numpy")
def _reset(f):
    f[DRIFT] = 0.0
    f[_WARNING] = 0.0
    f[_N] = 0.0
    f[_P] = 0.0
    f[_P_MIN] = np.nan
    f[_S_MIN] = np.nan
    f[_PS_MIN] = np.inf


@njit(cache=True, error_model="numpy")
def _update_one(f, x):
    if f[DRIFT] != 0.0:
        _reset(f)
    # stats.Mean.update with w = 1.0, same operation order
    f[_N] += 1.0
    f[_P] += (1.0 / f[_N]) * (x - f[_P])
    p = f[_P]
    n = f[_N]
    var = p * (1 - p) / n
    if var < 0.0:  # river's math.sqrt raises here too: the input was not in [0, 1]
        raise ValueError("DDM expects binary inputs (0 = correct, 1 = error)")
    s = math.sqrt(var)
    if n > f[_WARM_START]:
        if p + s <= f[_PS_MIN]:
            f[_P_MIN] = p
            f[_S_MIN] = s
            f[_PS_MIN] = f[_P_MIN] + f[_S_MIN]
        f[_WARNING] = 1.0 if p + s > f[_P_MIN] + f[_WARNING_THRESHOLD] * f[_S_MIN] else 0.0
        if p + s > f[_P_MIN] + f[_DRIFT_THRESHOLD] * f[_S_MIN]:
            f[DRIFT] = 1.0
            f[_WARNING] = 0.0
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


class DDM(Detector):
    """Drift Detection Method: watches the error rate ``p`` of a stream of 0/1 outcomes.

    With ``s = sqrt(p (1 - p) / n)`` and ``(p_min, s_min)`` taken where ``p + s`` was smallest, the
    detector warns when ``p + s > p_min + warning_threshold * s_min`` and flags a drift when
    ``p + s > p_min + drift_threshold * s_min``. Input: 1 for an error, 0 for a correct outcome.

    Parameters
    ----------
    warm_start
        The number of values to see before a warning or a drift can be flagged.
    warning_threshold
        Threshold (in units of ``s_min``) of the warning zone; 2.0 is about 95% confidence.
    drift_threshold
        Threshold (in units of ``s_min``) of a drift; 3.0 is about 99% confidence.

    Examples
    --------
    >>> import random
    >>> from shepherd.monitoring.detectors import DDM

    >>> rng = random.Random(42)
    >>> ddm = DDM()
    >>> data_stream = rng.choices([0, 1], k=1000)
    >>> data_stream = data_stream + rng.choices([0, 1], k=1000, weights=[0.3, 0.7])

    >>> print_warning = True
    >>> for i, x in enumerate(data_stream):
    ...     if ddm.update(x).warning_detected and print_warning:
    ...         print(f"Warning detected at index {i}")
    ...         print_warning = False
    ...     if ddm.drift_detected:
    ...         print(f"Change detected at index {i}")
    ...         print_warning = True
    Warning detected at index 1084
    Change detected at index 1334
    Warning detected at index 1492

    The same stream in one compiled pass:

    >>> DDM().update_many(data_stream).tolist()
    [1334]
    """

    _update_one = staticmethod(_update_one)
    _update_many = staticmethod(_update_many)

    def __init__(self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0) -> None:
        self.warm_start = warm_start
        self.warning_threshold = warning_threshold
        self.drift_threshold = drift_threshold
        super().__init__()

    @property
    def warning_detected(self) -> bool:
        """Whether the last update put the detector in the warning zone."""
        return bool(self._s[_WARNING])

    def _initial_state(self) -> np.ndarray:
        f = np.zeros(10)
        f[_WARM_START:] = self.warm_start, self.warning_threshold, self.drift_threshold
        _reset(f)
        return f
