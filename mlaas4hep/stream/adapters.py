"""Adapters from a ChunkStream to TensorFlow and PyTorch input pipelines.

They take any object with the stream's batch interface (``batches``, ``shard``,
``vectorizer``, ``has_labels``, ``weight_expr``) and import no stream module, so the
stream can offer them as methods without an import cycle.

Both frameworks are imported only when one of these functions is called, so the core
library works without either. Features are ``X`` alone, or ``{"features": X, "mask":
mask}`` for models that use the mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.stream.batches import FEATURES, MASK, model_inputs


def tf_dataset(stream: Any, batch_size: int, epoch: int = 0, *, with_mask: bool = False) -> Any:
    """A ``tf.data.Dataset`` yielding ``(features, y)`` or ``(features, y, w)`` batches."""
    tf = extras.tensorflow()
    if stream.vectorizer is None:
        raise ValueError("a TensorFlow dataset needs a stream with a Vectorizer")
    n_features = stream.vectorizer.n_features
    x_spec = tf.TensorSpec(shape=(None, n_features), dtype=tf.float32)
    features_spec: Any = x_spec
    if with_mask:
        mask_spec = tf.TensorSpec(shape=(None, n_features), dtype=tf.bool)
        features_spec = {FEATURES: x_spec, MASK: mask_spec}
    signature: list[Any] = [features_spec]
    has_labels = stream.has_labels
    has_weights = stream.weight_expr is not None
    if has_labels:
        signature.append(tf.TensorSpec(shape=(None,), dtype=tf.float32))
    if has_weights:
        signature.append(tf.TensorSpec(shape=(None,), dtype=tf.float32))

    def generate() -> Iterator[tuple[Any, ...]]:
        for batch in stream.batches(batch_size, epoch):
            item: list[Any] = [batch.inputs(with_mask)]
            if has_labels:
                item.append(batch.y)
            if has_weights:
                item.append(batch.w)
            yield tuple(item)

    return tf.data.Dataset.from_generator(generate, output_signature=tuple(signature))


def torch_dataset(stream: Any, batch_size: int, epoch: int = 0, *, with_mask: bool = False) -> Any:
    """A ``torch.utils.data.IterableDataset`` of batches; DataLoader workers get shards."""
    torch = extras.torch()

    class ChunkStreamDataset(torch.utils.data.IterableDataset):
        """Batches of a ChunkStream as tensors; ``set_epoch`` changes the shuffle."""

        def __init__(self) -> None:
            super().__init__()
            self.epoch = epoch

        def set_epoch(self, value: int) -> None:
            self.epoch = value

        def __iter__(self) -> Iterator[tuple[Any, ...]]:
            part = stream
            info = torch.utils.data.get_worker_info()
            if info is not None and info.num_workers > 1:
                part = stream.shard(info.id, info.num_workers)
            for batch in part.batches(batch_size, self.epoch):
                features = torch.from_numpy(np.ascontiguousarray(batch.X))
                mask = torch.from_numpy(batch.mask) if with_mask else None
                item: list[Any] = [model_inputs(features, mask, with_mask)]
                if batch.y is not None:
                    item.append(torch.from_numpy(batch.y))
                if batch.w is not None:
                    item.append(torch.from_numpy(batch.w))
                yield tuple(item)

    return ChunkStreamDataset()
