"""Monitoring: drift kernels (Numba), streaming detectors, reference profiles, windows and alerts."""
