"""One training worker as a plain Ray actor: a one-worker job without Ray Train's start-up.

Before a Ray Train worker enters its loop, Ray Train starts a controller actor (which
imports the framework), a placement group, a worker group and the framework's backend:
about 13 s on a 2-core machine, most of a small job. A job of one worker (one per
node, all its CPUs: the fastest layout for the small models HEP trains, see the
README) needs none of it: no rendezvous, no collectives. :class:`OneWorker` starts one
actor with the worker's resources (``cpus_per_worker``, a GPU with ``use_gpu``) as the
job begins, so that it imports the framework while the driver computes the spec and
opens the files; then it runs the same worker loop as Ray Train's workers, with a
checkpoint per unit under ``<output>/checkpoints/<run>/unit-NNNNN/`` (a directory, or
an ``s3://`` prefix: :class:`~.session.StoredSession`).

Failures are handled as Ray Train's ``FailureConfig`` does: when the actor dies (its
process or its node lost) or its loop raises, a new actor resumes from the last
checkpoint, at most ``scaling.max_failures`` times; a configuration error or a missing
package (the same on every try) is raised at once.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.model import architectures
from mlaas4hep.model.manifest import DEFAULT_MODEL
from mlaas4hep.training.config import ScalingConfig, TrainConfig
from mlaas4hep.training.session import LocalSession, StoredSession


def run_session(storage: tuple[str, Any], run_name: str) -> LocalSession:
    """The run's checkpoints in ``storage`` (:func:`~.storage.run_storage`'s path and
    filesystem): a local directory, or a store mirrored in a local one."""
    path, filesystem = storage
    if filesystem is None:
        return LocalSession(Path(path) / run_name)
    return StoredSession(filesystem, f"{path}/{run_name}")


def framework_hint(config: TrainConfig) -> str | None:
    """The framework the job trains with, where the config alone says (None: the model
    file says, once read)."""
    if config.framework != "auto":
        return config.framework
    return "tensorflow" if config.model == DEFAULT_MODEL else None


def import_in_background(framework: str) -> threading.Thread:
    """Import ``framework`` in the driver, in a thread, while the actor trains.

    The test evaluation and the bundle's export need it once the fit is done, and the
    driver only waits on the actor meanwhile: TensorFlow's import took 2 s of a 21 s
    one-worker job on the 2-core machine, after the fit. On Linux the thread runs at
    the lowest priority (nice 19, this thread only), so that on a head that is also the
    worker's node it takes the cycles the actor leaves, not the data path's. A failed
    import is left to the evaluation, which raises it where it belongs.
    """

    def run() -> None:
        if sys.platform.startswith("linux"):  # a thread id is a task id there alone
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        with contextlib.suppress(Exception):
            if framework == "torch":
                extras.torch()
            elif framework == "tensorflow":
                architectures.keras()  # the one place that picks tf-keras

    thread = threading.Thread(target=run, name="driver-framework-import", daemon=True)
    thread.start()
    return thread


class TrainingWorker:
    """What the actor runs: the framework's import first, then the worker loop."""

    def warm_up(self, framework: str | None, threads: int) -> float:
        """Import ``framework`` (None: not known yet) with its compute threads set to the
        actor's CPUs, and the data path with its compiled kernel, before the job's config
        is ready; return when it was done."""
        from mlaas4hep.transform import kernel_inputs

        kernel_inputs.warm_up()
        if framework == "torch":
            from mlaas4hep.training import torch_loop  # noqa: F401 - imported ahead

            extras.torch().set_num_threads(threads)
        elif framework == "tensorflow":
            from mlaas4hep.training.keras_loop import import_tensorflow

            import_tensorflow(threads)
        return time.time()

    def train(
        self,
        config: dict[str, Any],
        framework: str,
        storage: tuple[str, Any],
        run_name: str,
        device: str,
    ) -> None:
        """Train (or resume) the run with the checkpoints in ``storage``."""
        session = run_session(storage, run_name)
        try:
            if framework == "torch":
                from mlaas4hep.training.torch_loop import train_torch

                train_torch(config, device, session)
            else:
                from mlaas4hep.training.keras_loop import train_keras

                train_keras(config, session)
        finally:
            session.close()


class OneWorker:
    """The job's one worker: an actor started (and importing its framework) at once."""

    def __init__(
        self, scaling: ScalingConfig, framework: str | None, log: Callable[[str], None] = print
    ) -> None:
        self.ray = extras.require("ray")
        if not self.ray.is_initialized():
            self.ray.init()
        self.scaling, self.framework, self.log = scaling, framework, log
        if scaling.use_gpu and not self.ray.cluster_resources().get("GPU"):
            log("scaling.use_gpu: the Ray cluster has no GPU now; the worker waits for one")
        self.threads = max(1, int(scaling.cpus_per_worker))
        self.restarts = 0
        self.started_at = time.time()
        self.actor, self.warmed = self._start()

    def _start(self) -> tuple[Any, Any]:
        options = {
            "num_cpus": self.scaling.cpus_per_worker,
            "num_gpus": 1 if self.scaling.use_gpu else 0,
            "max_restarts": 0,  # a restart resumes from a checkpoint: see fit
        }
        actor = self.ray.remote(TrainingWorker).options(**options).remote()
        return actor, actor.warm_up.remote(self.framework, self.threads)

    def warm_up_seconds(self) -> float | None:
        """How long the first actor took to start and import its framework (None if it
        failed: the failure comes again, and is handled, in :meth:`fit`)."""
        try:
            return float(self.ray.get(self.warmed)) - self.started_at
        except Exception:  # it comes again, and is handled, in fit
            return None

    def fit(
        self, config: dict[str, Any], framework: str, storage: tuple[str, Any], run_name: str
    ) -> LocalSession:
        """Train every unit, restarting a failed actor from the last checkpoint; return the
        run's checkpoints as the driver sees them."""
        device = "cuda" if self.scaling.use_gpu else "cpu"
        exceptions = self.ray.exceptions
        import_in_background(framework)
        while True:
            try:
                self.ray.get(self.actor.train.remote(config, framework, storage, run_name, device))
                break
            except exceptions.RayTaskError as err:
                if isinstance(err.cause, ConfigError | ImportError):  # the same every time
                    raise err.cause from None
                error: Exception = err
            except exceptions.RayActorError as err:
                error = err
            if self.restarts >= self.scaling.max_failures:
                raise error
            self.restarts += 1
            text = str(error).strip()
            reason = text.splitlines()[-1] if text else repr(error)
            self.log(
                f"training worker failed ({reason}); restart {self.restarts} of "
                f"{self.scaling.max_failures}, from the last checkpoint"
            )
            self.ray.kill(self.actor)
            self.actor, self.warmed = self._start()
        return run_session(storage, run_name)

    def close(self) -> None:
        """Stop the actor (its CPUs go back to the cluster)."""
        with contextlib.suppress(Exception):
            self.ray.kill(self.actor)
