"""The detector contract, modelled on river's ``base.DriftDetector``.

A detector consumes one value at a time with ``update(x)``, which returns the detector itself, and
exposes the outcome of the last update through the read-only ``drift_detected`` property. As in
river, a detector that flagged a drift forgets everything at the start of the next update.

The whole state of a detector, parameters included, lives in one float64 array that Numba
``@njit(cache=True)`` kernels mutate in place: ``_update_one(s, x) -> bool`` for one value and
``_update_many(s, xs) -> indices``, which runs the same step over a whole array inside one compiled
loop (this is where the speed comes from). Both leave the detector in the same state.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from typing import Any, Self

import numba
import numpy as np

# Slot 0 of every detector's state array holds the drift flag of the last update.
DRIFT = 0

_entry_points: dict[Any, Callable[[np.ndarray, float], bool]] = {}


def _entry_point(kernel: Any) -> Callable[[np.ndarray, float], bool]:
    """The compiled ``(float64[::1], float64)`` entry point of a kernel: calling it skips the
    dispatcher's type resolution, which is most of the cost of a single-value update. It converts
    any real number (int, bool, numpy scalar) to float64 itself."""
    if kernel not in _entry_points:
        try:
            _entry_points[kernel] = kernel.compile((numba.float64[::1], numba.float64))
        except Exception:  # noqa: BLE001 - an unforeseen numba API: the dispatcher is still correct
            _entry_points[kernel] = lambda s, x: kernel(s, float(x))
    return _entry_points[kernel]


class Detector(abc.ABC):
    """A streaming drift detector: ``update(x)``, ``drift_detected``, ``reset()``, ``update_many(xs)``.

    Subclasses provide ``_initial_state()`` and the two kernels as static methods.
    """

    _s: np.ndarray
    _drift: bool

    def __init__(self) -> None:
        self.reset()

    @abc.abstractmethod
    def _initial_state(self) -> np.ndarray:
        """A fresh state array (float64, C-contiguous, the drift flag at ``DRIFT``)."""

    @staticmethod
    @abc.abstractmethod
    def _update_one(*args: Any) -> bool:
        """Numba kernel: ``(s, x)`` -> whether this value flagged a drift."""

    @staticmethod
    @abc.abstractmethod
    def _update_many(*args: Any) -> np.ndarray:
        """Numba kernel: ``(s, xs)`` -> int64 positions in ``xs`` that flagged a drift."""

    def reset(self) -> None:
        """Forget every value seen so far (``drift_detected`` becomes false)."""
        self._s = self._initial_state()
        self._drift = False
        self._one = _entry_point(type(self)._update_one)

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected a drift."""
        return self._drift

    def update(self, x: float) -> Self:
        """Update the detector with a single value and return it."""
        self._drift = self._one(self._s, x)
        return self

    def update_many(self, xs: Any) -> np.ndarray:
        """Update with every value of a 1-D array in order; return the positions in ``xs`` (int64)
        after which ``drift_detected`` was true, exactly as calling ``update`` on each would."""
        arr = np.ascontiguousarray(xs, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"update_many expects a 1-D array, got shape {arr.shape}")
        idx = type(self)._update_many(self._s, arr)
        self._drift = bool(self._s[DRIFT])
        return idx

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_one"]  # a compiled function: looked up again on unpickling
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._one = _entry_point(type(self)._update_one)

    def __repr__(self) -> str:
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"
