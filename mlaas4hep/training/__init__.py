"""Training on Ray: the job configuration, models, step plan, worker loops and driver.

``ray_jobs/train.py`` is a thin entry point over :func:`run_training`; the pieces are
importable on their own (a config is validated without Ray; a plan is computed without
TensorFlow; the worker loops, ``keras_loop`` and ``torch_loop``, run under Ray or in
one process, see ``python -m mlaas4hep.training.local``), and nothing here imports
Ray, TensorFlow or PyTorch at import time.
"""

from __future__ import annotations

from mlaas4hep.training.config import TrainConfig

__all__ = ["TrainConfig", "run_training"]


def run_training(*args, **kwargs):
    """See :func:`mlaas4hep.training.job.run_training`."""
    from mlaas4hep.training.job import run_training as run

    return run(*args, **kwargs)
