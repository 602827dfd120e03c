"""Training plots as PNG: the ROC curve, loss curves, and input features by class.

matplotlib is imported lazily with the Agg backend (no display on workers or servers).
Each function writes one file and returns its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras

MAX_FEATURE_PANELS = 16


def roc_plot(path: Path, fpr: np.ndarray, tpr: np.ndarray) -> Path:
    plt = extras.pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC = {float(np.trapezoid(tpr, fpr)):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("background efficiency (false positive rate)")
    ax.set_ylabel("signal efficiency (true positive rate)")
    ax.set_title("ROC curve, test split")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def loss_plot(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    plt = extras.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    units = [h["unit"] for h in history]
    left.plot(units, [h["loss"] for h in history], marker="o", label="training")
    left.plot(units, [h["val_loss"] for h in history], marker="o", label="validation")
    left.set_ylabel("binary cross-entropy")
    right.plot(units, [h["auc"] for h in history], marker="o", label="training")
    right.plot(units, [h["val_auc"] for h in history], marker="o", label="validation")
    right.set_ylabel("AUC")
    per_chunk = bool(history) and history[0].get("chunk", -1) >= 0
    for ax in (left, right):
        ax.set_xlabel("chunk" if per_chunk else "epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def feature_plot(
    path: Path, X: np.ndarray, mask: np.ndarray, labels: np.ndarray, names: Sequence[str]
) -> Path:
    """Histograms of the (normalised) real values of the first features, signal vs background."""
    plt = extras.pyplot()
    count = min(len(names), MAX_FEATURE_PANELS)
    columns = 4
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    signal = labels > 0.5
    for i, ax in enumerate(axes.flat):
        if i >= count:
            ax.axis("off")
            continue
        real = mask[:, i]
        values = X[:, i]
        finite = real & np.isfinite(values)
        bins = np.linspace(*_range(values[finite]), 41)
        for selected, name in ((~signal, "background"), (signal, "signal")):
            chosen = values[finite & selected]
            if len(chosen):
                ax.hist(chosen, bins=bins, density=True, histtype="step", label=name)
        ax.set_title(names[i], fontsize=8)
        ax.tick_params(labelsize=6)
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _range(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    return (float(low), float(high)) if high > low else (float(low) - 0.5, float(low) + 0.5)
