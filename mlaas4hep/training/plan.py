"""The step plan: how many batches every worker runs, so that collectives never hang.

Data-parallel training (MultiWorkerMirroredStrategy, DDP) needs every worker to run the
same number of steps. Shards of a :class:`~mlaas4hep.stream.chunks.ChunkStream` hold the same
number of events to within one per block, and a selection cut changes each shard's
count differently; so the driver counts, before training, the events each shard
delivers (from the layout alone without a cut, reading only the cut's branches with
one) and every worker runs ``min(count) // batch_size`` steps. If a shard still runs
dry, :func:`exact_batches` wraps around into the next pass, never stopping early.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlaas4hep.errors import ConfigError
from mlaas4hep.stream.batches import Batch
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.stream.mixing import chunk_plan
from mlaas4hep.stream.options import Reading, Selection


@dataclass
class StepPlan:
    """Steps per unit of training: an epoch (standard mode) or a chunk (per-chunk mode)."""

    mode: str
    epochs: int
    batch_size: int
    num_workers: int
    steps_per_epoch: int = 0
    steps_per_chunk: list[int] = field(default_factory=list)
    validation_steps: int = 0
    train_events: int = 0
    validation_events: int = 0

    @property
    def units(self) -> int:
        """Reports (and checkpoints) in the run: one per epoch, or one per chunk."""
        return self.epochs if self.mode == "standard" else len(self.steps_per_chunk)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shard_counts(stream: ChunkStream, workers: int) -> list[list[int]]:
    """Events per chunk (epoch 0) of each of ``workers`` shards, after the cut."""
    counts = []
    for index in range(workers):
        shard = stream.shard(index, workers)
        if stream.cut_expr is None:
            sizes = np.array(list(shard.events_per_file.values()), dtype=np.int64)
            plan = chunk_plan(sizes, shard.chunk_size)
            counts.append([int(n) for n in np.diff(plan.sum(axis=1))])
        else:
            counter = ChunkStream(
                shard.files,
                branches=stream.cut_expr.names,
                tree=stream.tree,
                chunk_size=stream.chunk_size,
                selection=Selection(cut=stream.cut_expr.text),
                seed=stream.seed,
                shuffle=stream.shuffle,
                split=stream.split_options,
                reading=Reading(block_size=stream.block_size),
            ).shard(index, workers)
            with counter:
                counts.append([len(chunk) for chunk in counter.chunks(0)])
    return counts


def make_plan(
    train: ChunkStream,
    validation: ChunkStream,
    *,
    mode: str,
    epochs: int,
    batch_size: int,
    workers: int,
) -> StepPlan:
    """Count every shard's events and derive the steps all workers agree on."""
    train_counts = shard_counts(train, workers)
    val_counts = shard_counts(validation, workers)
    plan = StepPlan(mode, epochs, batch_size, workers)
    plan.train_events = sum(map(sum, train_counts))
    plan.validation_events = sum(map(sum, val_counts))
    plan.validation_steps = min(sum(c) for c in val_counts) // batch_size
    if plan.validation_steps == 0:
        raise ConfigError(
            f"the validation split holds too few events ({plan.validation_events}) for one "
            f"batch of {batch_size} per worker: lower training.batch_size or add data"
        )
    if mode == "standard":
        plan.steps_per_epoch = min(sum(c) for c in train_counts) // batch_size
        if plan.steps_per_epoch == 0:
            raise ConfigError(
                f"the training split is smaller than one batch per worker ({batch_size})"
            )
    else:
        chunks = min(len(c) for c in train_counts)
        plan.steps_per_chunk = [
            min(c[k] for c in train_counts) // batch_size for k in range(chunks)
        ]
        if not any(plan.steps_per_chunk):
            raise ConfigError("no chunk holds one batch per worker: raise training.chunk_size")
    return plan


def exact_batches(stream: ChunkStream, batch_size: int, epoch: int, steps: int) -> Iterator[Batch]:
    """Exactly ``steps`` full batches of ``stream`` for ``epoch``, wrapping around if short."""
    produced = 0
    rounds = 0
    while produced < steps:
        before = produced
        for batch in stream.batches(batch_size, epoch + rounds * 1_000_003, drop_last=True):
            yield batch
            produced += 1
            if produced == steps:
                return
        rounds += 1
        if produced == before:
            raise ConfigError(f"{stream!r} delivers no full batch of {batch_size} events")
