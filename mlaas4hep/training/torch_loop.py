"""The PyTorch training loop: one worker of a Ray ``TorchTrainer``, or one process.

:func:`train_torch` takes the worker config, a device and a session. The model and
every batch go to ``device`` (Ray's ``ray.train.torch.get_device()`` under Ray: the
worker's GPU with ``use_gpu: true``, else the CPU); losses and scores stay on the
device during a unit and come back to the CPU once, at its end, for the metrics. Under
Ray the model is wrapped by ``prepare_model`` (DistributedDataParallel over gloo on
CPU, NCCL on GPU); in one process it is used as is.

A checkpoint holds the weights (``model.pt``), the optimizer's ``state_dict``
(``optimizer.pt``: Adam's moments and step count) and the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.model import architectures as models
from mlaas4hep.model.manifest import TORCH_WEIGHTS
from mlaas4hep.model.metrics import auc
from mlaas4hep.stream.batches import Batch, model_inputs
from mlaas4hep.training import loop
from mlaas4hep.training.feed import BatchFeed
from mlaas4hep.training.session import Session

TORCH_OPTIMIZER = "optimizer.pt"


def batch_tensors(batch: Batch, device: Any, with_mask: bool) -> tuple[Any, Any, Any]:
    """``(inputs, y, w)`` of a batch as tensors on ``device`` (``w`` may be None)."""
    torch = extras.torch()
    features = torch.from_numpy(np.ascontiguousarray(batch.X)).to(device)
    mask = torch.from_numpy(batch.mask).to(device) if with_mask else None
    inputs = model_inputs(features, mask, with_mask)
    y = None if batch.y is None else torch.from_numpy(batch.y).to(device)
    w = None if batch.w is None else torch.from_numpy(batch.w).to(device)
    return inputs, y, w


def optimizer_steps(optimizer: Any) -> int:
    """How many steps the optimizer took (Adam's ``step`` count; 0 before the first)."""
    steps = [state.get("step", 0) for state in optimizer.state.values()]
    return int(max((float(s) for s in steps), default=0))


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
    torch = extras.torch()
    config, plan = worker.config, worker.plan
    torch.manual_seed(worker.seed)  # the same initial weights everywhere
    bare = models.build_model(config["model_code"], "torch", worker.n_features, worker.with_mask)
    bare.to(device)
    optimizer_holder: list[Any] = []

    def load(directory: Path) -> None:
        bare.load_state_dict(
            torch.load(directory / TORCH_WEIGHTS, map_location=device, weights_only=True)
        )
        optimizer_holder.append(
            torch.load(directory / TORCH_OPTIMIZER, map_location=device, weights_only=True)
        )

    loop.restore_model(worker, state, load)
    model = prepare_model(bare) if prepare_model is not None else bare
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    if optimizer_holder:
        optimizer.load_state_dict(optimizer_holder[0])
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()

    def save(directory: Path) -> None:
        weights = {name: value.detach().cpu() for name, value in bare.state_dict().items()}
        torch.save(weights, directory / TORCH_WEIGHTS)  # loadable on a machine without GPU
        torch.save(optimizer.state_dict(), directory / TORCH_OPTIMIZER)

    def gathered(*arrays: np.ndarray) -> list[np.ndarray]:
        if not distributed:
            return list(arrays)
        parts: list[Any] = [None] * worker.world
        torch.distributed.all_gather_object(parts, arrays)
        return [np.concatenate([p[i] for p in parts]) for i in range(len(arrays))]

    def predict(batch: Batch) -> np.ndarray:
        inputs, _, _ = batch_tensors(batch, device, worker.with_mask)
        return model(inputs).reshape(-1).cpu().numpy()

    def evaluate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            scores, labels = loop.validation_scores(worker, predict)
        model.train()
        return loop.validation_metrics(*gathered(scores, labels))

    model.train()
    for unit in range(state["next_unit"], plan.units):
        started = time.perf_counter()
        count = loop.batches_per_unit(plan, unit)
        if count == 0:
            continue  # every worker skips the same chunk (too small for a batch)
        torch.manual_seed(loop.unit_seed(worker.seed, unit))  # dropout: exact on resume
        wait, produce = feed.wait_seconds, feed.produce_seconds
        losses, scores, labels = [], [], []
        for batch in feed.take(unit, count):
            inputs, y, w = batch_tensors(batch, device, worker.with_mask)
            out = model(inputs).reshape(-1)
            loss = torch.nn.functional.binary_cross_entropy(out, y, weight=w)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())  # stays on the device: no sync per step
            scores.append(out.detach())
            labels.append(batch.y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - started
        wait, produce = feed.wait_seconds - wait, feed.produce_seconds - produce
        validated = time.perf_counter()
        val_loss, val_auc = evaluate()
        metrics = {"loss": float("nan"), "auc": float("nan")}
        if losses:  # back to the CPU once per unit
            s = torch.cat(scores).cpu().numpy()
            metrics = {
                "loss": float(torch.stack(losses).mean().cpu()),
                "auc": auc(np.concatenate(labels), s),
            }
        per_worker = gathered(np.array([[train_seconds, wait, produce]]))[0]
        state = loop.finish_unit(
            worker, state, unit, {**metrics, "val_loss": val_loss, "val_auc": val_auc},
            loop.timing_record(per_worker), save,
            validation_seconds=time.perf_counter() - validated,
            seconds=time.perf_counter() - started,
            optimizer_steps=optimizer_steps(optimizer),
            device=str(device),
        )  # fmt: skip
    return state
