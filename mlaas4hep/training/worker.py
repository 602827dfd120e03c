"""What each Ray Train worker runs: ``train_loop_tensorflow`` and ``train_loop_torch``.

Everything a worker needs comes in its ``config`` dict (built by the driver in
:mod:`mlaas4hep.training.job`): the train and validation ChunkStreams (pickled without
open files; each worker takes its own shard, so every worker keeps the same file mix),
the :class:`~mlaas4hep.training.plan.StepPlan`, the model code and the framework. Data
is streamed chunk by chunk, never loaded whole.

A *unit* is an epoch (standard mode: every epoch passes over all chunks) or a chunk
(the paper's per-chunk mode: N epochs on each chunk in turn). After each unit the
workers report the training and validation loss and AUC, and rank 0 a checkpoint
(weights + state); on a restart, Ray hands the last checkpoint back and training
resumes at the next unit, its history kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.metrics import auc, binary_cross_entropy
from mlaas4hep.stream import Batch, ChunkStream
from mlaas4hep.training import models
from mlaas4hep.training.plan import StepPlan, exact_batches

STATE_FILE = "state.json"
KERAS_WEIGHTS = "model.weights.h5"
TORCH_WEIGHTS = "model.pt"


class InjectedFailure(RuntimeError):
    """Raised on purpose (``inject_failure`` in the config) to test recovery."""


def _ray_train() -> Any:
    return extras.require("ray.train")


def _restore_state(load_weights: Callable[[Path], None]) -> dict[str, Any]:
    """The state of the last checkpoint (and its weights loaded), or a fresh state."""
    checkpoint = _ray_train().get_checkpoint()
    if checkpoint is None:
        return {"next_unit": 0, "history": []}
    with checkpoint.as_directory() as directory:
        load_weights(Path(directory))
        return json.loads((Path(directory) / STATE_FILE).read_text())


def _report(
    record: dict[str, Any], state: dict[str, Any], rank: int, save: Callable[[Path], None]
) -> None:
    """Report a unit's metrics; rank 0 attaches the checkpoint.

    Every rank saves: under MultiWorkerMirroredStrategy reading synchronised variables is
    a collective operation, so a save on rank 0 alone would wait for the others forever.
    """
    train = _ray_train()
    name = f"unit-{record['unit']:05d}"  # every rank must give the same name
    with tempfile.TemporaryDirectory(prefix="mlaas4hep-ckpt-") as directory:
        save(Path(directory))
        (Path(directory) / STATE_FILE).write_text(json.dumps(state))
        checkpoint = train.Checkpoint.from_directory(directory) if rank == 0 else None
        train.report(record, checkpoint=checkpoint, checkpoint_dir_name=name)


def _maybe_fail(config: dict[str, Any], rank: int, unit: int) -> None:
    inject = config.get("inject_failure")
    if not inject or inject.get("rank", 0) != rank or inject.get("unit", 0) != unit:
        return
    marker = Path(config["failure_marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker {rank} failed on purpose after unit {unit}\n")
    raise InjectedFailure(f"worker {rank}: injected failure after unit {unit}")


class _Timed:
    """Wraps a batch iterator and adds up the time spent producing batches."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield batch


def _chunks_from(stream: ChunkStream, first: int) -> Iterator[Any]:
    """Chunks of epoch 0, starting at ``first`` (per-chunk mode, after a restart)."""
    for k, chunk in enumerate(stream.chunks(0)):
        if k >= first:
            yield chunk


def _unit_names(plan: StepPlan, unit: int) -> dict[str, int]:
    if plan.mode == "standard":
        return {"epoch": unit, "chunk": -1}
    return {"epoch": plan.epochs - 1, "chunk": unit}


# ------------------------------------------------------------------------ TensorFlow


def train_loop_tensorflow(config: dict[str, Any]) -> None:
    """Ray Train worker loop for tf-keras under MultiWorkerMirroredStrategy."""
    k = models.keras()
    tf = extras.tensorflow()
    context = _ray_train().get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    plan = StepPlan(**config["plan"])
    train = config["streams"]["train"].shard(rank, world)
    validation = config["streams"]["validation"].shard(rank, world)
    with_mask = config["with_mask"]
    tf.keras.utils.set_random_seed(config["seed"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = models.build_model(
            config["model_code"], "tensorflow", config["n_features"], with_mask
        )
        model.compile(
            optimizer=k.optimizers.Adam(learning_rate=config["learning_rate"]),
            loss="binary_crossentropy",
            metrics=[k.metrics.AUC(name="auc")],
        )
    state = _restore_state(lambda d: model.load_weights(str(d / KERAS_WEIGHTS)))
    has_weights = train.weight_expr is not None
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF

    def features(batch_x: Any, batch_mask: Any) -> Any:
        return {"features": batch_x, "mask": batch_mask} if with_mask else batch_x

    def signature() -> tuple[Any, ...]:
        x = tf.TensorSpec((None, config["n_features"]), tf.float32)
        feats: Any = x
        if with_mask:
            feats = {"features": x, "mask": tf.TensorSpec((None, config["n_features"]), tf.bool)}
        spec = [feats, tf.TensorSpec((None,), tf.float32)]
        if has_weights:
            spec.append(tf.TensorSpec((None,), tf.float32))
        return tuple(spec)

    def from_batches(make: Callable[[], Iterator[Batch]]) -> Any:
        def generate() -> Iterator[tuple[Any, ...]]:
            for b in make():
                item = [features(b.X, b.mask), b.y]
                if has_weights:
                    item.append(b.w)
                yield tuple(item)

        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature())
        return dataset.with_options(options).prefetch(2)

    validation_data = from_batches(
        lambda: exact_batches(validation, plan.batch_size, 0, plan.validation_steps)
    )
    chunks = _chunks_from(train, state["next_unit"]) if plan.mode == "per_chunk" else None
    for unit in range(state["next_unit"], plan.units):
        start = time.perf_counter()
        timer = _Timed()
        if plan.mode == "standard":
            steps = plan.steps_per_epoch
            data = from_batches(
                lambda u=unit, t=timer, n=steps: t.wrap(exact_batches(train, plan.batch_size, u, n))
            )
            epochs = 1
        else:
            steps = plan.steps_per_chunk[unit]
            t0 = time.perf_counter()
            chunk = next(chunks)
            timer.seconds += time.perf_counter() - t0
            if steps == 0:
                continue  # every worker skips the same chunk (too small for a batch)
            tensors: list[Any] = [features(chunk.X, chunk.mask), chunk.y]
            if has_weights:
                tensors.append(chunk.w)
            data = (
                tf.data.Dataset.from_tensor_slices(tuple(tensors))
                .shuffle(len(chunk), seed=config["seed"] + unit)
                .batch(plan.batch_size, drop_remainder=True)
                .repeat()
                .with_options(options)
                .prefetch(2)
            )
            epochs = plan.epochs
        history = model.fit(
            data,
            epochs=epochs,
            steps_per_epoch=steps,
            validation_data=validation_data,
            validation_steps=plan.validation_steps,
            validation_freq=epochs,
            verbose=0,
        ).history
        seconds = time.perf_counter() - start
        record = {
            "unit": unit,
            **_unit_names(plan, unit),
            "loss": float(history["loss"][-1]),
            "auc": float(history["auc"][-1]),
            "val_loss": float(history["val_loss"][-1]),
            "val_auc": float(history["val_auc"][-1]),
            "seconds": seconds,
            "data_seconds": timer.seconds,
            "events": steps * epochs * plan.batch_size * world,
        }
        state = {"next_unit": unit + 1, "history": [*state["history"], record]}
        _report(
            {**record, "history": state["history"]},
            state,
            rank,
            lambda d: model.save_weights(str(d / KERAS_WEIGHTS)),
        )
        _maybe_fail(config, rank, unit)
    train.close()
    validation.close()


# --------------------------------------------------------------------------- PyTorch


def train_loop_torch(config: dict[str, Any]) -> None:
    """Ray Train worker loop for PyTorch (DDP over gloo on CPU, NCCL on GPU)."""
    torch = extras.torch()
    ray_torch = extras.require("ray.train.torch")
    context = _ray_train().get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    plan = StepPlan(**config["plan"])
    train = config["streams"]["train"].shard(rank, world)
    validation = config["streams"]["validation"].shard(rank, world)
    with_mask = config["with_mask"]
    torch.manual_seed(config["seed"])
    model = models.build_model(config["model_code"], "torch", config["n_features"], with_mask)
    state = _restore_state(
        lambda d: model.load_state_dict(torch.load(d / TORCH_WEIGHTS, weights_only=True))
    )
    model = ray_torch.prepare_model(model)
    device = ray_torch.get_device()
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()

    def inputs(x: np.ndarray, mask: np.ndarray) -> Any:
        features = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        if with_mask:
            return {"features": features, "mask": torch.from_numpy(mask).to(device)}
        return features

    def step(batch: Batch) -> tuple[float, np.ndarray]:
        y = torch.from_numpy(batch.y).to(device)
        scores = model(inputs(batch.X, batch.mask)).reshape(-1)
        w = None if batch.w is None else torch.from_numpy(batch.w).to(device)
        loss = torch.nn.functional.binary_cross_entropy(scores, y, weight=w)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach()), scores.detach().cpu().numpy()

    def gathered(*arrays: np.ndarray) -> list[np.ndarray]:
        if not distributed:
            return list(arrays)
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, arrays)
        return [np.concatenate([p[i] for p in parts]) for i in range(len(arrays))]

    def evaluate() -> tuple[float, float]:
        model.eval()
        scores, labels = [], []
        with torch.no_grad():
            for b in exact_batches(validation, plan.batch_size, 0, plan.validation_steps):
                scores.append(model(inputs(b.X, b.mask)).reshape(-1).cpu().numpy())
                labels.append(b.y)
        model.train()
        s, y = gathered(np.concatenate(scores), np.concatenate(labels))
        return binary_cross_entropy(y, s), auc(y, s)

    def batches_of_unit(unit: int, timer: _Timed) -> Iterator[Batch]:
        if plan.mode == "standard":
            yield from timer.wrap(exact_batches(train, plan.batch_size, unit, plan.steps_per_epoch))
            return
        t0 = time.perf_counter()
        chunk = next(chunks)
        timer.seconds += time.perf_counter() - t0
        steps = plan.steps_per_chunk[unit]
        n = len(chunk)
        rng = np.random.default_rng([config["seed"], unit])
        for _ in range(plan.epochs):
            order = np.resize(rng.permutation(n), steps * plan.batch_size)
            for i in range(steps):
                rows = order[i * plan.batch_size : (i + 1) * plan.batch_size]
                yield Batch(
                    chunk.X[rows],
                    chunk.mask[rows],
                    chunk.y[rows],
                    None if chunk.w is None else chunk.w[rows],
                )

    chunks = _chunks_from(train, state["next_unit"]) if plan.mode == "per_chunk" else None
    model.train()
    for unit in range(state["next_unit"], plan.units):
        start = time.perf_counter()
        timer = _Timed()
        losses, scores, labels = [], [], []
        for batch in batches_of_unit(unit, timer):
            loss, s = step(batch)
            losses.append(loss)
            scores.append(s)
            labels.append(batch.y)
        train_scores, train_labels = (
            (np.concatenate(scores), np.concatenate(labels)) if scores else (None, None)
        )
        val_loss, val_auc = evaluate()
        steps = len(losses)
        record = {
            "unit": unit,
            **_unit_names(plan, unit),
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "auc": auc(train_labels, train_scores) if steps else float("nan"),
            "val_loss": val_loss,
            "val_auc": val_auc,
            "seconds": time.perf_counter() - start,
            "data_seconds": timer.seconds,
            "events": steps * plan.batch_size * world,
        }
        state = {"next_unit": unit + 1, "history": [*state["history"], record]}
        bare = model.module if hasattr(model, "module") else model
        _report(
            {**record, "history": state["history"]},
            state,
            rank,
            lambda d, m=bare: torch.save(m.state_dict(), d / TORCH_WEIGHTS),
        )
        _maybe_fail(config, rank, unit)
    train.close()
    validation.close()


def failure_marker(run_name: str) -> str:
    """Where an injected failure records that it happened (it happens once per run)."""
    return os.path.join(tempfile.gettempdir(), f"mlaas4hep-failure-{run_name}")
