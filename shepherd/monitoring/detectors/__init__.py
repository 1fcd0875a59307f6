"""Streaming drift detectors (ADWIN, Page–Hinkley, DDM) with river's contract and Numba hot loops."""

from shepherd.monitoring.detectors.adwin import ADWIN
from shepherd.monitoring.detectors.base import Detector
from shepherd.monitoring.detectors.ddm import DDM
from shepherd.monitoring.detectors.page_hinkley import PageHinkley

__all__ = ["ADWIN", "DDM", "Detector", "PageHinkley"]
