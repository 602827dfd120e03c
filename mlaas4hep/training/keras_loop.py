"""The tf-keras training loop: one worker of a Ray ``TensorflowTrainer``, or one process.

Under Ray the model lives in a ``MultiWorkerMirroredStrategy`` (gradients all-reduced
between workers); in one process in TensorFlow's default strategy. Nothing pins a
device: TensorFlow places the ops itself, on a GPU when it sees one (``use_gpu: true``
gives each Ray worker its GPU). Batches come from a :class:`~.feed.BatchFeed` through
``tf.data.Dataset.from_generator``, without tf.data's own prefetch, so the time the
feed's consumer is blocked is the time the training step waits for data.

Each unit is ``model.fit`` (one epoch, or ``epochs`` passes over a chunk), then
``model.evaluate`` on the validation shard, then a checkpoint: the weights, the
optimizer's variables (Adam's moments and iteration count) and the state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.stream import Batch
from mlaas4hep.training import loop, models
from mlaas4hep.training.feed import BatchFeed, batches_per_unit
from mlaas4hep.training.plan import exact_batches
from mlaas4hep.training.session import Session

KERAS_WEIGHTS = "model.weights.h5"
KERAS_OPTIMIZER = "optimizer.npz"


def save_optimizer(optimizer: Any, path: Path) -> None:
    """The optimizer's variables (iteration count first, then the slots) as ``.npz``."""
    np.savez(path, *[np.asarray(v.numpy()) for v in optimizer.variables])


def load_optimizer(optimizer: Any, path: Path) -> None:
    """Assign saved values to an optimizer already built for the same model."""
    variables = optimizer.variables
    with np.load(path) as data:
        values = [data[f"arr_{i}"] for i in range(len(data.files))]
    shapes = [tuple(v.shape) for v in variables]
    if [v.shape for v in values] != shapes:
        raise ConfigError(
            f"the optimizer state in {path} does not fit this model "
            f"({len(values)} variables saved, {len(shapes)} expected)"
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def tf_batches(
    make: Callable[[], Iterator[Batch]], n_features: int, with_mask: bool, has_weights: bool
) -> Any:
    """A ``tf.data.Dataset`` of ``(features, y[, w])`` from the batches ``make()`` yields.

    No tf.data prefetch: the batch feed is the prefetcher, and the time its consumer
    waits is then the time the training step waits.
    """
    tf = extras.tensorflow()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    x_spec = tf.TensorSpec((None, n_features), tf.float32)
    features_spec: Any = x_spec
    if with_mask:
        features_spec = {"features": x_spec, "mask": tf.TensorSpec(x_spec.shape, tf.bool)}
    signature = [features_spec, tf.TensorSpec((None,), tf.float32)]
    if has_weights:
        signature.append(tf.TensorSpec((None,), tf.float32))

    def generate() -> Iterator[tuple[Any, ...]]:
        for b in make():
            features = {"features": b.X, "mask": b.mask} if with_mask else b.X
            yield (features, b.y, b.w) if has_weights else (features, b.y)

    data = tf.data.Dataset.from_generator(generate, output_signature=tuple(signature))
    return data.with_options(options)


def train_keras(config: dict[str, Any], session: Session | None = None) -> dict[str, Any]:
    """Train the Keras model that ``config`` describes; return the final state.

    ``session`` is where checkpoints go and come from (a fresh local directory if None).
    """
    with loop.started(config, session) as (worker, state, feed):
        models.keras()  # tf-keras chosen before TensorFlow is first imported
        tf = extras.tensorflow()
        if "threads" in config:  # inter-op threads stay: the collectives wait in them
            with contextlib.suppress(RuntimeError):  # before TensorFlow's runtime starts
                tf.config.threading.set_intra_op_parallelism_threads(int(config["threads"]))
        return _train(worker, state, feed)


def _train(worker: loop.Worker, state: dict[str, Any], feed: BatchFeed) -> dict[str, Any]:
    k = models.keras()
    tf = extras.tensorflow()
    config, session, plan = worker.config, worker.session, worker.plan
    if session.distributed:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    k.utils.set_random_seed(worker.seed)  # the same initial weights everywhere
    with strategy.scope():
        model = models.build_model(
            config["model_code"], "tensorflow", worker.n_features, worker.with_mask
        )
        model.compile(
            optimizer=k.optimizers.Adam(learning_rate=config["learning_rate"]),
            loss="binary_crossentropy",
            metrics=[k.metrics.AUC(name="auc")],
        )
        model.optimizer.build(model.trainable_variables)  # its state can be restored now

    def load(directory: Path) -> None:
        model.load_weights(str(directory / KERAS_WEIGHTS))
        load_optimizer(model.optimizer, directory / KERAS_OPTIMIZER)

    def save(directory: Path) -> None:
        model.save_weights(str(directory / KERAS_WEIGHTS))
        save_optimizer(model.optimizer, directory / KERAS_OPTIMIZER)

    loop.restore_model(worker, state, load)
    has_weights = worker.train.weight_expr is not None

    def dataset(make: Callable[[], Iterator[Batch]]) -> Any:
        return tf_batches(make, worker.n_features, worker.with_mask, has_weights)

    def gather(values: list[float]) -> np.ndarray:
        """``values`` of every worker, one row each."""
        if not session.distributed:
            return np.array([values])
        local = strategy.run(lambda: tf.constant([values], tf.float64))
        return strategy.gather(local, axis=0).numpy()

    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU"]
    for unit in range(state["next_unit"], plan.units):
        started = time.perf_counter()
        count = batches_per_unit(plan, unit)
        if count == 0:
            continue  # every worker skips the same chunk (too small for a batch)
        # dropout draws from the unit's seed: a resumed run continues exactly
        k.utils.set_random_seed(loop.unit_seed(worker.seed, unit))
        model.make_train_function(force=True)
        passes = 1 if plan.mode == "standard" else plan.epochs
        wait, produce = feed.wait_seconds, feed.produce_seconds
        data = dataset(lambda u=unit, n=count: feed.take(u, n))
        history = model.fit(data, epochs=passes, steps_per_epoch=count // passes, verbose=0)
        train_seconds = time.perf_counter() - started
        wait, produce = feed.wait_seconds - wait, feed.produce_seconds - produce
        validated = time.perf_counter()
        validation = dataset(
            lambda: exact_batches(worker.validation, plan.batch_size, 0, plan.validation_steps)
        ).prefetch(2)
        scores = model.evaluate(
            validation, steps=plan.validation_steps, verbose=0, return_dict=True
        )
        metrics = {
            "loss": float(history.history["loss"][-1]),
            "auc": float(history.history["auc"][-1]),
            "val_loss": float(scores["loss"]),
            "val_auc": float(scores["auc"]),
        }
        timings = loop.timing_record(gather([train_seconds, wait, produce]))
        state = loop.finish_unit(
            worker, state, unit, metrics, timings, save,
            validation_seconds=time.perf_counter() - validated,
            seconds=time.perf_counter() - started,
            optimizer_steps=int(model.optimizer.iterations.numpy()),
            device=devices[0],
        )  # fmt: skip
    return state
