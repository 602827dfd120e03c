"""What each Ray Train worker runs: ``train_loop_tensorflow`` and ``train_loop_torch``.

Thin adapters: each builds a :class:`~mlaas4hep.training.session.RaySession` (rank,
world size, Ray's checkpoints and reports) and calls the framework's loop, which runs
as well without Ray in one process (:mod:`mlaas4hep.training.local`):
:func:`~mlaas4hep.training.keras_loop.train_keras` and
:func:`~mlaas4hep.training.torch_loop.train_torch` (given ``ray.train.torch``'s device
and ``prepare_model``). See :mod:`mlaas4hep.training.loop` for what a unit, a
checkpoint and a resume are.
"""

from __future__ import annotations

from typing import Any

from mlaas4hep import extras
from mlaas4hep.training.loop import InjectedFailure, failure_marker
from mlaas4hep.training.session import RaySession

__all__ = ["InjectedFailure", "failure_marker", "train_loop_tensorflow", "train_loop_torch"]


def train_loop_tensorflow(config: dict[str, Any]) -> None:
    """Ray Train worker loop for tf-keras (MultiWorkerMirroredStrategy when several)."""
    from mlaas4hep.training.keras_loop import train_keras

    train_keras(config, RaySession())


def train_loop_torch(config: dict[str, Any]) -> None:
    """Ray Train worker loop for PyTorch on Ray's device for this worker."""
    from mlaas4hep.training.torch_loop import train_torch

    ray_torch = extras.require("ray.train.torch")
    train_torch(config, ray_torch.get_device(), RaySession(), ray_torch.prepare_model)
