"""Shepherd: an MLOps appliance for air-gapped GPU servers."""

__version__ = "0.1.0"
