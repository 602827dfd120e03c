"""ChunkStream: the paper's training data flow, streamed from many ROOT files.

Every chunk holds ``chunk_size`` events mixed from all files in proportion n_i/N (see
:mod:`mlaas4hep.stream.mixing`); every event of every file is delivered exactly once per epoch,
the last chunk being smaller where needed. Files are read in blocks aligned with their
baskets (cheap to decompress, bounded memory: one block per file at a time). Per epoch
the block order of each file is shuffled with the seed, and events are shuffled within
each chunk as they are written into it.

A deterministic train/validation/test split by event, labels (per file or from a
branch/expression), a selection cut and per-event weights come with each chunk.
``shard(index, count)`` gives a stream that reads its own contiguous part of every
block (equal in events of its split), so each shard keeps the same file mix, all shards
have the same number of events to within one per block, and together they deliver every
event once.
Chunks become ``X``/``mask`` through a :class:`~mlaas4hep.transform.vectorizer.Vectorizer`
writing straight into the shuffled rows, without intermediate copies.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep.errors import BranchError, ConfigError
from mlaas4hep.io.columns import numpy_column, share_offsets
from mlaas4hep.io.decompression import decompression_threads
from mlaas4hep.io.expand import expand_sources
from mlaas4hep.io.location import normalize_url
from mlaas4hep.io.tree import RootTree, open_tree
from mlaas4hep.stream import adapters
from mlaas4hep.stream.batches import Batch, Chunk, concat_batches, slice_batch
from mlaas4hep.stream.labels import resolve_labels
from mlaas4hep.stream.mixing import SPLITS, chunk_plan, key_hash, split_codes, split_mask
from mlaas4hep.stream.options import Reading, Selection, Split
from mlaas4hep.transform.expressions import Expression
from mlaas4hep.transform.vectorizer import Vectorizer


@dataclass
class _Block:
    start: int
    stop: int
    members: int


@dataclass
class _FileLayout:
    index: int
    key: str
    label: float | None
    blocks: list[_Block]

    @property
    def events(self) -> int:
        return sum(block.members for block in self.blocks)


@dataclass
class _Piece:
    """Consecutive entries of one file: numpy columns for the Vectorizer, awkward arrays
    for expressions and raw output, and which entries the chunk keeps."""

    file: int
    columns: dict[str, Any]
    arrays: dict[str, Any]
    keep: np.ndarray
    entries: np.ndarray


@dataclass
class _LoadedBlock:
    start: int
    columns: dict[str, Any]
    arrays: dict[str, Any]
    members: np.ndarray


class _Cursor:
    """Reads one file's blocks in a given order and hands out its member events in turn.

    While a block is being consumed, the next one is already read in a background thread,
    so decompression overlaps with vectorisation instead of stalling a chunk.
    """

    def __init__(self, stream: ChunkStream, layout: _FileLayout, order: np.ndarray) -> None:
        self.stream = stream
        self.layout = layout
        self.order = list(order)
        self.pending: Future[_LoadedBlock] | None = None
        self.block = _LoadedBlock(0, {}, {}, np.zeros(0, dtype=np.int64))
        self.position = 0

    def take(self, count: int) -> Iterator[_Piece]:
        while count > 0:
            if self.position >= len(self.block.members):
                self._load_next()
                continue
            block = self.block
            stop = min(self.position + count, len(block.members))
            local = block.members[self.position : stop]
            low, high = int(local[0]), int(local[-1]) + 1
            keep = np.zeros(high - low, dtype=bool)
            keep[local - low] = True
            yield _Piece(
                file=self.layout.index,
                columns={name: column[low:high] for name, column in block.columns.items()},
                arrays={name: array[low:high] for name, array in block.arrays.items()},
                keep=keep,
                entries=np.arange(block.start + low, block.start + high, dtype=np.int64),
            )
            count -= stop - self.position
            self.position = stop

    def _load_next(self) -> None:
        if self.pending is None:
            self._read_ahead()
        if self.pending is None:
            raise RuntimeError(f"internal error: {self.layout.key} has no events left to read")
        self.block = self.pending.result()
        self.position = 0
        self.pending = None
        self._read_ahead()

    def _read_ahead(self) -> None:
        if self.order:
            block = self.layout.blocks[self.order.pop(0)]
            self.pending = self.stream._readers().submit(self._read, block)

    def _read(self, block: _Block) -> _LoadedBlock:
        tree = self.stream._open(self.layout.key)
        arrays = tree.arrays(
            self.stream.read_branches, block.start, block.stop, executor=self.stream._executor()
        )
        vectorizer = self.stream.vectorizer
        columns = {}
        if vectorizer is not None:
            columns = share_offsets(
                {b.name: numpy_column(arrays[b.name], b.kind) for b in vectorizer.inputs}
            )
        entries = np.arange(block.start, block.stop, dtype=np.int64)
        members = np.flatnonzero(self.stream._members(self.layout.key, entries))
        awkward = {name: arrays[name] for name in self.stream.awkward_branches}
        return _LoadedBlock(block.start, columns, awkward, members)


class ChunkStream:
    """Chunks of events mixed in proportion from many ROOT files (local, root://, s3://).

    ``files`` are URLs, directories, globs or ``s3://`` prefixes, or a dict file → label.

    The options come in three groups (:mod:`mlaas4hep.stream.options`): ``selection``
    (labels, weights, a cut), ``split`` and ``reading``. The constructor checks them all
    and sets every attribute a shard or a pickled copy carries, in one place.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]] | Mapping[str, float],
        *,
        vectorizer: Vectorizer | None = None,
        branches: Sequence[str] | None = None,
        tree: str | None = None,
        chunk_size: int = 10_000,
        seed: int = 0,
        shuffle: bool = True,
        selection: Selection | None = None,
        split: Split | None = None,
        reading: Reading | None = None,
    ) -> None:
        selection = selection or Selection()
        split = split or Split()
        reading = reading or Reading()
        labels = selection.labels
        if isinstance(files, Mapping):
            labels = {**dict(files), **dict(labels or {})}
            files = list(files)
        self.files = list(dict.fromkeys(normalize_url(f) for f in expand_sources(files)))
        if not self.files:
            raise ConfigError("a ChunkStream needs at least one file")
        if chunk_size <= 0:
            raise ConfigError("chunk_size must be positive")
        self.vectorizer = vectorizer
        self.tree = tree
        self.chunk_size = int(chunk_size)
        self.label_expr = Expression(selection.label) if selection.label else None
        self.weight_expr = Expression(selection.weight) if selection.weight else None
        self.cut_expr = Expression(selection.cut) if selection.cut else None
        self.file_labels = resolve_labels(self.files, labels) if labels else None
        if self.file_labels is not None and self.label_expr is not None:
            raise ConfigError("give labels per file or a label expression, not both")
        self.seed = int(seed)
        self.shuffle = shuffle
        self.split = split.name
        self.fractions = split.fractions  # floats, checked by Split
        self.split_seed = int(split.seed)
        self.block_size = int(reading.block_size)
        self.prefetch = int(reading.prefetch)
        self.open_workers = int(reading.open_workers)
        self.decompression_threads = decompression_threads(reading.decompression_threads)
        self._pool: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self.shards: tuple[tuple[int, int], ...] = ()
        wanted = list(branches) if branches is not None else []
        if vectorizer is not None:
            wanted += vectorizer.branches
        for expr in (self.label_expr, self.weight_expr, self.cut_expr):
            if expr is not None:
                wanted += expr.names
        self.output_branches = list(branches) if branches is not None else None
        self.read_branches = list(dict.fromkeys(wanted))
        expression_names = [
            name
            for expr in (self.label_expr, self.weight_expr, self.cut_expr)
            if expr is not None
            for name in expr.names
        ]
        self.awkward_branches = list(dict.fromkeys([*(branches or []), *expression_names]))
        if not self.read_branches:
            raise ConfigError("nothing to read: give a vectorizer or a list of branches")
        self._clusters: list[np.ndarray] | None = None
        self._layouts: list[_FileLayout] | None = None
        self._trees: dict[str, RootTree] = {}
        self._trees_lock = threading.Lock()

    # --- open files -------------------------------------------------------------------
    def _open(self, url: str) -> RootTree:
        """The open tree of a file, opened once per stream and kept for later epochs."""
        with self._trees_lock:
            tree = self._trees.get(url)
        if tree is None:
            tree = open_tree(url, self.tree)
            with self._trees_lock:
                tree = self._trees.setdefault(url, tree)
        return tree

    def _readers(self) -> ThreadPoolExecutor:
        """Threads that read blocks ahead (one outstanding read per file at most)."""
        with self._trees_lock:
            if self._read_pool is None:
                self._read_pool = ThreadPoolExecutor(
                    max(1, min(len(self.files), 4)), thread_name_prefix="chunkstream-read"
                )
            return self._read_pool

    def _executor(self) -> ThreadPoolExecutor | None:
        """Threads that decompress baskets in parallel (zlib/lz4/zstd release the GIL)."""
        if self.decompression_threads <= 1:
            return None
        with self._trees_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.decompression_threads, thread_name_prefix="chunkstream-decompress"
                )
        return self._pool

    def close(self) -> None:
        """Close the files this stream holds open (they reopen on the next use)."""
        with self._trees_lock:
            trees, self._trees = list(self._trees.values()), {}
            pools = [self._pool, self._read_pool]
            self._pool = self._read_pool = None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        for tree in trees:
            tree.close()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # open files and locks stay behind: a copy sent to a worker reopens what it reads
        state = dict(self.__dict__)
        state["_trees"] = {}
        state["_trees_lock"] = None
        state["_pool"] = None
        state["_read_pool"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._trees_lock = threading.Lock()

    @property
    def split_options(self) -> Split:
        """This stream's split (name, fractions, hash seed) as options."""
        return Split(self.split, self.fractions, self.split_seed)

    # --- derived streams --------------------------------------------------------------
    def _copy(self, **changes: Any) -> ChunkStream:
        clone = object.__new__(ChunkStream)
        clone.__dict__.update(self.__dict__)
        clone.__dict__.update(changes)
        clone._layouts = None
        clone._trees = {}  # each stream owns (and closes) its own open files and threads
        clone._trees_lock = threading.Lock()
        clone._pool = None
        clone._read_pool = None
        return clone

    def shard(self, index: int, count: int) -> ChunkStream:
        """The part of this stream that worker ``index`` of ``count`` reads."""
        if not 0 <= index < count:
            raise ConfigError(f"shard index must be within [0, {count}), not {index}")
        return self._copy(shards=(*self.shards, (int(index), int(count))))

    def with_split(self, split: str | None) -> ChunkStream:
        """The same stream restricted to another split (same files, same seed)."""
        if split is not None and split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS} or None, not {split!r}")
        return self._copy(split=split)

    # --- layout -----------------------------------------------------------------------
    def _open_all(self) -> list[np.ndarray]:
        """Open every file once: check its branches and find its basket-aligned blocks."""
        if self._clusters is None:
            with ThreadPoolExecutor(max_workers=max(1, self.open_workers)) as pool:
                self._clusters = list(pool.map(self._file_clusters, self.files))
        return self._clusters

    def _file_clusters(self, url: str) -> np.ndarray:
        root_tree = self._open(url)
        missing = [b for b in self.read_branches if b not in root_tree.branches]
        if missing:
            raise BranchError(f"branch(es) {', '.join(missing)} not found in {url}")
        return _merge_clusters(root_tree.cluster_boundaries(self.read_branches), self.block_size)

    def _members(self, key: str, entries: np.ndarray) -> np.ndarray:
        return split_mask(key, entries, self.split, self.fractions, self.split_seed)

    def _layout(self) -> list[_FileLayout]:
        if self._layouts is None:
            layouts = []
            for index, (key, bounds) in enumerate(zip(self.files, self._open_all(), strict=True)):
                blocks = []
                for start, stop in itertools.pairwise(bounds):
                    entries = np.arange(start, stop, dtype=np.int64)
                    members = entries[self._members(key, entries)]
                    first, last = _shard_range(0, len(members), self.shards)
                    if last > first:
                        block = _Block(
                            int(members[first]), int(members[last - 1]) + 1, last - first
                        )
                        blocks.append(block)
                label = None if self.file_labels is None else self.file_labels[key]
                layouts.append(_FileLayout(index, key, label, blocks))
            self._layouts = layouts
        return self._layouts

    def split_table(self) -> dict[str, np.ndarray]:
        """Every file's split of each of its entries, by the hash this stream reads with:
        an int8 array per file, entry ``i`` at index ``i``, holding 0, 1 or 2 for
        ``train``, ``validation`` and ``test`` (whatever split this stream itself
        delivers, and before any cut). A script outside mlaas4hep that reads this table
        trains and scores on exactly the events a job would."""
        return {
            key: split_codes(key, np.arange(bounds[-1], dtype=np.int64), self.fractions,
                             self.split_seed)
            for key, bounds in zip(self.files, self._open_all(), strict=True)
        }  # fmt: skip

    @property
    def events_per_file(self) -> dict[str, int]:
        """Events of each file in this stream (its split and shard, before any cut)."""
        return {layout.key: layout.events for layout in self._layout()}

    @property
    def num_events(self) -> int:
        return sum(self.events_per_file.values())

    @property
    def num_chunks(self) -> int:
        return -(-self.num_events // self.chunk_size)

    # --- iteration --------------------------------------------------------------------
    def __iter__(self) -> Iterator[Chunk]:
        return self.chunks()

    def chunks(self, epoch: int = 0) -> Iterator[Chunk]:
        """The chunks of one epoch (a different shuffle for each epoch number).

        Reading (decompression) runs ``prefetch`` chunks ahead in a background thread
        while this thread vectorises the current chunk: both release the GIL.
        """
        pieces = self._pieces(epoch)
        if self.prefetch > 0:
            pieces = _prefetched(pieces, self.prefetch)
        for k, chunk_pieces in pieces:
            yield self._assemble(chunk_pieces, epoch, k)

    def _pieces(self, epoch: int) -> Iterator[tuple[int, list[_Piece]]]:
        layouts = self._layout()
        sizes = np.array([layout.events for layout in layouts], dtype=np.int64)
        plan = chunk_plan(sizes, self.chunk_size)
        cursors = [_Cursor(self, layout, self._block_order(layout, epoch)) for layout in layouts]
        for k in range(len(plan) - 1):
            pieces = []
            for i in np.flatnonzero(plan[k + 1] - plan[k]):
                pieces += cursors[i].take(int(plan[k + 1, i] - plan[k, i]))
            yield k, pieces

    def _block_order(self, layout: _FileLayout, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(layout.blocks))
        rng = np.random.default_rng([self.seed, epoch, key_hash(layout.key) & 0xFFFFFFFF])
        return rng.permutation(len(layout.blocks))

    def _assemble(self, pieces: list[_Piece], epoch: int, k: int) -> Chunk:
        for piece in pieces:
            if self.cut_expr is not None:
                piece.keep &= self.cut_expr.evaluate(piece.arrays).astype(bool)
        kept = [int(np.count_nonzero(piece.keep)) for piece in pieces]
        n = sum(kept)
        if self.shuffle:
            shard_id = [index * 1_000_003 + count for index, count in self.shards]
            rng = np.random.default_rng([self.seed, epoch, k, *shard_id])
            destination = rng.permutation(n)
        else:
            destination = np.arange(n)
        chunk = Chunk(
            files=self.files,
            file_index=np.empty(n, dtype=np.int32),
            entry=np.empty(n, dtype=np.int64),
        )
        # every row is written once (destination is a permutation): padded by the kernel
        out = self.vectorizer.uninitialised(n) if self.vectorizer is not None else None
        labels = np.empty(n, dtype=np.float32) if self.has_labels else None
        weights = np.empty(n, dtype=np.float32) if self.weight_expr is not None else None
        raw: dict[str, list[Any]] = {name: [] for name in self.output_branches or []}
        start = 0
        for piece, count in zip(pieces, kept, strict=True):
            rows = np.full(len(piece.keep), -1, dtype=np.int64)
            targets = destination[start : start + count]
            rows[piece.keep] = targets
            start += count
            chunk.file_index[targets] = piece.file
            chunk.entry[targets] = piece.entries[piece.keep]
            if out is not None:
                self.vectorizer.transform(piece.columns, out=out, rows=rows, pad_rows=True)
            if labels is not None:
                labels[targets] = self._piece_labels(piece)[piece.keep]
            if weights is not None:
                weights[targets] = self.weight_expr.evaluate(piece.arrays)[piece.keep]
            for name in raw:
                raw[name].append(piece.arrays[name][piece.keep])
        if out is not None:
            chunk.X, chunk.mask, chunk.clipped = out.X, out.mask, out.clipped
        chunk.y, chunk.w = labels, weights
        if raw:
            order = np.argsort(destination)
            chunk.arrays = {
                name: ak.concatenate(parts)[order] if parts else ak.Array([])
                for name, parts in raw.items()
            }
        return chunk

    @property
    def has_labels(self) -> bool:
        return self.file_labels is not None or self.label_expr is not None

    def _piece_labels(self, piece: _Piece) -> np.ndarray:
        if self.label_expr is not None:
            return self.label_expr.evaluate(piece.arrays).astype(np.float32)
        value = self._layout()[piece.file].label
        return np.full(len(piece.keep), value, dtype=np.float32)

    # --- batches for training ---------------------------------------------------------
    def batches(self, batch_size: int, epoch: int = 0, drop_last: bool = False) -> Iterator[Batch]:
        """Batches of ``batch_size`` rows across chunk boundaries (needs a Vectorizer)."""
        if self.vectorizer is None:
            raise ConfigError("batches need a Vectorizer to build X and mask")
        pending: list[Batch] = []
        held = 0
        for chunk in self.chunks(epoch):
            assert chunk.X is not None and chunk.mask is not None
            batch = Batch(chunk.X, chunk.mask, chunk.y, chunk.w)
            position = 0
            if held:
                need = batch_size - held
                pending.append(slice_batch(batch, 0, need))
                held += min(need, len(batch))
                position = need
                if held < batch_size:
                    continue
                yield concat_batches(pending)
                pending, held = [], 0
            while position + batch_size <= len(batch):
                yield slice_batch(batch, position, position + batch_size)
                position += batch_size
            if position < len(batch):
                pending, held = [slice_batch(batch, position, len(batch))], len(batch) - position
        if held and not drop_last:
            yield concat_batches(pending)

    def to_tf_dataset(self, batch_size: int, epoch: int = 0, *, with_mask: bool = False) -> Any:
        """A ``tf.data.Dataset`` of ``(features, y[, w])`` batches (TensorFlow imported lazily)."""
        return adapters.tf_dataset(self, batch_size, epoch, with_mask=with_mask)

    def to_torch(self, batch_size: int, epoch: int = 0, *, with_mask: bool = False) -> Any:
        """A ``torch.utils.data.IterableDataset`` of batches (PyTorch imported lazily)."""
        return adapters.torch_dataset(self, batch_size, epoch, with_mask=with_mask)

    def __repr__(self) -> str:
        shard = f", shard={self.shards}" if self.shards else ""
        return (
            f"ChunkStream({len(self.files)} files, chunk_size={self.chunk_size}, "
            f"split={self.split!r}{shard})"
        )


def _merge_clusters(bounds: np.ndarray, target: int) -> np.ndarray:
    """Group consecutive basket clusters into blocks of at least ``target`` entries."""
    bounds = np.asarray(bounds, dtype=np.int64)
    if len(bounds) < 2:
        return np.array([0, 0], dtype=np.int64)
    kept = [int(bounds[0])]
    for edge in bounds[1:-1]:
        if edge - kept[-1] >= target:
            kept.append(int(edge))
    kept.append(int(bounds[-1]))
    return np.asarray(kept, dtype=np.int64)


def _shard_range(start: int, stop: int, shards: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The part of ``[start, stop)`` that a (nested) shard takes: equal contiguous parts."""
    for index, count in shards:
        length = stop - start
        start, stop = start + length * index // count, start + length * (index + 1) // count
    return start, stop


def _prefetched(generator: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``generator`` in a background thread, ``depth`` chunks ahead of the consumer."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in generator:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("done", None))
        except BaseException as err:
            slots.put(("error", err))
        finally:
            generator.close()

    worker = threading.Thread(target=produce, name="chunkstream-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
