"""The PyTorch training loop: one worker of a Ray ``TorchTrainer``, or one process.

:func:`train_torch` takes the worker config, a device and a session. The model and
every batch go to ``device`` (Ray's ``ray.train.torch.get_device()`` under Ray: the
worker's GPU with ``use_gpu: true``, else the CPU); losses and scores stay on the
device during a unit and come back to the CPU once, at its end, for the metrics. Under
Ray the model is wrapped by ``prepare_model`` (DistributedDataParallel over gloo on
CPU, NCCL on GPU); in one process it is used as is.

On a GPU the batch feed's thread copies each batch into page-locked host memory
(:func:`pinned`) and the training thread copies it to the device asynchronously, so the
copy overlaps the previous step. ``precision: bf16`` or ``fp16`` runs the forward pass
under ``torch.autocast`` (the loss, the weights and Adam stay float32; fp16 adds a
gradient scaler, CUDA only). The batch feed decompresses with as many threads as the
worker has CPUs (``scaling.cpus_per_worker``): give a GPU worker several.

A checkpoint holds the weights (``model.pt``), the optimizer's ``state_dict``
(``optimizer.pt``: Adam's moments and step count), with fp16 the gradient scaler's
state (``scaler.pt``), and the state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.model.manifest import TORCH_WEIGHTS
from mlaas4hep.model.tasks import Task
from mlaas4hep.stream.batches import Batch, model_inputs
from mlaas4hep.training import loop
from mlaas4hep.training.feed import BatchFeed
from mlaas4hep.training.session import Session

TORCH_OPTIMIZER = "optimizer.pt"
TORCH_SCALER = "scaler.pt"
#: torch's dtype of each mixed precision of ``training.precision``
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def _tensor(array: Any) -> Any:
    torch = extras.torch()
    if isinstance(array, torch.Tensor):
        return array
    return torch.from_numpy(np.ascontiguousarray(array))


def batch_tensors(batch: Batch, device: Any, with_mask: bool) -> tuple[Any, Any, Any]:
    """``(inputs, y, w)`` of a batch as tensors on ``device`` (``w`` may be None).

    The arrays may already be tensors (:func:`pinned`); the copies to a GPU are
    asynchronous (``non_blocking``), ordered on the device before the step's kernels."""

    def move(array: Any) -> Any:
        return None if array is None else _tensor(array).to(device, non_blocking=True)

    features = move(batch.X)
    inputs = model_inputs(features, move(batch.mask) if with_mask else None, with_mask)
    return inputs, move(batch.y), move(batch.w)


def torch_loss(task: Task, out: Any, y: Any, w: Any) -> Any:
    """The task's loss of one batch: the mean of ``w × loss`` over its events (as
    Keras reduces it; a regression's residual in units of the target's spread)."""
    torch = extras.torch()
    functional = torch.nn.functional
    if task.kind == "binary":
        return functional.binary_cross_entropy(out, y, weight=w)
    if task.kind == "multiclass":
        log_p = torch.log(out.clamp_min(1e-7))
        per = functional.nll_loss(log_p, y.long(), reduction="none")
    elif task.loss == "huber":
        per = functional.huber_loss(
            out / task.scale, y / task.scale, reduction="none", delta=task.delta
        )
    else:
        per = ((out - y) / task.scale) ** 2
    return (per * w).mean() if w is not None else per.mean()


def pinned(batch: Batch) -> Batch:
    """The batch as tensors in page-locked host memory, from which a GPU copies
    asynchronously (made in the batch feed's thread, off the training thread)."""

    def pin(array: Any) -> Any:
        return None if array is None else _tensor(array).pin_memory()

    return Batch(pin(batch.X), pin(batch.mask), pin(batch.y), pin(batch.w))


class Precision:
    """A worker's ``training.precision``: the autocast region of the forward pass and,
    for fp16, the gradient scaler (steps it skips on an overflow are steps of the plan
    all the same: the loop counts them, not Adam)."""

    def __init__(self, precision: str, device: Any) -> None:
        torch = extras.torch()
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError(
                "training.precision fp16 needs a CUDA device (scaling.use_gpu: true, or "
                "--device cuda); bf16 runs on CPUs too"
            )
        name = AUTOCAST_DTYPES.get(precision)
        self.dtype = None if name is None else getattr(torch, name)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast(self) -> Any:
        """The region the forward pass runs in (nothing changes for float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return extras.torch().autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: Any, optimizer: Any) -> None:
        """Backward pass and optimizer step (scaled for fp16)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def optimizer_steps(optimizer: Any) -> int:
    """How many steps the optimizer took (Adam's ``step`` count; 0 before the first)."""
    steps = [state.get("step", 0) for state in optimizer.state.values()]
    return int(max((float(s) for s in steps), default=0))


def adam(parameters: Any, learning_rate: float, device: Any) -> Any:
    """Adam with its fused kernel where torch has one for ``device`` (CPU and CUDA): one
    kernel per step for every parameter instead of a dozen per tensor. For the default
    model on one CPU thread that is a fifth more events per second; the update is
    Adam's all the same, and a checkpoint records which variant wrote it."""
    torch = extras.torch()
    parameters = list(parameters)
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.Adam(parameters, lr=learning_rate, fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch or another dtype
            pass
    return torch.optim.Adam(parameters, lr=learning_rate)


def train_torch(
    config: dict[str, Any],
    device: Any = "cpu",
    session: Session | None = None,
    prepare_model: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Train the PyTorch model that ``config`` describes on ``device``; return the final state.

    ``session`` is where checkpoints go and come from (a fresh local directory if None);
    ``prepare_model`` wraps the model for distributed training (Ray's ``prepare_model``).
    """
    torch = extras.torch()
    device = torch.device(device)
    if device.type == "cpu":  # OpenMP threads spin: more than the CPUs starve the feed
        torch.set_num_threads(int(config.get("threads", torch.get_num_threads())))
    with loop.started(config, session) as (worker, state, feed):
        return _train(worker, state, feed, device, prepare_model)


def _train(
    worker: loop.Worker,
    state: dict[str, Any],
    feed: BatchFeed,
    device: Any,
    prepare_model: Callable[[Any], Any] | None,
) -> dict[str, Any]:
    run = TorchRun(worker, state, device, prepare_model)
    if device.type == "cuda":
        feed.prepare = pinned
    return loop.run_units(worker, state, feed, run.steps())


class TorchRun:
    """One worker's model, optimizer and device, and the steps :func:`loop.run_units` takes.

    ``bare`` is the model itself (what checkpoints hold), ``model`` the same wrapped for
    distributed training by ``prepare_model`` (DDP under Ray).
    """

    def __init__(
        self,
        worker: loop.Worker,
        state: dict[str, Any],
        device: Any,
        prepare_model: Callable[[Any], Any] | None,
    ) -> None:
        torch = extras.torch()
        self.worker, self.device = worker, device
        config = worker.config
        torch.manual_seed(worker.seed)  # the same initial weights everywhere
        self.precision = Precision(str(config.get("precision", "32")), device)
        self.steps_taken = int(state.get("optimizer_steps", 0))
        self.bare = worker.build_model("torch")
        self.bare.to(device)
        self._optimizer_state: Any = None
        self._scaler_state: Any = None
        loop.restore_model(worker, state, self.load)
        self.model = prepare_model(self.bare) if prepare_model is not None else self.bare
        self.optimizer = adam(self.model.parameters(), config["learning_rate"], device)
        if self._optimizer_state is not None:
            self.optimizer.load_state_dict(self._optimizer_state)
        if self._scaler_state is not None and self.precision.scaler is not None:
            self.precision.scaler.load_state_dict(self._scaler_state)
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()

    def load(self, directory: Path) -> None:
        torch = extras.torch()
        weights = torch.load(directory / TORCH_WEIGHTS, map_location=self.device, weights_only=True)
        self.bare.load_state_dict(weights)
        self._optimizer_state = torch.load(
            directory / TORCH_OPTIMIZER, map_location=self.device, weights_only=True
        )
        if (directory / TORCH_SCALER).exists():
            self._scaler_state = torch.load(directory / TORCH_SCALER, weights_only=True)

    def save(self, directory: Path) -> None:
        torch = extras.torch()
        weights = {name: value.detach().cpu() for name, value in self.bare.state_dict().items()}
        torch.save(weights, directory / TORCH_WEIGHTS)  # loadable on a machine without GPU
        torch.save(self.optimizer.state_dict(), directory / TORCH_OPTIMIZER)
        if self.precision.scaler is not None:
            torch.save(self.precision.scaler.state_dict(), directory / TORCH_SCALER)

    def gathered(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Each array concatenated over every worker (in rank order)."""
        if not self.distributed:
            return list(arrays)
        torch = extras.torch()
        parts: list[Any] = [None] * self.worker.world
        torch.distributed.all_gather_object(parts, arrays)
        return [np.concatenate([p[i] for p in parts]) for i in range(len(arrays))]

    def predict(self, batch: Batch) -> np.ndarray:
        inputs, _, _ = batch_tensors(batch, self.device, self.worker.with_mask)
        with self.precision.autocast():
            out = self.model(inputs)
        return out.reshape(-1).float().cpu().numpy()

    def validate(self) -> dict[str, float]:
        torch = extras.torch()
        self.model.eval()
        with torch.no_grad():
            found = loop.validation_scores(self.worker, self.predict)
        self.model.train()
        return loop.validation_metrics(self.worker, *self.gathered(*found))

    def train(self, unit: int, batches: Iterator[Batch], count: int) -> dict[str, float]:
        """One unit's optimizer steps; its loss and the task's metric (back to the CPU
        once, at its end)."""
        torch = extras.torch()
        task = self.worker.task
        losses, scores, labels, weights = [], [], [], []
        for batch in batches:
            inputs, y, w = batch_tensors(batch, self.device, self.worker.with_mask)
            with self.precision.autocast():
                out = self.model(inputs)
            out = out.float()  # the loss in float32 (BCE is not autocast-safe)
            out = out.reshape(-1) if task.outputs == 1 else out.reshape(-1, task.outputs)
            loss = torch_loss(task, out, y, w)
            self.optimizer.zero_grad()
            self.precision.step(loss, self.optimizer)
            self.steps_taken += 1
            losses.append(loss.detach())  # stays on the device: no sync per step
            scores.append(out.detach())
            labels.append(np.asarray(batch.y))
            if batch.w is not None:
                weights.append(np.asarray(batch.w))
        metric = task.train_metric
        if not losses:
            return {"loss": float("nan"), metric: float("nan")}
        loss_mean = float(torch.stack(losses).mean().cpu())
        found = task.metrics(
            np.concatenate(labels),
            torch.cat(scores).cpu().numpy(),
            np.concatenate(weights) if weights else None,
        )
        return {"loss": loss_mean, metric: float(found[metric])}

    def optimizer_steps(self) -> int:
        """Adam's step count; with a gradient scaler the loop's (see :class:`Precision`)."""
        if self.precision.scaler is not None:
            return self.steps_taken
        return optimizer_steps(self.optimizer)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            extras.torch().cuda.synchronize(self.device)

    def steps(self) -> loop.Steps:
        self.model.train()
        return loop.Steps(
            train=self.train,
            validate=self.validate,
            gather=lambda values: self.gathered(np.asarray(values)[None])[0],
            save=self.save,
            optimizer_steps=self.optimizer_steps,
            reseed=extras.torch().manual_seed,
            device=str(self.device),
            synchronize=self.synchronize,
        )
