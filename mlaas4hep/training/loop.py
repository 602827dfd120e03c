"""What the Keras and PyTorch worker loops share: setup, checkpoint state, unit records.

Everything a loop needs comes in its ``config`` dict (built by the driver, see
:func:`mlaas4hep.training.job.worker_config`): the train and validation ChunkStreams
(pickled without open files), the :class:`~mlaas4hep.training.plan.StepPlan`, the
model code and options. :func:`setup` takes this worker's shard of both streams, so
that every worker keeps the same file mix.

A checkpoint holds the weights, the optimizer state (the loops write them) and
``state.json``: the next unit, the history, the plan it belongs to, and the data and
random-number positions. Both are functions of the unit: the streams are shuffled from
``(seed, epoch)`` and per-chunk batches from ``(seed, unit)``, and every unit reseeds
the framework's random numbers (dropout) from :func:`unit_seed`. So a run resumed from
the checkpoint of unit ``u`` trains unit ``u + 1`` exactly as the run that was
interrupted would have.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep.errors import ConfigError
from mlaas4hep.model import architectures
from mlaas4hep.model.tasks import Task
from mlaas4hep.stream.batches import Batch, concat_batches
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.training.feed import BatchFeed, batches_per_unit, plan_batches
from mlaas4hep.training.plan import StepPlan, exact_batches
from mlaas4hep.training.session import STATE as STATE_FILE
from mlaas4hep.training.session import LocalSession, Session


class InjectedFailure(RuntimeError):
    """Raised on purpose (``inject_failure`` in the config) to test recovery."""


@dataclass
class Worker:
    """One worker's view of the job: its shards, the plan and the model options."""

    config: dict[str, Any]
    session: Session
    plan: StepPlan
    train: ChunkStream
    validation: ChunkStream
    #: The validation shard's scoring blocks once read (see :func:`validation_blocks`).
    validation_cache: list[Batch] | None = None
    #: Wall-clock time this worker process entered the loop (see :func:`startup_parts`).
    entered_at: float = field(default_factory=time.time)

    @property
    def rank(self) -> int:
        return self.session.rank

    @property
    def world(self) -> int:
        return self.session.world_size

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def with_mask(self) -> bool:
        return bool(self.config["with_mask"])

    @property
    def n_features(self) -> int:
        return int(self.config["n_features"])

    @property
    def task(self) -> Task:
        """What the model learns (binary when the config predates tasks)."""
        return Task.from_dict(self.config.get("task"))

    @property
    def has_weights(self) -> bool:
        """Whether the events carry weights (they then enter every loss and metric)."""
        return self.train.weight_expr is not None

    @property
    def image(self) -> tuple[int, int, int] | None:
        """Where the default image model finds the image in ``X`` (None: no image)."""
        image = self.config.get("image")
        return None if image is None else tuple(image)  # type: ignore[return-value]

    def build_model(self, framework: str) -> Any:
        """A fresh model of this job (the default one for its task and inputs, or the
        user's), as every worker builds it before its first step."""
        return architectures.build_model(
            self.config["model_code"],
            framework,
            self.n_features,
            self.with_mask,
            image=self.image,
            task=self.task,
        )

    def feed(self, first_unit: int) -> BatchFeed:
        """The training batches from ``first_unit`` on, made ahead in a background thread."""
        source = plan_batches(self.train, self.plan, first_unit, self.seed)
        return BatchFeed(source, depth=int(self.config.get("prefetch_batches", 64)))

    def close(self) -> None:
        self.train.close()
        self.validation.close()


def setup(config: dict[str, Any], session: Session) -> Worker:
    """This worker's shards of the train and validation streams, and the plan."""
    plan = StepPlan(**config["plan"])
    if session.world_size != plan.num_workers:
        raise ConfigError(
            f"the step plan was made for {plan.num_workers} worker(s), but {session.world_size} run"
        )
    train = config["streams"]["train"].shard(session.rank, session.world_size)
    validation = config["streams"]["validation"].shard(session.rank, session.world_size)
    if "threads" in config:  # decompress in as many threads as the worker has CPUs
        for stream in (train, validation):
            stream.decompression_threads = max(1, int(config["threads"]))
    return Worker(config, session, plan, train, validation)


@contextlib.contextmanager
def started(
    config: dict[str, Any], session: Session | None
) -> Iterator[tuple[Worker, dict[str, Any], BatchFeed]]:
    """This worker (checkpoints in ``session``, a fresh local directory if None), the
    state it resumes from and its batch feed, already reading while the framework loads
    and the model is built; the feed and the streams are closed on the way out."""
    if session is None:
        session = LocalSession(tempfile.mkdtemp(prefix="mlaas4hep-local-"))
    worker = setup(config, session)
    state = restore_state(worker)
    feed = worker.feed(state["next_unit"])
    try:
        yield worker, state, feed
    finally:
        feed.close()
        worker.close()


def unit_seed(seed: int, unit: int) -> int:
    """The seed of a unit's random numbers (dropout), the same on every worker and run."""
    return int(np.random.SeedSequence([seed, unit]).generate_state(1)[0] & 0x7FFFFFFF)


# ------------------------------------------------------------------------------ state


def plan_key(plan: StepPlan) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes from it."""
    return {
        "mode": plan.mode,
        "units": plan.units,
        "batch_size": plan.batch_size,
        "num_workers": plan.num_workers,
    }


def fresh_state(worker: Worker) -> dict[str, Any]:
    return {"next_unit": 0, "history": [], "plan": plan_key(worker.plan)}


def restore_state(worker: Worker) -> dict[str, Any]:
    """The state of the last checkpoint (a fresh one without), checked against the plan.

    Read before the model is built, so that the batch feed starts reading at once.
    """
    with worker.session.last_checkpoint() as directory:
        if directory is None:
            return fresh_state(worker)
        state = json.loads((directory / STATE_FILE).read_text())
        if state.get("plan") != plan_key(worker.plan):
            raise ConfigError(
                f"the checkpoint in {directory} belongs to another plan "
                f"({state.get('plan')}, this run: {plan_key(worker.plan)}): "
                "resume with the same data and training options, or give a new run name"
            )
        return state


def restore_model(worker: Worker, state: dict[str, Any], load: Callable[[Path], None]) -> None:
    """Load the weights and optimizer state of the checkpoint that ``state`` came from."""
    if state["next_unit"] == 0:
        return
    with worker.session.last_checkpoint() as directory:
        if directory is None:
            raise RuntimeError("internal error: the checkpoint disappeared while resuming")
        load(directory)


def next_state(state: dict[str, Any], record: dict[str, Any], worker: Worker) -> dict[str, Any]:
    """The state after ``record``'s unit: where data and random numbers resume."""
    plan, unit = worker.plan, record["unit"]
    following = unit + 1
    if plan.mode == "standard":
        position = {"epoch": following, "chunk": 0}
    else:
        position = {"epoch": 0, "chunk": following}
    return {
        "next_unit": following,
        "history": [*state["history"], record],
        "plan": plan_key(plan),
        "stream": {**position, "seed": worker.seed},
        "rng": {"seed": worker.seed, "next_unit_seed": unit_seed(worker.seed, following)},
        "optimizer_steps": record["optimizer_steps"],
    }


def write_state(directory: Path, state: dict[str, Any]) -> None:
    (directory / STATE_FILE).write_text(json.dumps(state))


def report(worker: Worker, record: dict[str, Any], state: dict[str, Any], save: Callable) -> None:
    """Write the checkpoint of a unit (weights, optimizer, state) and report it.

    Every rank writes: under MultiWorkerMirroredStrategy reading synchronised variables
    is a collective operation, so a save on rank 0 alone would wait for the others.
    """
    name = f"unit-{record['unit']:05d}"  # every rank must give the same name
    with tempfile.TemporaryDirectory(prefix="mlaas4hep-ckpt-") as directory:
        save(Path(directory))
        write_state(Path(directory), state)
        worker.session.report({**record, "history": state["history"]}, Path(directory), name)


# -------------------------------------------------------------------------- the units


@dataclass
class Steps:
    """What a framework's loop gives :func:`run_units`: everything that differs between
    Keras and PyTorch, so that the unit skeleton (skip, reseed, time, validate,
    checkpoint) is written once.

    ``train(unit, batches, count)`` trains on exactly the ``count`` batches it is given
    and returns the unit's ``loss`` and the task's training metric (``auc``,
    ``accuracy`` or ``mae``); ``validate()`` the task's validation metrics over every
    worker (:func:`validation_metrics`); ``gather(values)`` one row of ``values`` per worker;
    ``optimizer_steps()`` the optimizer's step count; ``reseed(seed)`` sets the
    framework's random numbers (dropout); ``synchronize()`` waits for the device.
    """

    train: Callable[[int, Iterator[Batch], int], dict[str, float]]
    validate: Callable[[], dict[str, float]]
    gather: Callable[[np.ndarray], np.ndarray]
    save: Callable[[Path], None]
    optimizer_steps: Callable[[], int]
    reseed: Callable[[int], None]
    device: str
    synchronize: Callable[[], None] = lambda: None


def run_units(
    worker: Worker, state: dict[str, Any], feed: BatchFeed, steps: Steps
) -> dict[str, Any]:
    """Train every unit from ``state["next_unit"]`` on, the same for every framework:
    each unit its planned batches, then validation, then a checkpoint."""
    plan = worker.plan
    for unit in range(state["next_unit"], plan.units):
        started, started_at = time.perf_counter(), time.time()
        count = batches_per_unit(plan, unit)
        if count == 0:
            continue  # every worker skips the same chunk (too small for a batch)
        steps.reseed(unit_seed(worker.seed, unit))  # dropout: exact on resume
        wait, produce = feed.wait_seconds, feed.produce_seconds
        metrics = steps.train(unit, feed.take(unit, count), count)
        steps.synchronize()
        train_seconds = time.perf_counter() - started
        wait, produce = feed.wait_seconds - wait, feed.produce_seconds - produce
        validated = time.perf_counter()
        validated_metrics = steps.validate()
        timings = timing_record(steps.gather(np.array([train_seconds, wait, produce])))
        state = finish_unit(
            worker, state, unit, {**metrics, **validated_metrics},
            timings, steps.save,
            validation_seconds=time.perf_counter() - validated,
            seconds=time.perf_counter() - started,
            optimizer_steps=steps.optimizer_steps(),
            device=steps.device,
            started_at=started_at,
            worker_entered_at=worker.entered_at,
        )  # fmt: skip
    return state


def startup_parts(history: list[dict[str, Any]], fit_started: float, fit_ended: float) -> dict:
    """Where a fit's time outside the units went, from rank 0's unit records and the
    wall-clock window of the fit (``time.time()`` before and after it):

    - ``workers_start``: from the fit's start to the first worker entering the loop
      (Ray Train's worker group, placement, the framework's backend);
    - ``worker_setup``: from entering the loop to the first unit's steps, in every worker
      process the run had (imports, the model, the strategy, restoring a checkpoint);
    - ``checkpoints``: between the units of one process (checkpoint writes and reports),
      and restarts after a failure beyond their own set-up;
    - ``workers_stop``: from the end of the last unit to the fit's end (its checkpoint,
      shutting the workers down).

    Records without wall-clock times (older checkpoints) give no parts.
    """
    if not history or any("started_at" not in h or "worker_entered_at" not in h for h in history):
        return {}
    setups = [
        h["started_at"] - h["worker_entered_at"]
        for i, h in enumerate(history)
        if i == 0 or h["worker_entered_at"] != history[i - 1]["worker_entered_at"]
    ]
    ends = [h["started_at"] + h["seconds"] for h in history]
    gaps = sum(h["started_at"] - end for h, end in zip(history[1:], ends, strict=False))
    return {
        "workers_start": max(0.0, history[0]["worker_entered_at"] - fit_started),
        "worker_setup": sum(setups),
        "checkpoints": max(0.0, gaps - sum(setups[1:])),  # a restart's set-up is its own
        "workers_stop": max(0.0, fit_ended - ends[-1]),
    }


# ------------------------------------------------------------------------- validation


def validation_scores(
    worker: Worker, predict: Callable[[Batch], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This worker's scores (flat: ``C`` per event for multiclass), labels and weights
    (ones when the events have none) of the validation shard: exactly
    ``plan.validation_steps`` batches, the same count on every worker (so that the
    loops can gather them with a collective of one shape)."""
    scores, labels, weights = [], [], []
    for block in validation_blocks(worker):
        scores.append(np.asarray(predict(block), dtype=np.float64).reshape(-1))
        labels.append(np.asarray(block.y, dtype=np.float64))
        w = np.ones(len(block)) if block.w is None else np.asarray(block.w, dtype=np.float64)
        weights.append(w)
    return np.concatenate(scores), np.concatenate(labels), np.concatenate(weights)


#: Validation blocks up to this many bytes are kept after the first unit reads them.
VALIDATION_CACHE_BYTES = 512 * 2**20


def validation_blocks(worker: Worker) -> list[Batch] | Iterator[Batch]:
    """The validation shard in scoring blocks: read once and kept in memory when it fits
    :data:`VALIDATION_CACHE_BYTES` (every unit validates on the same events, so after
    the first one validation is inference alone), else read anew each unit."""
    if worker.validation_cache is not None:
        return worker.validation_cache
    plan = worker.plan
    batches = exact_batches(worker.validation, plan.batch_size, 0, plan.validation_steps)
    blocks = scoring_blocks(batches, VALIDATION_BLOCK)
    if validation_bytes(worker) > VALIDATION_CACHE_BYTES:
        return blocks
    worker.validation_cache = list(blocks)
    return worker.validation_cache


def validation_bytes(worker: Worker) -> int:
    """What the validation shard takes in memory: features, mask, label and weight."""
    rows = worker.plan.validation_steps * worker.plan.batch_size
    return rows * (worker.n_features * 5 + 8)


#: Rows scored per forward pass in validation: no gradients, so a block as large as the
#: caches like costs one call where the training batches would cost dozens.
VALIDATION_BLOCK = 8192


def scoring_blocks(batches: Iterator[Batch], rows: int) -> Iterator[Batch]:
    """``batches`` joined into blocks of at least ``rows`` rows (the last may be smaller),
    the same rows in the same order."""
    pending: list[Batch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += len(batch)
        if held >= rows:
            yield concat_batches(pending)
            pending, held = [], 0
    if pending:
        yield concat_batches(pending)


def validation_metrics(
    worker: Worker, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray
) -> dict[str, float]:
    """The task's scalar metrics of every worker's validation scores as ``val_<name>``
    (``val_loss``; the exact ``val_auc`` of a classifier, the same for each framework;
    ``val_rmse``, ``val_resolution``… of a regression), weighted when the events are."""
    task = worker.task
    w = weights if worker.has_weights else None
    found = task.metrics(labels, task.shaped(scores), w)
    return {f"val_{k}": float(v) for k, v in found.items() if isinstance(v, (int, float))}


# ---------------------------------------------------------------------------- records


def unit_names(plan: StepPlan, unit: int) -> dict[str, int]:
    if plan.mode == "standard":
        return {"epoch": unit, "chunk": -1}
    return {"epoch": plan.epochs - 1, "chunk": unit}


def timing_record(per_worker: np.ndarray) -> dict[str, Any]:
    """Timings of a unit from every worker's ``[train, wait, produce]`` seconds.

    ``data_wait_fraction`` is the share of training time the slowest-fed worker spent
    blocked on its next batch (the input pipeline's stall; goal: below 0.1).
    """
    per_worker = np.asarray(per_worker, dtype=np.float64).reshape(-1, 3)
    train, wait, produce = per_worker.T
    fractions = np.divide(wait, train, out=np.zeros_like(wait), where=train > 0)
    return {
        "train_seconds": float(train.max()),
        "wait_seconds": float(wait.max()),
        "produce_seconds": float(produce.max()),
        "data_wait_fraction": float(fractions.max()),
        "workers": [
            {"train_seconds": t, "wait_seconds": w, "produce_seconds": p}
            for t, w, p in per_worker.tolist()
        ],
    }


def unit_record(
    worker: Worker, unit: int, metrics: dict[str, float], timings: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    steps = batches_per_unit(worker.plan, unit)
    return {
        "unit": unit,
        **unit_names(worker.plan, unit),
        **metrics,
        **timings,
        "steps": steps,
        "events": steps * worker.plan.batch_size * worker.world,
        # gradients all-reduced among workers (one worker trains as one process does)
        "distributed": worker.session.distributed,
        **extra,
    }


def finish_unit(
    worker: Worker,
    state: dict[str, Any],
    unit: int,
    metrics: dict[str, float],
    timings: dict[str, Any],
    save: Callable[[Path], None],
    **extra: Any,
) -> dict[str, Any]:
    """Close a trained and validated unit, the same for every framework: its record
    (with the stream's reads), the checkpoint and report, and the injected failure of a
    recovery test; the state the next unit starts from.

    The unit must have taken exactly its planned steps (``optimizer_steps`` in ``extra``,
    counted by the optimizer, against the state's count before the unit): a unit that
    trained on more or fewer batches than planned fails here, before its checkpoint.
    """
    planned = batches_per_unit(worker.plan, unit)
    taken = int(extra["optimizer_steps"]) - int(state.get("optimizer_steps", 0))
    if taken != planned:
        raise RuntimeError(
            f"internal error: unit {unit} took {taken} optimizer steps, {planned} were planned"
        )
    record = unit_record(worker, unit, metrics, timings, **extra, reads=stream_reads(worker.train))
    state = next_state(state, record, worker)
    report(worker, record, state, save)
    maybe_fail(worker.config, worker.rank, unit)
    return state


def stream_reads(stream: ChunkStream) -> dict[str, int] | None:
    """Blocks read from the source and from the staging cache (staged streams only)."""
    reads = getattr(stream, "reads", None)
    return dict(reads) if reads is not None else None


# --------------------------------------------------------------------------- failures


def maybe_fail(config: dict[str, Any], rank: int, unit: int) -> None:
    inject = config.get("inject_failure")
    if not inject or inject.get("rank", 0) != rank or inject.get("unit", 0) != unit:
        return
    marker = Path(config["failure_marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"worker {rank} failed on purpose after unit {unit}\n")
    raise InjectedFailure(f"worker {rank}: injected failure after unit {unit}")


def failure_marker(run_name: str) -> str:
    """Where an injected failure records that it happened (it happens once per run)."""
    return os.path.join(tempfile.gettempdir(), f"mlaas4hep-failure-{run_name}")
