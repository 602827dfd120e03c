"""Classifier metrics in plain numpy: the ROC curve and the area under it.

Training jobs, the validation script and the serving tests all need the same AUC;
computing it here (sorted scores, ties handled as one threshold, sample weights
optional) keeps scikit-learn out of the dependencies and gives the same number on a
worker, in the driver and in a test.
"""

from __future__ import annotations

import numpy as np


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, thresholds decreasing, starting at (0, 0)."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, int)
    tp = np.cumsum(w * y)[last_of_tie]
    fp = np.cumsum(w * ~y)[last_of_tie]
    pos, neg = (tp[-1], fp[-1]) if s.size else (0.0, 0.0)
    if pos <= 0 or neg <= 0:
        raise ValueError("the ROC curve needs both signal and background events")
    tpr = np.r_[0.0, tp / pos]
    fpr = np.r_[0.0, fp / neg]
    thresholds = np.r_[np.inf, s[last_of_tie]]
    return fpr, tpr, thresholds


def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve (trapezoids; 0.5 for a random classifier)."""
    fpr, tpr, _ = roc_curve(labels, scores, weights)
    return float(np.trapezoid(tpr, fpr))
