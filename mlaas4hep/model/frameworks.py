"""What differs between Keras and PyTorch models once trained: weights and predictions.

Both are saved under the names of :mod:`~mlaas4hep.model.manifest` and take their inputs
as :func:`~mlaas4hep.stream.batches.model_inputs` builds them, so a bundle, a checkpoint
and a served model agree on both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.model.manifest import KERAS_WEIGHTS, TORCH_WEIGHTS
from mlaas4hep.stream.batches import model_inputs


def load_weights(model: Any, framework: str, directory: Path) -> None:
    """Load the weights saved by a training checkpoint or a bundle into ``model``."""
    if framework == "torch":
        torch = extras.torch()
        path = Path(directory) / TORCH_WEIGHTS
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
    else:
        model.load_weights(str(Path(directory) / KERAS_WEIGHTS))


def save_weights(model: Any, framework: str, directory: Path) -> str:
    """Save ``model``'s weights into ``directory``; return the file's name."""
    if framework == "torch":
        torch = extras.torch()
        torch.save(model.state_dict(), Path(directory) / TORCH_WEIGHTS)
        return TORCH_WEIGHTS
    model.save_weights(str(Path(directory) / KERAS_WEIGHTS))
    return KERAS_WEIGHTS


def predict_arrays(
    model: Any, framework: str, X: np.ndarray, mask: np.ndarray, with_mask: bool
) -> np.ndarray:
    """Probabilities (float32, one per row) of ``model`` for vectorised events."""
    if len(X) == 0:
        return np.zeros(0, dtype=np.float32)
    if framework == "torch":
        torch = extras.torch()
        features = torch.from_numpy(np.ascontiguousarray(X))
        torch_mask = torch.from_numpy(np.ascontiguousarray(mask)) if with_mask else None
        inputs = model_inputs(features, torch_mask, with_mask)
        with torch.no_grad():
            return model(inputs).reshape(-1).cpu().numpy().astype(np.float32)
    return (
        np.asarray(model(model_inputs(X, mask, with_mask), training=False))
        .reshape(-1)
        .astype(np.float32)
    )
