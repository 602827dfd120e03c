"""The batches a worker trains on, produced ahead in a background thread and timed.

A unit's batches come from the worker's shard of the train ChunkStream: in standard
mode exactly ``steps_per_epoch`` batches of that epoch's shuffle (see
:func:`~mlaas4hep.training.plan.exact_batches`); in per-chunk mode the unit's chunk,
shuffled and cut into batches, ``epochs`` times over. :class:`BatchFeed` makes the
batches of every remaining unit in a background thread, up to ``depth`` batches ahead,
so that reading, decompressing and vectorising the next chunk overlaps with training
steps, validation and checkpoints (NumPy, the decompressors and the frameworks all
release the GIL). It times both sides: ``wait_seconds`` is how long the training loop
was blocked on its next batch (the data-path stall), ``produce_seconds`` how long
making the batches took. With ``depth=0`` batches are made in the training thread and
every second of making them is a second of waiting.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from mlaas4hep.stream.batches import Batch, Chunk
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.training.plan import StepPlan, exact_batches


def batches_per_unit(plan: StepPlan, unit: int) -> int:
    """Batches one worker trains on in ``unit`` (all the epochs of a chunk in per-chunk mode)."""
    if plan.mode == "standard":
        return plan.steps_per_epoch
    return plan.steps_per_chunk[unit] * plan.epochs


def plan_batches(
    stream: ChunkStream, plan: StepPlan, first_unit: int, seed: int
) -> Iterator[tuple[int, Batch]]:
    """``(unit, batch)`` for every unit from ``first_unit`` on, in training order."""
    if plan.mode == "standard":
        for unit in range(first_unit, plan.units):
            for batch in exact_batches(stream, plan.batch_size, unit, plan.steps_per_epoch):
                yield unit, batch
        return
    chunks = stream.chunks(0)  # per-chunk mode reads the chunks of one pass in turn
    try:
        for unit, chunk in enumerate(chunks):
            if unit >= plan.units:
                break
            if unit >= first_unit:  # after a restart the earlier chunks are read, not used
                for batch in _chunk_batches(chunk, plan, plan.steps_per_chunk[unit], seed, unit):
                    yield unit, batch
    finally:
        chunks.close()


def _chunk_batches(
    chunk: Chunk, plan: StepPlan, steps: int, seed: int, unit: int
) -> Iterator[Batch]:
    """``plan.epochs`` shuffled passes of ``steps`` full batches over one chunk."""
    rng = np.random.default_rng([seed, unit])
    size = plan.batch_size
    for _ in range(plan.epochs):
        order = np.resize(rng.permutation(len(chunk)), steps * size)
        for i in range(steps):
            rows = order[i * size : (i + 1) * size]
            yield Batch(
                chunk.X[rows],
                chunk.mask[rows],
                None if chunk.y is None else chunk.y[rows],
                None if chunk.w is None else chunk.w[rows],
            )


class BatchFeed:
    """Batches of ``source`` (``(unit, batch)`` pairs) made up to ``depth`` ahead.

    ``prepare``, when set (also after the feed started), is applied to every batch in
    the thread that makes it: e.g. copying it into page-locked memory for a GPU, so
    that the training thread only starts an asynchronous copy.
    """

    def __init__(
        self,
        source: Iterator[tuple[int, Batch]],
        depth: int = 64,
        prepare: Callable[[Batch], Batch] | None = None,
    ) -> None:
        self.depth = depth
        self.prepare = prepare
        self.wait_seconds = 0.0
        self.produce_seconds = 0.0
        self.batches = 0
        self._source = source
        self._stop = threading.Event()
        self._slots: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._produce, name="batch-feed", daemon=True)
            self._thread.start()

    def take(self, unit: int, count: int) -> Iterator[Batch]:
        """Exactly ``count`` batches of ``unit``; the time blocked on each is added up."""
        for _ in range(count):
            start = time.perf_counter()
            got, batch = self._next()
            self.wait_seconds += time.perf_counter() - start
            if got != unit:
                raise RuntimeError(
                    f"internal error: a batch of unit {got} came while training unit {unit}"
                )
            self.batches += 1
            yield batch

    def _pull(self) -> tuple[int, Batch]:
        """The source's next batch, its making time counted (StopIteration at the end)."""
        start = time.perf_counter()
        unit, batch = next(self._source)
        prepare = self.prepare
        if prepare is not None:
            batch = prepare(batch)
        self.produce_seconds += time.perf_counter() - start
        return unit, batch

    def _next(self) -> tuple[int, Batch]:
        if self._thread is None:
            try:
                return self._pull()
            except StopIteration:
                raise RuntimeError("internal error: the batch feed ran dry") from None
        kind, value = self._slots.get()
        if kind == "item":
            return value  # type: ignore[return-value]
        if kind == "error":
            raise value  # type: ignore[misc]
        raise RuntimeError("internal error: the batch feed ran dry")

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self._pull()
                except StopIteration:
                    self._put(("done", None))
                    return
                self._put(("item", item))
        except BaseException as err:  # handed to the training loop, raised there
            self._put(("error", err))
        finally:
            self._source.close()  # type: ignore[attr-defined]

    def _put(self, item: tuple[str, object]) -> None:
        while not self._stop.is_set():
            try:
                self._slots.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Stop making batches and release the stream the source reads."""
        self._stop.set()
        if self._thread is None:
            self._source.close()  # type: ignore[attr-defined]
            return
        while self._thread.is_alive():
            try:
                self._slots.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)

    def __enter__(self) -> BatchFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
