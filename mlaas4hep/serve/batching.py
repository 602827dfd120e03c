"""Adaptive batching for the per-event prediction path.

A model call has a fixed cost (the Vectorizer's kernel set-up, a matrix product) that
dwarfs the cost of one event, so concurrent single-event requests are scored together.
:class:`AdaptiveBatcher` queues each request and, whenever the model is idle, scores
everything that has queued since the last call (up to ``max_events``) in one call. The
batch size therefore follows the load by itself: one request at a time when traffic is
light (no added wait), hundreds under a burst, without a latency timer to tune.

The scoring function gets the items in arrival order and returns one result per item
(an exception instance fails that item's request only). Small batches run inline on
the event loop (no thread hand-off), large ones in a single worker thread so that the
loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class AdaptiveBatcher(Generic[Item, Result]):
    """Scores queued items together: ``await batcher.submit(item, n_events)``."""

    def __init__(
        self,
        score: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        max_events: int = 4096,
        inline_events: int = 2048,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.score = score
        self.max_events = max_events
        self.inline_events = inline_events
        self.on_batch = on_batch
        self._pending: deque[tuple[Item, int, asyncio.Future[Result]]] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def submit(self, item: Item, n_events: int) -> Result:
        """Queue ``item`` (``n_events`` events) and wait for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, n_events, future))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # requests already in flight on the loop join this batch
            items: list[Item] = []
            futures: list[asyncio.Future[Result]] = []
            events = 0
            while self._pending and (not items or events + self._pending[0][1] <= self.max_events):
                item, n, future = self._pending.popleft()
                if future.done():  # the client went away
                    continue
                items.append(item)
                futures.append(future)
                events += n
            if not items:
                continue
            started = time.perf_counter()
            try:
                if events > self.inline_events:
                    results = await asyncio.get_running_loop().run_in_executor(
                        self._thread(), self._score_batch, items
                    )
                else:
                    results = self._score_batch(items)
            except Exception as err:  # not one item's fault: every request gets the error
                for future in futures:
                    if not future.done():
                        future.set_exception(err)
                continue
            for future, result in zip(futures, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):  # this request alone failed
                    future.set_exception(result)
                else:
                    future.set_result(result)
            if self.on_batch is not None:
                self.on_batch(len(items), events, time.perf_counter() - started)

    def _score_batch(self, items: list[Item]) -> list[Any]:
        """The batch's results; if scoring the batch fails, each item is scored alone, so
        that the request that caused it (one NaN under ``nonfinite: raise``, say) fails
        alone and its neighbours get their scores."""
        try:
            return list(self.score(items))
        except Exception:
            if len(items) == 1:
                raise
        results: list[Any] = []
        for item in items:
            try:
                results.extend(self.score([item]))
            except Exception as err:  # this request alone failed
                results.append(err)
        return results

    def _thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlaas4hep-batch")
        return self._executor

    def close(self) -> None:
        """Release the worker thread (pending requests still complete)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def __repr__(self) -> str:
        return f"AdaptiveBatcher(max_events={self.max_events}, pending={len(self._pending)})"


def split(values: Any, sizes: Sequence[int]) -> list[Any]:
    """``values`` cut into consecutive pieces of ``sizes`` (one per batched request):
    along the first axis, so the rows of ``[n, C]`` scores stay whole."""
    out, start = [], 0
    for size in sizes:
        out.append(values[start : start + size])
        start += size
    return out
