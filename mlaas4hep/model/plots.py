"""Training plots as PNG: ROC curves, the confusion matrix, residuals and resolution,
loss and metric curves, and input features by class.

matplotlib is imported lazily with the Agg backend (no display on workers or servers).
Each function writes one file and returns its path.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.model.metrics import roc_curve
from mlaas4hep.model.tasks import BINARY, Task, class_indices, weighted_quantiles

MAX_FEATURE_PANELS = 16
LOSS_NAMES = {
    "bce": "binary cross-entropy",
    "cce": "categorical cross-entropy",
    "mse": "MSE / σ²",
    "huber": "Huber (σ units)",
}


def roc_plot(path: Path, fpr: np.ndarray, tpr: np.ndarray) -> Path:
    """The ROC curve of a binary classifier (signal efficiency against background's)."""
    return _roc_figure(
        path,
        [(fpr, tpr, "")],
        "background efficiency (false positive rate)",
        "signal efficiency (true positive rate)",
        "ROC curve, test split",
    )


def multiclass_roc_plot(
    path: Path,
    labels: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    weights: np.ndarray | None = None,
) -> Path:
    """One-vs-rest ROC curve of each class (its probability against every other class)."""
    index = class_indices(labels, len(classes))
    curves = []
    for c, name in enumerate(classes):
        try:
            fpr, tpr, _ = roc_curve(index == c, scores[:, c], weights)
        except ValueError:  # a class absent from the test split
            continue
        curves.append((fpr, tpr, f"{name} vs rest: "))
    return _roc_figure(
        path,
        curves,
        "false positive rate (other classes)",
        "true positive rate (the class)",
        "one-vs-rest ROC curves, test split",
    )


def _roc_figure(
    path: Path,
    curves: Sequence[tuple[np.ndarray, np.ndarray, str]],
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    plt = extras.pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for fpr, tpr, name in curves:
        ax.plot(fpr, tpr, label=f"{name}AUC = {float(np.trapezoid(tpr, fpr)):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8 if len(curves) > 1 else None)
    return _saved(plt, fig, path)


def _saved(plt: Any, fig: Any, path: Path, dpi: int = 90) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def confusion_plot(
    path: Path,
    labels: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    weights: np.ndarray | None = None,
) -> Path:
    """The confusion matrix (rows: true class, normalised to 1; columns: the most
    probable class)."""
    from mlaas4hep.model.tasks import confusion_matrix

    plt = extras.pyplot()
    n = len(classes)
    matrix = np.asarray(
        confusion_matrix(class_indices(labels, n), np.argmax(scores, axis=1), n, weights)
    )
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center",
                color="white" if value > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(n), classes, rotation=30, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix, test split")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _saved(plt, fig, path)


def regression_plot(
    path: Path, target: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None
) -> Path:
    """Three panels: predicted against true, the residuals' histogram, and the relative
    resolution (half the 16–84 % interval of residual / |target|) in bins of the target."""
    plt = extras.pyplot()
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
    low, high = _range(np.r_[y, p])
    left.hist2d(y, p, bins=60, range=[[low, high], [low, high]], weights=w, cmin=1e-12)
    left.plot([low, high], [low, high], ls="--", color="grey", lw=0.8)
    left.set_xlabel("true value")
    left.set_ylabel("predicted value")
    residual = p - y
    middle.hist(residual, bins=np.linspace(*_range(residual), 61), weights=w, histtype="step")
    middle.set_xlabel("residual (predicted − true)")
    middle.set_ylabel("events")
    edges = np.quantile(y, np.linspace(0, 1, 11))
    centres, widths = [], []
    for a, b in itertools.pairwise(edges):
        inside = (y >= a) & (y <= b) & (np.abs(y) > 0)
        if inside.sum() < 10:
            continue
        relative = residual[inside] / np.abs(y[inside])
        q16, q84 = weighted_quantiles(relative, [0.16, 0.84], None if w is None else w[inside])
        centres.append((a + b) / 2)
        widths.append((q84 - q16) / 2)
    right.plot(centres, widths, marker="o")
    right.set_xlabel("true value (deciles)")
    right.set_ylabel("relative resolution (σ of residual / true)")
    right.set_ylim(bottom=0)
    fig.suptitle("regression, test split")
    return _saved(plt, fig, path)


def loss_plot(path: Path, history: Sequence[dict[str, Any]], task: Task = BINARY) -> Path:
    """The loss and the task's metric per unit, training and validation."""
    plt = extras.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    units = [h["unit"] for h in history]
    left.plot(units, [h["loss"] for h in history], marker="o", label="training")
    left.plot(units, [h["val_loss"] for h in history], marker="o", label="validation")
    left.set_ylabel(LOSS_NAMES.get(task.loss, task.loss))
    metric = task.train_metric
    right.plot(units, [h.get(metric) for h in history], marker="o", label="training")
    right.plot(units, [h.get(f"val_{metric}") for h in history], marker="o", label="validation")
    right.set_ylabel({"auc": "AUC", "accuracy": "accuracy", "mae": "mean absolute error"}[metric])
    per_chunk = bool(history) and history[0].get("chunk", -1) >= 0
    for ax in (left, right):
        ax.set_xlabel("chunk" if per_chunk else "epoch")
        ax.legend()
    return _saved(plt, fig, path)


def feature_plot(
    path: Path,
    X: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    task: Task = BINARY,
    weights: np.ndarray | None = None,
) -> Path:
    """Histograms of the (normalised) real values of the first features by class:
    signal vs background, each class, or a regression's target below and above its
    median (weighted by the events' ``weights`` when given)."""
    plt = extras.pyplot()
    count = min(len(names), MAX_FEATURE_PANELS)
    columns = 4
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    y = np.asarray(labels).reshape(-1)
    if task.kind == "multiclass":
        groups = [(y == c, name) for c, name in enumerate(task.classes)]
    elif task.kind == "regression":
        median = float(np.median(y)) if len(y) else 0.0
        groups = [(y <= median, "target ≤ median"), (y > median, "target > median")]
    else:
        groups = [(y <= 0.5, "background"), (y > 0.5, "signal")]
    for i, ax in enumerate(axes.flat):
        if i >= count:
            ax.axis("off")
            continue
        real = mask[:, i]
        values = X[:, i]
        finite = real & np.isfinite(values)
        bins = np.linspace(*_range(values[finite]), 41)
        for selected, name in groups:
            keep = finite & selected
            if keep.any():
                w = None if weights is None else weights[keep]
                ax.hist(values[keep], bins=bins, weights=w, density=True, histtype="step",
                        label=name)  # fmt: skip
        ax.set_title(names[i], fontsize=8)
        ax.tick_params(labelsize=6)
        if i == 0:
            ax.legend(fontsize=6)
    return _saved(plt, fig, path, dpi=80)


def _range(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    return (float(low), float(high)) if high > low else (float(low) - 0.5, float(low) + 0.5)
