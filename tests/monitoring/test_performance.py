"""Performance metrics against scikit-learn, and the relative drop rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from shepherd.monitoring import performance as P

labels = st.integers(2, 200).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0]), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(labels)
def test_binary_metrics_equal_sklearn(data):
    """Accuracy, precision, recall, F1 (positive class 1) and ROC AUC (ties included) equal scikit-learn's."""
    y, pred, score = (np.array(a, dtype=np.float64) for a in data)
    got = P.classification(y, pred, np.column_stack([1 - score, score]))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0), abs=1e-12)
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0), abs=1e-12)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0), abs=1e-12)
    if len(set(y.tolist())) == 2:
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    else:
        assert got["roc_auc"] is None


@settings(max_examples=100, deadline=None)
@given(st.integers(3, 150).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 2), min_size=n, max_size=n), st.lists(st.integers(0, 2), min_size=n, max_size=n),
    st.lists(st.lists(st.floats(0.01, 1), min_size=3, max_size=3), min_size=n, max_size=n),
)))
def test_multiclass_macro_metrics_equal_sklearn(data):
    """Multiclass precision/recall/F1 are macro averages and ROC AUC is macro one-vs-rest, as in scikit-learn."""
    y, pred = np.array(data[0], dtype=np.float64), np.array(data[1], dtype=np.float64)
    scores = np.array(data[2])
    scores = scores / scores.sum(axis=1, keepdims=True)
    got = P.classification(y, pred, scores)
    present = np.union1d(y, pred)
    if set(present.tolist()) <= {0.0, 1.0}:
        return  # binary by the rule above; covered by the binary test
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro", labels=present, zero_division=0), abs=1e-12)
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro", labels=present, zero_division=0), abs=1e-12)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=present, zero_division=0), abs=1e-12)
    classes = np.unique(y)
    if len(classes) >= 2:
        expected = np.mean([skm.roc_auc_score(y == c, scores[:, int(c)]) for c in classes])
        assert got["roc_auc"] == pytest.approx(expected, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), min_size=1, max_size=100))
def test_regression_metrics_equal_sklearn(pairs):
    """MAE and RMSE equal scikit-learn's."""
    y, pred = (np.array(a) for a in zip(*pairs))
    got = P.regression(y, pred)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-9, abs=1e-9)
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)), rel=1e-9, abs=1e-9)


def test_relative_drop_direction():
    """A lower accuracy or a higher RMSE is a positive drop, as a fraction of the baseline."""
    assert P.relative_drop("accuracy", 0.9, 0.81) == pytest.approx(0.1)
    assert P.relative_drop("accuracy", 0.9, 0.99) == pytest.approx(-0.1)
    assert P.relative_drop("rmse", 2.0, 2.5) == pytest.approx(0.25)
    assert P.relative_drop("rmse", 0.0, 0.0) == 0.0
