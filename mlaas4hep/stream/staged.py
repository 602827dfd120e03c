"""A ChunkStream that reads each staged file from its cached copy once complete.

The copies are made by :mod:`mlaas4hep.io.staging`; this stream keeps the original URL
as each file's key, so the train/validation/test split, the labels and the lineage do
not depend on where the bytes came from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mlaas4hep.io.location import normalize_url
from mlaas4hep.io.staging import StagingTable
from mlaas4hep.io.tree import RootTree, open_tree
from mlaas4hep.stream.chunks import ChunkStream


class StagedChunkStream(ChunkStream):
    """A ChunkStream that opens each staged file from its cached copy once complete.

    Files keep their original URLs as keys; only :meth:`_open` (where a block's bytes
    come from) changes. A file switches at the first block read after its copy is
    complete; the tree opened from the source is closed with the stream. ``reads``
    counts the opens (layout and block reads) served by the source and by the cache.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]] | Mapping[str, float],
        *,
        staging: StagingTable | None = None,
        **options: Any,
    ) -> None:
        super().__init__(files, **options)
        given = staging or StagingTable()
        self.staging = StagingTable(
            {normalize_url(k): v for k, v in given.targets.items()},
            {normalize_url(k): v for k, v in given.identities.items()},
            {normalize_url(k) for k in given.staged},
            given.check_seconds,
        )
        self._switched = set(self.staging.staged)
        self._fresh_staging_state()

    def _fresh_staging_state(self) -> None:
        self._checked: dict[str, float] = {}
        self._opened_from: dict[str, str] = {}
        self._retired: list[RootTree] = []
        self.reads = {"source": 0, "cache": 0}

    @property
    def switched(self) -> set[str]:
        """The files this stream reads from the cache now."""
        return set(self._switched)

    def _location(self, key: str) -> str:
        target = self.staging.targets.get(key)
        if target is None:
            return key
        now = time.monotonic()
        with self._trees_lock:
            if key in self._switched:
                return target
            if now - self._checked.get(key, float("-inf")) < self.staging.check_seconds:
                return key
            self._checked[key] = now
        if not self.staging.is_complete(key):
            return key
        with self._trees_lock:
            self._switched.add(key)
        return target

    def _open(self, url: str) -> RootTree:
        location = self._location(url)
        kind = "source" if location == url else "cache"
        with self._trees_lock:
            tree = self._trees.get(url)
            if tree is not None and self._opened_from.get(url) == location:
                self.reads[kind] += 1
                return tree
        opened = open_tree(location, self.tree)
        with self._trees_lock:
            current = self._trees.get(url)
            if current is not None and self._opened_from.get(url) == location:
                opened.close()
                opened = current
            else:
                if current is not None:
                    self._retired.append(current)  # a read in flight may still use it
                self._trees[url] = opened
                self._opened_from[url] = location
            self.reads[kind] += 1
        return opened

    def close(self) -> None:
        super().close()
        with self._trees_lock:
            retired, self._retired = self._retired, []
            self._opened_from = {}
        for tree in retired:
            tree.close()

    def _copy(self, **changes: Any) -> StagedChunkStream:
        clone = super()._copy(**changes)
        clone.__class__ = type(self)  # ChunkStream._copy makes a plain ChunkStream
        clone._switched = set(self._switched)
        clone._fresh_staging_state()
        return clone  # type: ignore[return-value]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_switched=set(self._switched), _checked={}, _opened_from={}, _retired=[])
        state["reads"] = {"source": 0, "cache": 0}
        return state
