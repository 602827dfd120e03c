"""Compiled kernels of the per-event data path (numba).

The Vectorizer writes every real value of a chunk exactly once into the output matrix
(padding is laid down beforehand by one ``fill``), walking the events in small blocks so
that the rows being written stay in cache while every branch of the block is copied in.
The spec pass gets min, max, sum, sum of squares and NaN/inf counts of a branch in one
pass instead of five. Kernels are specialised per input dtype on first use and cached
on disk, so a worker pays the compilation once.

Without numba (the lean serverless package), the spec kernels fall back to vectorised
numpy; the Vectorizer needs numba.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised in the Lambda package only
    numba = None


def _jit(function):  # type: ignore[no-untyped-def]
    if numba is None:
        return _missing(function.__name__)
    return numba.njit(cache=True, nogil=True)(function)


def _missing(name: str):  # type: ignore[no-untyped-def]
    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ImportError(f"{name} needs numba: pip install 'numba>=0.60,<1'")

    return fail

#: How non-finite input values are treated (codes shared with the Vectorizer).
NONFINITE_MASK = 0  # left as padding in X, False in the mask
NONFINITE_KEEP = 1  # passed through (normalised NaN/inf)
NONFINITE_ZERO = 2  # replaced by 0 before normalisation, mask True

#: Columns of the per-branch parameter table given to :func:`fill_rows`.
P_COLUMN, P_LENGTH, P_SHIFT, P_INV_SCALE, P_JAGGED = range(5)
ROW_BLOCK = 64


@_jit
def _fill_branch(X, M, rows, lo, hi, content, offsets, params, mode, clipped, bad, b):
    col = np.int64(params[P_COLUMN])
    length = np.int64(params[P_LENGTH])
    shift = params[P_SHIFT]
    inv = params[P_INV_SCALE]
    jagged = params[P_JAGGED] > 0.5
    for i in range(lo, hi):
        e = rows[i]
        if e < 0:
            continue
        if jagged:
            start = offsets[i]
            count = offsets[i + 1] - start
            if count > length:
                clipped[b] += count - length
                count = length
        else:
            start = i
            count = 1
        for j in range(count):
            v = np.float64(content[start + j])
            if not np.isfinite(v):
                bad[b] += 1
                if mode == NONFINITE_MASK:
                    continue
                if mode == NONFINITE_ZERO:
                    v = 0.0
            X[e, col + j] = (v - shift) * inv
            M[e, col + j] = True


@_jit
def fill_rows(
    X, M, rows, mode, contents_f32, offsets_f32, params_f32, contents_f64, offsets_f64, params_f64
):
    """Write the real values of every branch into ``X``/``M`` (already holding padding).

    Event ``i`` goes to row ``rows[i]``; a negative row drops it (a cut, another split).
    Branches come in two typed lists (float32 content, and everything else as float64)
    with their offsets (unused for flat branches) and a row of parameters each. Returns
    per-branch counts of clipped values and of non-finite values met.
    """
    n32 = len(contents_f32)
    n64 = len(contents_f64)
    clipped = np.zeros(n32 + n64, dtype=np.int64)
    bad = np.zeros(n32 + n64, dtype=np.int64)
    n = rows.shape[0]
    for lo in range(0, n, ROW_BLOCK):
        hi = min(lo + ROW_BLOCK, n)
        for b in range(n32):
            _fill_branch(
                X,
                M,
                rows,
                lo,
                hi,
                contents_f32[b],
                offsets_f32[b],
                params_f32[b],
                mode,
                clipped,
                bad,
                b,
            )
        for b in range(n64):
            _fill_branch(
                X,
                M,
                rows,
                lo,
                hi,
                contents_f64[b],
                offsets_f64[b],
                params_f64[b],
                mode,
                clipped,
                bad,
                n32 + b,
            )
    return clipped, bad


def moments_numpy(values):
    """The same as :func:`moments`, in numpy (several passes)."""
    wide = values.astype(np.float64, copy=False)
    finite = np.isfinite(wide)
    kept = wide[finite] if not finite.all() else wide
    nan = int(np.count_nonzero(np.isnan(wide)))
    posinf = int(np.count_nonzero(wide == np.inf))
    neginf = int(np.count_nonzero(wide == -np.inf))
    low = kept.min() if kept.size else np.inf
    high = kept.max() if kept.size else -np.inf
    return nan, posinf, neginf, low, high, float(kept.sum()), float(np.dot(kept, kept)), kept.size


@_jit
def moments(values):
    """``(nan, posinf, neginf, min, max, sum, sumsq, finite)`` of the values, in one pass."""
    nan = 0
    posinf = 0
    neginf = 0
    finite = 0
    low = np.inf
    high = -np.inf
    total = 0.0
    squares = 0.0
    for k in range(values.shape[0]):
        v = np.float64(values[k])
        if np.isfinite(v):
            finite += 1
            total += v
            squares += v * v
            low = min(low, v)
            high = max(high, v)
        elif np.isnan(v):
            nan += 1
        elif v > 0:
            posinf += 1
        else:
            neginf += 1
    return nan, posinf, neginf, low, high, total, squares, finite


def length_histogram_numpy(offsets):
    """The same as :func:`length_histogram`, in numpy."""
    lengths = np.diff(offsets)
    return np.bincount(lengths) if lengths.size else np.zeros(1, dtype=np.int64)


@_jit
def length_histogram(offsets):
    """Counts of events per list length (index = length), from a jagged array's offsets."""
    longest = 0
    for i in range(offsets.shape[0] - 1):
        longest = max(longest, offsets[i + 1] - offsets[i])
    hist = np.zeros(longest + 1, dtype=np.int64)
    for i in range(offsets.shape[0] - 1):
        hist[offsets[i + 1] - offsets[i]] += 1
    return hist


if numba is None:  # pragma: no cover - the lean serverless package
    moments = moments_numpy
    length_histogram = length_histogram_numpy
