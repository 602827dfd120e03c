"""Chunks and batches: what a ChunkStream delivers, and the model inputs of a batch.

A model takes ``X`` alone, or ``{"features": X, "mask": mask}`` when it uses the padding
mask: :func:`model_inputs` builds either, the one place that knows the two names
(:data:`FEATURES`, :data:`MASK`) that training, ONNX export and serving share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The names of a masked model's two inputs.
FEATURES = "features"
MASK = "mask"


def model_inputs(X: Any, mask: Any, with_mask: bool) -> Any:
    """``X``, or ``{"features": X, "mask": mask}`` for a model that takes the mask."""
    return {FEATURES: X, MASK: mask} if with_mask else X


@dataclass
class Chunk:
    """One chunk of mixed events.

    ``X``/``mask`` when the stream has a Vectorizer, else ``arrays`` (branch → array);
    ``y`` and ``w`` when labels/weights are configured; ``file_index``/``entry`` say
    where every row came from (``files[file_index]``).
    """

    files: list[str]
    file_index: np.ndarray
    entry: np.ndarray
    X: np.ndarray | None = None
    mask: np.ndarray | None = None
    y: np.ndarray | None = None
    w: np.ndarray | None = None
    arrays: dict[str, Any] | None = None
    clipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entry)


@dataclass
class Batch:
    """A training batch: features, mask, labels and weights (the last two may be None)."""

    X: np.ndarray
    mask: np.ndarray
    y: np.ndarray | None
    w: np.ndarray | None

    def __len__(self) -> int:
        return len(self.X)

    def inputs(self, with_mask: bool) -> Any:
        """The model inputs of this batch (see :func:`model_inputs`)."""
        return model_inputs(self.X, self.mask, with_mask)


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``[start, stop)`` of a batch (views, no copy)."""
    return Batch(
        batch.X[start:stop],
        batch.mask[start:stop],
        None if batch.y is None else batch.y[start:stop],
        None if batch.w is None else batch.w[start:stop],
    )


def concat_batches(parts: list[Batch]) -> Batch:
    """One batch of the rows of ``parts``, in order."""
    if len(parts) == 1:
        return parts[0]
    return Batch(
        np.concatenate([p.X for p in parts]),
        np.concatenate([p.mask for p in parts]),
        None if parts[0].y is None else np.concatenate([p.y for p in parts]),
        None if parts[0].w is None else np.concatenate([p.w for p in parts]),
    )
