"""Reuse of large output buffers, so that streaming does not pay page faults per chunk.

A vectorised chunk of the paper's layout is ~3 kB per event: 100k events make a 300 MB
output. Freshly allocated memory that large comes from the kernel page by page, and on
virtual machines that first touch costs more than filling the matrix itself. The pool
hands out views of buffers it keeps, and reuses a buffer only once no array refers to
it any more (its reference count says so), so callers keep plain numpy semantics.
"""

from __future__ import annotations

import sys
import threading
from math import prod

import numpy as np

#: Below this size the allocator reuses memory by itself.
MIN_POOLED_BYTES = 4 << 20


class BufferPool:
    """Hands out arrays backed by reusable buffers, holding at most ``max_bytes`` idle."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array, reusing an idle buffer of a fitting size when there is one."""
        dtype = np.dtype(dtype)
        nbytes = prod(shape) * dtype.itemsize
        if nbytes < MIN_POOLED_BYTES:
            return np.empty(shape, dtype=dtype)
        with self._lock:
            buffer = self._idle(nbytes)
            if buffer is None:
                buffer = np.empty(nbytes, dtype=np.uint8)
                self._buffers.append(buffer)
                self._evict()
        return buffer[:nbytes].view(dtype).reshape(shape)

    def _idle(self, nbytes: int) -> np.ndarray | None:
        for buffer in self._buffers:
            # references: the list, this loop variable and getrefcount's argument
            if nbytes <= buffer.nbytes <= 2 * nbytes and sys.getrefcount(buffer) <= 3:
                return buffer
        return None

    def _evict(self) -> None:
        total = sum(b.nbytes for b in self._buffers)
        for buffer in list(self._buffers):
            if total <= self.max_bytes:
                return
            if sys.getrefcount(buffer) <= 3:
                self._buffers.remove(buffer)
                total -= buffer.nbytes


POOL = BufferPool()
