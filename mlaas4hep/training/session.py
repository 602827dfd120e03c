"""Where a training loop gets its rank and last checkpoint, and sends its reports.

The worker loops (:mod:`mlaas4hep.training.keras_loop`, :mod:`~.torch_loop`) talk to a
:class:`Session` instead of to Ray, so that the same loop runs under Ray Train
(:class:`RaySession`: ``ray.train.get_context``, ``get_checkpoint`` and ``report``) and
in one plain process (:class:`LocalSession`: checkpoints in a local directory, the
last one resumed). A checkpoint is a directory of files the loop wrote, one per unit.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlaas4hep import extras


class Session:
    """What a training loop needs from its runner."""

    rank: int = 0
    world_size: int = 1
    #: Whether the loop runs among several processes (a distribution strategy is needed).
    distributed: bool = False

    @contextmanager
    def last_checkpoint(self) -> Iterator[Path | None]:
        """The directory of the last checkpoint (None on a fresh start)."""
        yield None

    def report(self, record: dict[str, Any], checkpoint: Path, name: str) -> None:
        """Report a unit's metrics with the checkpoint written in ``checkpoint``."""
        raise NotImplementedError


class RaySession(Session):
    """A Ray Train worker: rank and world from the train context; Ray keeps checkpoints."""

    def __init__(self) -> None:
        self._train = extras.require("ray.train")
        context = self._train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        # one worker (one per node, all its CPUs) trains as one process does: no
        # MultiWorkerMirroredStrategy, whose collectives a step would wait on for nothing
        self.distributed = self.world_size > 1

    @contextmanager
    def last_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = self._train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, record: dict[str, Any], checkpoint: Path, name: str) -> None:
        # every rank reports (a barrier); rank 0 alone hands its checkpoint to Ray
        attached = (
            self._train.Checkpoint.from_directory(str(checkpoint)) if self.rank == 0 else None
        )
        self._train.report(record, checkpoint=attached, checkpoint_dir_name=name)


class LocalSession(Session):
    """One process, no Ray: checkpoints under ``directory/<name>/``, the newest resumed.

    A checkpoint is copied under a temporary name and renamed when complete, so a crash
    while writing never leaves a half checkpoint to resume from; ``keep`` are kept.
    """

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.records: list[dict[str, Any]] = []

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.is_dir() and p.name[0] != ".")

    @contextmanager
    def last_checkpoint(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, record: dict[str, Any], checkpoint: Path, name: str) -> None:
        self.records.append(record)
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(checkpoint, partial)
        target = self.directory / name
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
