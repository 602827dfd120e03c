"""How many threads decompress a TTree's baskets, and the pool that runs them.

zlib, lz4 and zstd release the GIL, so a process reading one file decompresses on every
core it has: with two cores, uproot's ``decompression_executor`` reads the paper layout
in ~0.55 of the time its single thread takes. Processes that share the machine (the
spec pass's ``--workers``) share the cores too, so each asks for its part of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

#: More threads than this only wait on each other (uproot hands out baskets per branch).
MAX_THREADS = 4


def decompression_threads(requested: int | None = None, processes: int = 1) -> int:
    """``requested`` as it is (at least 1), or this process's share of the CPUs when
    ``processes`` read at once, up to :data:`MAX_THREADS`."""
    if requested is not None:
        return max(1, int(requested))
    return max(1, min(MAX_THREADS, (os.cpu_count() or 1) // max(1, processes)))


@contextmanager
def decompression_pool(
    threads: int, name: str = "decompress"
) -> Iterator[ThreadPoolExecutor | None]:
    """A pool of ``threads`` decompressing threads, or None for one thread (uproot then
    decompresses in the reading thread)."""
    if threads <= 1:
        yield None
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
