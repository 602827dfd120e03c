"""Compiled kernels of the per-event data path (numba).

The Vectorizer writes every value of a chunk exactly once into the output matrix; in
numpy that takes several temporary index arrays per branch, here it is one pass over
the offsets and the content. Each kernel is specialised per input dtype on first use
and cached on disk, so a worker pays the compilation once.
"""

from __future__ import annotations

import numba
import numpy as np

#: How non-finite input values are treated (codes shared with the Vectorizer).
NONFINITE_MASK = 0  # padding value in X, False in the mask
NONFINITE_KEEP = 1  # passed through (normalised NaN/inf)
NONFINITE_ZERO = 2  # replaced by 0 before normalisation, mask True


@numba.njit(cache=True, nogil=True)
def fill_flat(X, M, rows, col, values, shift, inv_scale, pad, mode):
    """Write one flat branch into column ``col``; returns the number of non-finite values.

    Event ``e`` goes to row ``rows[e]`` of ``X``/``M``; a negative row drops the event
    (it failed a cut, or belongs to another split).
    """
    bad = 0
    for i in range(values.shape[0]):
        e = rows[i]
        if e < 0:
            continue
        v = np.float64(values[i])
        if not np.isfinite(v):
            bad += 1
            if mode == NONFINITE_MASK:
                X[e, col] = pad
                M[e, col] = False
                continue
            if mode == NONFINITE_ZERO:
                v = 0.0
        X[e, col] = (v - shift) * inv_scale
        M[e, col] = True
    return bad


@numba.njit(cache=True, nogil=True)
def fill_jagged(X, M, rows, col, length, offsets, content, shift, inv_scale, pad, mode):
    """Write one jagged branch into columns ``[col, col + length)``, padding and clipping.

    Rows as in :func:`fill_flat`. Returns ``(clipped, nonfinite)``: values beyond
    ``length`` dropped, and non-finite values met among those kept.
    """
    clipped = 0
    bad = 0
    for i in range(offsets.shape[0] - 1):
        e = rows[i]
        if e < 0:
            continue
        start = offsets[i]
        count = offsets[i + 1] - start
        if count > length:
            clipped += count - length
            count = length
        for j in range(count):
            v = np.float64(content[start + j])
            if not np.isfinite(v):
                bad += 1
                if mode == NONFINITE_MASK:
                    X[e, col + j] = pad
                    M[e, col + j] = False
                    continue
                if mode == NONFINITE_ZERO:
                    v = 0.0
            X[e, col + j] = (v - shift) * inv_scale
            M[e, col + j] = True
        for j in range(count, length):
            X[e, col + j] = pad
            M[e, col + j] = False
    return clipped, bad
