"""The tf-keras training loop: one worker of a Ray ``TensorflowTrainer``, or one process.

Under Ray with several workers the model lives in a ``MultiWorkerMirroredStrategy``
(gradients all-reduced between workers); with one Ray worker, or in one process, in
TensorFlow's default strategy. Nothing pins a
device: TensorFlow places the ops itself, on a GPU when it sees one (``use_gpu: true``
gives each Ray worker its GPU).

The loop takes every batch from the :class:`~.feed.BatchFeed` itself and hands it to a
compiled step (:class:`DistributedSteps`: ``strategy.run`` of :func:`lean_step`), so a
unit trains on exactly its planned batches whatever TensorFlow would read ahead, and
the time the loop is blocked on the feed is the time the step waits for data. Each
unit is its training steps (one epoch, or ``epochs`` passes over a chunk), the task's
exact loss and metrics on the validation shard, then a checkpoint: the weights, the
optimizer's variables (Adam's moments and iteration count) and the state. ``precision: bf16`` or
``fp16`` builds the model under Keras' mixed dtype policy (float32 variables; fp16 on a
GPU only, with the loss-scaling optimizer ``compile`` puts in).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.model import architectures as models
from mlaas4hep.model.manifest import KERAS_WEIGHTS
from mlaas4hep.model.tasks import Task
from mlaas4hep.stream.batches import Batch
from mlaas4hep.training import loop
from mlaas4hep.training.feed import BatchFeed
from mlaas4hep.training.session import Session

KERAS_OPTIMIZER = "optimizer.npz"
#: Keras' dtype policy of each mixed precision of ``training.precision``
KERAS_POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
#: the size of one all-reduce pack of gradients under MultiWorkerMirroredStrategy
PACK_BYTES = 32 << 20


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


def step_data(batch: Batch, with_mask: bool, has_weights: bool) -> tuple[Any, ...]:
    """``(features, y[, w])`` of one batch as the training step takes it (``model.train_step``)."""
    features = batch.inputs(with_mask)
    return (features, batch.y, batch.w) if has_weights else (features, batch.y)


def keras_loss(task: Task) -> Any:
    """The task's loss for ``compile``: per-event values that Keras weights and averages
    (a regression's residual in units of the target's spread, see :mod:`~.tasks`)."""
    if task.kind == "binary":
        return "binary_crossentropy"
    if task.kind == "multiclass":
        return "sparse_categorical_crossentropy"  # the label is the class index
    tf = extras.tensorflow()
    scale, delta, huber = float(task.scale), float(task.delta), task.loss == "huber"

    def regression_loss(y_true: Any, y_pred: Any) -> Any:
        y = tf.reshape(tf.cast(y_true, tf.float32), [-1])
        r = tf.abs(tf.reshape(y_pred, [-1]) - y) / scale
        if not huber:
            return tf.square(r)
        return tf.where(r <= delta, 0.5 * tf.square(r), delta * (r - 0.5 * delta))

    return regression_loss


def keras_metric(task: Task) -> Any:
    """The compiled metric of the task's :attr:`~.Task.train_metric`."""
    k = models.keras()
    if task.kind == "binary":
        return k.metrics.AUC(name="auc")
    if task.kind == "multiclass":
        return k.metrics.SparseCategoricalAccuracy(name="accuracy")
    return k.metrics.MeanAbsoluteError(name="mae")


def lean_step(model: Any) -> Any:
    """``model.train_step`` that updates the compiled metrics without reading them.

    Keras' own step returns every metric's result, and under MultiWorkerMirroredStrategy
    reading a metric all-reduces its variables: the AUC's 4 × 200 thresholds and the
    loss mean cost two collectives a step, more than the gradients' own (with two workers
    on one 2-core host, a step took about four times as long). The results are
    read once per unit instead (:meth:`KerasRun.train`), summed over the workers then.
    A model whose class defines its own ``train_step`` keeps it.
    """
    k = models.keras()
    if type(model).train_step is not k.Model.train_step:
        return model.train_step
    tf = extras.tensorflow()

    def step(data: Any) -> None:
        x, y, w = k.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, w)
        model.optimizer.minimize(loss, model.trainable_variables, tape=tape)
        model.compiled_metrics.update_state(y, y_pred, w)

    return step


class DistributedSteps:
    """Compiled training and scoring steps that take one batch each, from Python.

    The loop hands every batch to :meth:`train` itself, so a unit trains on exactly the
    batches it takes from the :class:`~.feed.BatchFeed`: no ``tf.data`` iterator and no
    ``experimental_distribute_dataset`` stand between them. (Those read ahead of the
    steps, and under MultiWorkerMirroredStrategy a dataset whose batch size is not
    static is re-batched into ``num_replicas_in_sync`` pieces: ``model.fit`` trained on
    half of every batch and left the rest in the feed for the next unit to find.)
    A batch is this worker's share of the global step, split over its local replicas.
    """

    def __init__(self, strategy: Any, model: Any, workers: int) -> None:
        tf = extras.tensorflow()
        self.strategy = strategy
        self.model = model
        self.local_replicas = max(1, strategy.num_replicas_in_sync // workers)
        self._predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self._train: Any = None

    def reset(self) -> None:
        """A newly traced training step: it draws from the random seed set just before
        (dropout), so that a unit resumed from a checkpoint draws the same numbers."""
        tf = extras.tensorflow()
        strategy, train_step = self.strategy, lean_step(self.model)

        def step(data: Any) -> Any:
            return strategy.run(train_step, args=(data,))

        self._train = tf.function(step, reduce_retracing=True)

    def train(self, data: tuple[Any, ...]) -> None:
        """One optimizer step on one batch (gradients all-reduced between workers)."""
        self._train(self._distribute(data))

    def predict(self, features: Any) -> np.ndarray:
        """Scores of one batch on this worker, with the current weights."""
        return np.asarray(self._predict(features)).reshape(-1)

    def _distribute(self, data: tuple[Any, ...]) -> Any:
        if self.local_replicas == 1:
            return data
        tf = extras.tensorflow()
        n = self.local_replicas
        parts = [tf.nest.map_structure(lambda a, i=i: np.array_split(a, n)[i], data)
                 for i in range(n)]  # fmt: skip
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: parts[context.replica_id_in_sync_group % n]
        )


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Keras' global dtype policy for ``precision`` while the model is built (layers
    keep the policy they were made under; the variables stay float32), then the previous
    one again."""
    policy = KERAS_POLICIES.get(precision)
    if policy is None:
        yield
        return
    mixed = models.keras().mixed_precision
    previous = mixed.global_policy()
    mixed.set_global_policy(policy)
    try:
        yield
    finally:
        mixed.set_global_policy(previous)


def train_keras(config: dict[str, Any], session: Session | None = None) -> dict[str, Any]:
    """Train the Keras model that ``config`` describes; return the final state.

    ``session`` is where checkpoints go and come from (a fresh local directory if None).
    """
    with loop.started(config, session) as (worker, state, feed):
        import_tensorflow(int(config["threads"]) if "threads" in config else None)
        return _train(worker, state, feed)


def import_tensorflow(threads: int | None = None) -> Any:
    """TensorFlow with tf-keras chosen before its first import and, given ``threads``,
    that many intra-op threads (inter-op threads stay: the collectives wait in them);
    the thread count only takes before TensorFlow's runtime starts."""
    models.keras()
    tf = extras.tensorflow()
    if threads is not None:
        with contextlib.suppress(RuntimeError):  # the runtime started already
            tf.config.threading.set_intra_op_parallelism_threads(threads)
    return tf


def _train(worker: loop.Worker, state: dict[str, Any], feed: BatchFeed) -> dict[str, Any]:
    run = KerasRun(worker, state)
    return loop.run_units(worker, state, feed, run.steps())


class KerasRun:
    """One worker's strategy, model and compiled steps, and the steps that
    :func:`loop.run_units` takes."""

    def __init__(self, worker: loop.Worker, state: dict[str, Any]) -> None:
        k = models.keras()
        tf = extras.tensorflow()
        self.worker = worker
        config = worker.config
        if worker.session.distributed:
            # the gradients in one all-reduce rather than one per variable: its latency,
            # not its bytes, is what a step of a small model waits on
            options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=PACK_BYTES)
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        else:
            self.strategy = tf.distribute.get_strategy()
        self.device = ([d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU"])[0]
        self.precision = str(config.get("precision", "32"))
        if self.precision == "fp16" and self.device == "CPU":
            raise ConfigError(
                "training.precision fp16 needs a GPU (scaling.use_gpu: true); bf16 runs on CPUs too"
            )
        self.steps_taken = int(state.get("optimizer_steps", 0))
        k.utils.set_random_seed(worker.seed)  # the same initial weights everywhere
        with self.strategy.scope(), precision_policy(self.precision):
            self.model = worker.build_model("tensorflow")
            self.model.compile(  # fp16: compile wraps Adam in a LossScaleOptimizer
                optimizer=k.optimizers.Adam(learning_rate=config["learning_rate"]),
                loss=keras_loss(worker.task),
                metrics=[keras_metric(worker.task)],
            )
            self.model.optimizer.build(self.model.trainable_variables)  # restorable now
        loop.restore_model(worker, state, self.load)
        self.has_weights = worker.has_weights
        self.compiled = DistributedSteps(self.strategy, self.model, worker.world)

    def load(self, directory: Path) -> None:
        self.model.load_weights(str(directory / KERAS_WEIGHTS))
        load_optimizer(self.model.optimizer, directory / KERAS_OPTIMIZER)

    def save(self, directory: Path) -> None:
        self.model.save_weights(str(directory / KERAS_WEIGHTS))
        save_optimizer(self.model.optimizer, directory / KERAS_OPTIMIZER)

    def gather(self, values: np.ndarray) -> np.ndarray:
        """``values`` (the same shape on every worker) of every worker, one row each."""
        values = np.asarray(values)
        if not self.worker.session.distributed:
            return values[None]
        tf = extras.tensorflow()
        local = self.strategy.run(lambda: tf.constant(values[None]))
        return self.strategy.gather(local, axis=0).numpy()

    def validate(self) -> dict[str, float]:
        with_mask = self.worker.with_mask
        found = loop.validation_scores(
            self.worker, lambda b: self.compiled.predict(b.inputs(with_mask))
        )
        return loop.validation_metrics(self.worker, *(self.gather(a).ravel() for a in found))

    def reseed(self, seed: int) -> None:
        """Dropout draws from the unit's seed (a resumed run continues exactly): the
        training step is traced anew after the seed is set."""
        models.keras().utils.set_random_seed(seed)
        self.compiled.reset()

    def train(self, unit: int, batches: Iterator[Batch], count: int) -> dict[str, float]:
        """One unit's optimizer steps; the loss and the task's metric of its last pass,
        as ``fit``'s."""
        plan = self.worker.plan
        last_pass = count - count // (1 if plan.mode == "standard" else plan.epochs)
        for step, batch in enumerate(batches):
            if step in (0, last_pass):
                self.model.reset_metrics()
            self.compiled.train(step_data(batch, self.worker.with_mask, self.has_weights))
            self.steps_taken += 1
        trained = self.model.get_metrics_result()
        metric = self.worker.task.train_metric
        return {"loss": float(trained["loss"]), metric: float(trained[metric])}

    def optimizer_steps(self) -> int:
        """Adam's step count; under fp16 the loop's (the loss scaler skips the steps
        that overflow, which are steps of the plan all the same)."""
        if self.precision == "fp16":
            return self.steps_taken
        return int(self.model.optimizer.iterations.numpy())

    def steps(self) -> loop.Steps:
        return loop.Steps(
            train=self.train,
            validate=self.validate,
            gather=self.gather,
            save=self.save,
            optimizer_steps=self.optimizer_steps,
            reseed=self.reseed,
            device=self.device,
        )
