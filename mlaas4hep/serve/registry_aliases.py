"""The alias document of a registry kept in its local store: one JSON file, one lock.

``mlaas4hep-aliases.json`` in the store (``{"aliases": {name: {alias: tag}}, "history":
[...]}``), written atomically (a temporary file renamed over it, under an exclusive
``flock``) so that every process serving from the store (each worker of ``bentoml
serve``) sees a promotion by polling it, without a restart. It has the same two
operations as the bucket's document (:class:`~.registry_bucket.RegistryBucket`), which
replaces it when the registry is shared between replicas.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlaas4hep.errors import ConfigError

T = TypeVar("T")
ALIASES_FILE = "mlaas4hep-aliases.json"
LOCK_FILE = "mlaas4hep-aliases.lock"
ALIASES_VERSION = 1


class AliasFile:
    """The alias document in the file ``<root>/mlaas4hep-aliases.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / ALIASES_FILE
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    def read_aliases(self) -> dict[str, Any]:
        """The document, re-read only when the file changed (inode, mtime, size)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {"schema_version": ALIASES_VERSION, "aliases": {}, "history": []}
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        try:
            document = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"the alias file {self.path} is unreadable: {err}") from err
        if document.get("schema_version") != ALIASES_VERSION:
            raise ConfigError(
                f"the alias file {self.path} has schema version "
                f"{document.get('schema_version')!r}; this release reads {ALIASES_VERSION}"
            )
        self._cache = (key, document)
        return document

    def update_aliases(self, change: Callable[[dict[str, Any]], T]) -> T:
        """Apply ``change`` to the document under the exclusive lock and replace the file
        atomically (nothing is written when ``change`` raises)."""
        with open(self.root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._cache = None
                document = json.loads(json.dumps(self.read_aliases()))
                result = change(document)
                fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".aliases-", suffix=".json")
                try:
                    with os.fdopen(fd, "w") as fh:
                        json.dump(document, fh, indent=1)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
                return result
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
