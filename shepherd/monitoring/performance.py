"""Model performance from ground truth: classifier and regressor metrics, and the drop against a baseline.

Classifiers: accuracy; precision, recall and F1 of the positive class (1) when every label is 0
or 1, else their macro averages over the classes seen in labels or predictions (a class never
predicted has precision 0); ROC AUC from the class scores (binary: the score of class 1, or the
only score column; multiclass: macro one-vs-rest over the classes present in the labels), with
ties given average ranks (the Mann-Whitney form, as scikit-learn computes it). ROC AUC is None
when only one class is present or no scores are logged.

Regressors: MAE and RMSE.

The drop is relative: (baseline - current) / baseline for metrics where higher is better,
(current - baseline) / baseline for errors (mae, rmse).
"""

from __future__ import annotations

import numpy as np

LOWER_IS_BETTER = {"mae", "rmse"}


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(xs)]))
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc_binary(positive: np.ndarray, scores: np.ndarray) -> float | None:
    pos = positive.astype(bool)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(scores.astype(np.float64))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None) -> dict[str, float | None]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    out: dict[str, float | None] = {"accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else None}
    classes = np.union1d(y_true, y_pred)
    binary = set(classes.tolist()) <= {0.0, 1.0}
    targets = [1.0] if binary else list(classes)
    p, r, f = [], [], []
    for c in targets:
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        pp = float(np.sum(y_pred == c))
        ap = float(np.sum(y_true == c))
        prec = tp / pp if pp else 0.0
        rec = tp / ap if ap else 0.0
        p.append(prec)
        r.append(rec)
        f.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    out["precision"], out["recall"], out["f1"] = float(np.mean(p)), float(np.mean(r)), float(np.mean(f))
    out["roc_auc"] = None
    if scores is not None and scores.size and len(y_true):
        if binary:
            col = scores[:, 1] if scores.shape[1] >= 2 else scores[:, 0]
            out["roc_auc"] = roc_auc_binary(y_true == 1.0, col)
        else:
            aucs = [
                roc_auc_binary(y_true == c, scores[:, int(c)])
                for c in np.unique(y_true) if 0 <= c < scores.shape[1] and float(c).is_integer()
            ]
            aucs = [a for a in aucs if a is not None]
            out["roc_auc"] = float(np.mean(aucs)) if aucs else None
    return out


def regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    if not len(y_true):
        return {"mae": None, "rmse": None}
    err = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err * err)))}


def relative_drop(metric: str, baseline: float, current: float) -> float:
    """How much worse `current` is than `baseline`, as a fraction of the baseline (negative: better)."""
    if baseline == 0:
        return 0.0 if current == baseline else (float("inf") if metric in LOWER_IS_BETTER else -float("inf"))
    if metric in LOWER_IS_BETTER:
        return (current - baseline) / abs(baseline)
    return (baseline - current) / abs(baseline)
