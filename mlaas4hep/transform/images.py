"""The matrix representation of events (the MLaaS4HEP paper's Fig. 5).

Two jagged branches of one collection, e.g. ``Jet_eta`` and ``Jet_phi``, become an
image per event: a 2-D histogram with configurable bins and ranges, optionally
weighted by a third branch (e.g. ``Jet_pt``). One ``bincount`` over the flat content of
the whole chunk fills every image at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mlaas4hep.errors import BranchError
from mlaas4hep.io.columns import columns_of, jagged_parts


def event_images(
    chunk: Mapping[str, Any],
    x: str,
    y: str,
    *,
    bins: tuple[int, int] = (32, 32),
    ranges: tuple[tuple[float, float], tuple[float, float]] = ((-2.5, 2.5), (-np.pi, np.pi)),
    weight: str | None = None,
) -> np.ndarray:
    """Images ``[n_events, bins_x, bins_y]`` (float32) of the values of ``x`` against ``y``.

    Values outside ``ranges`` are left out; without ``weight`` a pixel counts entries.
    """
    nx, ny = (int(b) for b in bins)
    if nx <= 0 or ny <= 0:
        raise ValueError(f"bins must be positive, not {bins}")
    (x0, x1), (y0, y1) = ranges
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"each range must be (low, high) with high > low, not {ranges}")
    chunk = columns_of(chunk, [n for n in (x, y, weight) if n is not None])
    x_offsets, x_values = jagged_parts(chunk[x])
    y_offsets, y_values = jagged_parts(chunk[y])
    if not np.array_equal(np.diff(x_offsets), np.diff(y_offsets)):
        raise BranchError(f"{x!r} and {y!r} must have the same number of values per event")
    n = len(x_offsets) - 1
    counts = np.diff(x_offsets)
    event = np.repeat(np.arange(n, dtype=np.int64), counts)
    xv = x_values[x_offsets[0] : x_offsets[-1]].astype(np.float64)
    yv = y_values[y_offsets[0] : y_offsets[-1]].astype(np.float64)
    ix = np.floor((xv - x0) / (x1 - x0) * nx).astype(np.int64)
    iy = np.floor((yv - y0) / (y1 - y0) * ny).astype(np.int64)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    pixel = (event * nx + ix) * ny + iy
    weights = None
    if weight is not None:
        w_offsets, w_values = jagged_parts(chunk[weight])
        if not np.array_equal(np.diff(w_offsets), counts):
            raise BranchError(f"{weight!r} must have as many values per event as {x!r}")
        weights = w_values[w_offsets[0] : w_offsets[-1]].astype(np.float64)[inside]
    flat = np.bincount(pixel[inside], weights=weights, minlength=n * nx * ny)
    return flat.astype(np.float32).reshape(n, nx, ny)
