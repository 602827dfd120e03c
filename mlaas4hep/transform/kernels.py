"""Compiled kernels of the per-event data path (numba).

The Vectorizer writes every real value of a chunk exactly once into the output matrix,
walking the events in blocks so that the rows being written stay in cache while every
branch of the block is copied in. With ``pad_rows`` the kernel lays down the padding
itself, block by block, into rows it is about to fill: the output then crosses the
memory bus once (written back from cache) instead of three times (a ``fill`` streamed
to memory, read back for the values, written again).
Kernels are specialised per input dtype on first use and cached
on disk, so a worker pays the compilation once.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)

#: How non-finite input values are treated (codes shared with the Vectorizer).
NONFINITE_MASK = 0  # left as padding in X, False in the mask
NONFINITE_KEEP = 1  # passed through (normalised NaN/inf)
NONFINITE_ZERO = 2  # replaced by 0 before normalisation, mask True

#: Columns of the per-branch parameter table given to :func:`fill_rows`: where the
#: branch goes, the range finite values are clipped to before normalisation (low, high),
#: the bound of the normalised value (|x| <= bound; infinities clip nothing), which of
#: the shared offsets arrays the branch uses and the offset its content starts at.
(
    P_COLUMN, P_LENGTH, P_SHIFT, P_INV_SCALE, P_JAGGED, P_LOW, P_HIGH, P_BOUND,
    P_OFFSETS, P_BASE,
) = range(10)  # fmt: skip
N_PARAMS = 10
ROW_BLOCK = 512  # rows of the paper layout (3 kB each) that stay in L2/L3 cache


@_jit
def _fill_branch(X, M, rows, lo, hi, content, offsets, params, mode, clipped, bad, b):
    # Twelve parameters: a compiled kernel takes flat arrays and scalars, no objects.
    col = np.int64(params[P_COLUMN])
    length = np.int64(params[P_LENGTH])
    shift = params[P_SHIFT]
    inv = params[P_INV_SCALE]
    jagged = params[P_JAGGED] > 0.5
    low = params[P_LOW]
    high = params[P_HIGH]
    bound = params[P_BOUND]
    base = np.int64(params[P_BASE])
    for i in range(lo, hi):
        e = rows[i]
        if e < 0:
            continue
        if jagged:
            start = offsets[i] - base
            count = offsets[i + 1] - offsets[i]
            if count > length:
                clipped[b] += count - length
                count = length
        else:
            start = i
            count = 1
        for j in range(count):
            v = np.float64(content[start + j])
            finite = np.isfinite(v)
            if not finite:
                bad[b] += 1
                if mode == NONFINITE_MASK:
                    continue
                if mode == NONFINITE_ZERO:
                    v = 0.0
                    finite = True
            if finite:  # a kept NaN/inf passes unclipped
                v = min(max(v, low), high)
                X[e, col + j] = min(max((v - shift) * inv, -bound), bound)
            else:
                X[e, col + j] = (v - shift) * inv
            M[e, col + j] = True


@_jit
def fill_rows(
    X, M, rows, mode, pad_rows, pad, offsets, offset_starts,
    content_f32, content_starts_f32, params_f32,
    content_f64, content_starts_f64, params_f64,
):  # fmt: skip
    """Write the real values of every branch into ``X``/``M`` (holding padding already,
    unless ``pad_rows``).

    Event ``i`` goes to row ``rows[i]``; a negative row drops it (a cut, another split).
    With ``pad_rows`` every row written is first set to padding (``X = pad``, mask
    False), so ``X``/``M`` may come uninitialised when every row is written once.
    The distinct offsets arrays of the jagged branches come end to end in ``offsets``
    (array ``k`` is ``offsets[offset_starts[k]:offset_starts[k + 1]]``): the branches of
    one collection share theirs. Branches come in two groups (float32 content, and
    everything else as float64), each as one content array holding every branch end to
    end, with where each branch starts in it, and a row of parameters per branch (its
    offsets array, and the offset its content starts at). Returns per-branch counts of
    clipped values and of non-finite values met.
    """
    n32 = len(content_starts_f32) - 1
    n64 = len(content_starts_f64) - 1
    clipped = np.zeros(n32 + n64, dtype=np.int64)
    bad = np.zeros(n32 + n64, dtype=np.int64)
    n = rows.shape[0]
    width = X.shape[1]
    for lo in range(0, n, ROW_BLOCK):
        hi = min(lo + ROW_BLOCK, n)
        if pad_rows:
            for i in range(lo, hi):
                e = rows[i]
                if e >= 0:
                    for c in range(width):
                        X[e, c] = pad
                        M[e, c] = False
        for b in range(n32):
            k = np.int64(params_f32[b, P_OFFSETS])
            _fill_branch(
                X, M, rows, lo, hi,
                content_f32[content_starts_f32[b] : content_starts_f32[b + 1]],
                offsets[offset_starts[k] : offset_starts[k + 1]],
                params_f32[b], mode, clipped, bad, b,
            )  # fmt: skip
        for b in range(n64):
            k = np.int64(params_f64[b, P_OFFSETS])
            _fill_branch(
                X, M, rows, lo, hi,
                content_f64[content_starts_f64[b] : content_starts_f64[b + 1]],
                offsets[offset_starts[k] : offset_starts[k + 1]],
                params_f64[b], mode, clipped, bad, n32 + b,
            )  # fmt: skip
    return clipped, bad
