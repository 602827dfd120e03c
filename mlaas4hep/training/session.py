"""Where a training loop gets its rank and last checkpoint, and sends its reports.

The worker loops (:mod:`mlaas4hep.training.keras_loop`, :mod:`~.torch_loop`) talk to a
:class:`Session` instead of to Ray, so that the same loop runs under Ray Train
(:class:`RaySession`: ``ray.train.get_context``, ``get_checkpoint`` and ``report``) and
in one plain process or one Ray actor (:class:`LocalSession`: checkpoints in a local
directory, the last one resumed; :class:`StoredSession`: the same, kept in an object
store). A checkpoint is a directory of files the loop wrote, one per unit.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlaas4hep import extras

#: The file a checkpoint holds last: its state (see :mod:`mlaas4hep.training.loop`).
STATE = "state.json"


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

    def location(self, name: str) -> str:
        """Where the checkpoint ``name`` is kept (a path or a URL)."""
        return str(self.directory / name)

    def close(self) -> None:
        """Release what the session holds locally (nothing: the directory is the store)."""

    @contextmanager
    def final_checkpoint(self) -> Iterator[Path]:
        """The last checkpoint's directory, for the driver to read; then :meth:`close`."""
        try:
            with self.last_checkpoint() as directory:
                if directory is None:
                    raise RuntimeError(f"no checkpoint in {self.directory}")
                yield directory
        finally:
            self.close()

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


class StoredSession(LocalSession):
    """A :class:`LocalSession` whose checkpoints are kept under ``path`` of a pyarrow
    ``filesystem`` (S3) as well: the newest one is fetched on start (to resume from), and
    every one reported is uploaded, its ``state.json`` last, so that a checkpoint without
    one (an upload cut short) is never resumed from; ``keep`` are kept there too.
    """

    def __init__(self, filesystem: Any, path: str, keep: int = 2) -> None:
        super().__init__(tempfile.mkdtemp(prefix="mlaas4hep-checkpoints-"), keep)
        self.filesystem, self.path = filesystem, path.rstrip("/")
        stored = self.stored()
        if stored:
            self._copy(self._path(stored[-1]), str(self.directory / stored[-1]), upload=False)

    def stored(self) -> list[str]:
        """The names of the complete checkpoints in the store, oldest first."""
        fs = extras.require("pyarrow.fs")
        selector = fs.FileSelector(self.path, allow_not_found=True)
        names = [i.base_name for i in self.filesystem.get_file_info(selector)]
        complete = [
            name
            for name in names
            if self.filesystem.get_file_info(f"{self.path}/{name}/{STATE}").type == fs.FileType.File
        ]
        return sorted(complete)

    def location(self, name: str) -> str:
        return f"{self.filesystem.type_name}://{self._path(name)}"

    def _path(self, name: str) -> str:
        return f"{self.path}/{name}"

    def close(self) -> None:
        """Remove the local mirror (the store keeps the checkpoints)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def report(self, record: dict[str, Any], checkpoint: Path, name: str) -> None:
        super().report(record, checkpoint, name)
        target = self._path(name)
        fs = extras.require("pyarrow.fs")
        if self.filesystem.get_file_info(f"{target}/{STATE}").type == fs.FileType.File:
            self.filesystem.delete_file(f"{target}/{STATE}")  # incomplete until written again
        for entry in sorted(checkpoint.iterdir(), key=lambda p: p.name == STATE):
            self._copy(str(entry), f"{target}/{entry.name}", upload=True)
        for old in self.stored()[: -self.keep]:
            self.filesystem.delete_dir(self._path(old))

    def _copy(self, source: str, destination: str, *, upload: bool) -> None:
        fs = extras.require("pyarrow.fs")
        local = fs.LocalFileSystem()
        if not upload:  # pyarrow creates the subdirectories, not the directory itself
            Path(destination).mkdir(parents=True, exist_ok=True)
        fs.copy_files(
            source,
            destination,
            source_filesystem=local if upload else self.filesystem,
            destination_filesystem=self.filesystem if upload else local,
        )
