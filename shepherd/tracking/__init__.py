"""Experiment tracking (the MLflow-compatible surface): runs, params, metrics, artifacts, search, registry bridge."""
