"""Train in one process, without Ray: for a GPU machine with no Ray cluster, or a laptop.

    python -m mlaas4hep.training.local --config train.yaml --device cuda

The same config, checks, worker loop, checkpoints and model bundle as the Ray job
(``ray_jobs/train.py``), with one worker: ``scaling`` is ignored. The PyTorch path
(``framework: torch``, or a torch model file) puts the model and every batch on
``--device`` (``cpu``, ``cuda``, ``cuda:1``, …) and brings results back to the CPU for
the metrics; the Keras path lets TensorFlow place its ops (on a GPU when it sees one)
and ignores ``--device``. Checkpoints go to ``--checkpoints`` (by default
``<output.location>/<run>/checkpoints`` for a local output, a temporary directory for
``s3://``); starting again with the same ``--run-name`` resumes from the last one.
``root://`` inputs are staged with threads when ``staging`` asks for it. The summary is
printed as one JSON line prefixed ``MLAAS4HEP_RESULT``; a configuration or data error
exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlaas4hep.io.location import scheme
from mlaas4hep.training.config import TrainConfig
from mlaas4hep.training.job import (
    begin_staging,
    finish,
    prepare,
    start_copies,
    timed,
    worker_config,
)
from mlaas4hep.training.result import end_process, report
from mlaas4hep.training.session import LocalSession


def run_local(
    config: TrainConfig,
    device: str = "cpu",
    checkpoints: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Stage, prepare, train in this process, evaluate and bundle; return the summary."""
    started = time.perf_counter()
    config = copy.deepcopy(config)
    config.scaling.num_workers = 1
    config.validate()
    timings: dict[str, float] = {}
    with timed(timings, "staging"):
        staging = begin_staging(config, log, use_ray=False)
    with timed(timings, "prepare"):
        job = prepare(config, staging)
    timings.update(job.timings)
    if checkpoints is None:
        checkpoints = (
            Path(job.output) / job.run_name / "checkpoints"
            if scheme(job.output) == "file"
            else Path(tempfile.mkdtemp(prefix=f"mlaas4hep-{job.run_name}-"))
        )
    session = LocalSession(checkpoints)
    log(
        f"prepared {job.run_name}: {len(job.files)} files, {job.vectorizer.n_features} features, "
        f"{job.framework} on {device if job.framework == 'torch' else 'TensorFlow placement'}, "
        f"{job.plan.mode} mode, {job.plan.units} units, {job.plan.train_events} training events"
    )
    start_copies(staging)
    loop_config = worker_config(job)
    loop_config["threads"] = max(1, (os.cpu_count() or 2) - 1)  # one core for the batch feed
    fit_started = time.time()
    with timed(timings, "fit"):
        if job.framework == "torch":
            from mlaas4hep.training.torch_loop import train_torch

            train_torch(loop_config, device, session)
        else:
            from mlaas4hep.training.keras_loop import train_keras

            train_keras(loop_config, session)
    fit_window = (fit_started, time.time())
    with session.last_checkpoint() as directory:
        if directory is None:
            raise RuntimeError(f"training run {job.run_name} produced no checkpoint")
        return finish(
            job, directory, timings=timings, started=started, checkpoint=str(directory),
            staging=staging, fit_window=fit_window,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training YAML (path or s3:// URL)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, …")
    parser.add_argument("--run-name", help="resume (or name) this run: output.run_name")
    parser.add_argument("--checkpoints", type=Path, help="local checkpoint directory")
    args = parser.parse_args(argv)

    def body() -> dict[str, Any]:
        config = TrainConfig.from_yaml(args.config)
        if args.run_name:
            config.output.run_name = args.run_name
        return run_local(config, args.device, args.checkpoints, log=lambda s: print(s, flush=True))

    return report(body)


if __name__ == "__main__":
    end_process(main())
