"""The matrix representation of events (the MLaaS4HEP paper's Fig. 5).

Two jagged branches of one collection, e.g. ``Jet_eta`` and ``Jet_phi``, become an
image per event: a 2-D histogram with configurable bins and ranges, optionally
weighted by a third branch (e.g. ``Jet_pt``). One ``bincount`` over the flat content of
the whole chunk fills every image at once.

Bin edges, exactly: bin ``i`` of an axis holds ``low + i * w <= v < low + (i + 1) * w``
(``w`` = the range's width over the bins), except that both ends of the range are
inclusive up to float32 rounding: a ``Jet_phi`` of float32 ``+pi`` (which is a little
above ``math.pi``) lands in the last bin and float32 ``-pi`` in the first. An axis is
*periodic* (by default when its range is 2π wide, i.e. an angle): a value outside the
range is wrapped into it (modulo the width) instead of being left out. Entries with a
NaN or infinite x, y or weight are left out and counted per branch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mlaas4hep.errors import BranchError, ConfigError
from mlaas4hep.io.columns import columns_of, jagged_parts
from mlaas4hep.spec.documents import DatasetSpec

Range = tuple[float, float]


def is_angle(low: float, high: float) -> bool:
    """Whether a range is one turn wide (an angle such as φ): periodic by default."""
    return math.isclose(high - low, 2 * math.pi, rel_tol=1e-6)


def _inclusive_edges(low: float, high: float) -> tuple[float, float]:
    """The range widened to the float32 values nearest outside its ends (see the module
    docstring): a float32 copy of an end falls inside."""
    lo32, hi32 = np.float32(low), np.float32(high)
    lo = float(lo32) if lo32 <= low else float(np.nextafter(lo32, np.float32(-np.inf)))
    hi = float(hi32) if hi32 >= high else float(np.nextafter(hi32, np.float32(np.inf)))
    return min(lo, low), max(hi, high)


@dataclass(frozen=True)
class ImageLayout:
    """An image of ``x`` against ``y`` (optionally weighted) appended to each event's
    features: ``bins[0] * bins[1]`` columns from ``column`` on, pixel ``(i, j)`` at
    ``column + i * bins[1] + j``, each pixel divided by ``scale``."""

    x: str
    y: str
    weight: str | None = None
    bins: tuple[int, int] = (32, 32)
    ranges: tuple[Range, Range] = ((-2.5, 2.5), (-math.pi, math.pi))
    periodic: tuple[bool, bool] = (False, True)
    scale: float = 1.0
    column: int = 0

    def __post_init__(self) -> None:
        bins = tuple(self.bins)
        if (
            len(bins) != 2
            or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bins)
            or min(bins) <= 0
        ):
            raise ConfigError(f"image bins must be two positive integers, not {self.bins!r}")
        try:
            ranges = tuple((float(lo), float(hi)) for lo, hi in self.ranges)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"image range must be two [low, high] pairs, not {self.ranges!r}"
            ) from err
        if len(ranges) != 2 or not all(
            math.isfinite(lo) and math.isfinite(hi) and hi > lo for lo, hi in ranges
        ):
            raise ConfigError(
                f"image range must be two [low, high] pairs with high > low, not {self.ranges!r}"
            )
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"image scale must be a positive number, not {self.scale!r}")
        object.__setattr__(self, "bins", (int(bins[0]), int(bins[1])))
        object.__setattr__(self, "ranges", ranges)
        object.__setattr__(self, "periodic", (bool(self.periodic[0]), bool(self.periodic[1])))

    @property
    def size(self) -> int:
        return self.bins[0] * self.bins[1]

    @property
    def stop(self) -> int:
        return self.column + self.size

    @property
    def branches(self) -> list[str]:
        return [n for n in (self.x, self.y, self.weight) if n is not None]

    def at(self, column: int) -> ImageLayout:
        return replace(self, column=column)

    def feature_names(self) -> list[str]:
        nx, ny = self.bins
        return [f"image[{i},{j}]" for i in range(nx) for j in range(ny)]

    # --- filling --------------------------------------------------------------------
    def pixels(self, columns: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, int]]:
        """Images ``[n_events, bins[0] * bins[1]]`` (float32, divided by ``scale``) and the
        number of entries left out per branch because a value was NaN or infinite."""
        x_offsets, x_values = _jagged(self.x, columns[self.x])
        y_offsets, y_values = _jagged(self.y, columns[self.y])
        counts = np.diff(x_offsets)
        if not np.array_equal(counts, np.diff(y_offsets)):
            raise BranchError(
                f"{self.x!r} and {self.y!r} must have the same number of values per event"
            )
        n = len(counts)
        values = [
            x_values[x_offsets[0] : x_offsets[-1]].astype(np.float64),
            y_values[y_offsets[0] : y_offsets[-1]].astype(np.float64),
        ]
        if self.weight is not None:
            w_offsets, w_values = _jagged(self.weight, columns[self.weight])
            if not np.array_equal(np.diff(w_offsets), counts):
                raise BranchError(
                    f"{self.weight!r} must have as many values per event as {self.x!r}"
                )
            values.append(w_values[w_offsets[0] : w_offsets[-1]].astype(np.float64))
        finite = [np.isfinite(v) for v in values]
        bad = {
            name: int(len(f) - np.count_nonzero(f))
            for name, f in zip(self.branches, finite, strict=True)
        }
        keep = np.logical_and.reduce(finite)
        ix, inside_x = _bin(values[0], self.ranges[0], self.bins[0], self.periodic[0])
        iy, inside_y = _bin(values[1], self.ranges[1], self.bins[1], self.periodic[1])
        keep &= inside_x & inside_y
        event = np.repeat(np.arange(n, dtype=np.int64), counts)
        pixel = (event * self.bins[0] + ix) * self.bins[1] + iy
        weights = values[2][keep] if self.weight is not None else None
        image = np.bincount(pixel[keep], weights=weights, minlength=n * self.size)
        image = image.astype(np.float64, copy=False)  # an empty bincount is int64
        if self.scale != 1.0:
            image /= self.scale
        return image.astype(np.float32).reshape(n, self.size), {k: v for k, v in bad.items() if v}

    # --- persistence ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "y": self.y,
            "weight": self.weight,
            "bins": list(self.bins),
            "range": [list(r) for r in self.ranges],
            "periodic": list(self.periodic),
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], column: int = 0) -> ImageLayout:
        try:
            weight = data.get("weight")
            return cls(
                str(data["x"]),
                str(data["y"]),
                None if weight is None else str(weight),
                tuple(data["bins"]),  # type: ignore[arg-type]
                tuple(tuple(r) for r in data["range"]),  # type: ignore[arg-type]
                tuple(data["periodic"]),  # type: ignore[arg-type]
                float(data["scale"]),
                column,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"malformed image configuration: {err!r}") from err


def layout(
    x: str,
    y: str,
    *,
    weight: str | None = None,
    bins: Sequence[int] = (32, 32),
    ranges: Sequence[Sequence[float]] = ((-2.5, 2.5), (-math.pi, math.pi)),
    periodic: Sequence[bool] | None = None,
    scale: float = 1.0,
) -> ImageLayout:
    """An :class:`ImageLayout`; ``periodic`` None: each axis whose range is 2π wide."""
    pairs = tuple(tuple(r) for r in ranges)
    if periodic is None:
        try:
            periodic = tuple(is_angle(float(lo), float(hi)) for lo, hi in pairs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"image range must be two [low, high] pairs, not {ranges!r}") from err
    if len(periodic) != 2:
        raise ConfigError(f"image periodic must be two booleans (x, y), not {periodic!r}")
    return ImageLayout(x, y, weight, tuple(bins), pairs, tuple(periodic), scale)  # type: ignore[arg-type]


def from_spec(
    spec: DatasetSpec,
    x: str,
    y: str,
    *,
    weight: str | None = None,
    bins: Sequence[int] = (32, 32),
    ranges: Sequence[Sequence[float]] | None = None,
    periodic: Sequence[bool] | None = None,
) -> ImageLayout:
    """The :class:`ImageLayout` a training job uses: ``ranges`` None takes each axis from
    its branch's minimum and maximum in the dataset spec; pixels are divided by the
    largest ``|weight|`` in the spec (counts are not scaled), so they stay of order one
    like the other normalised features."""
    if ranges is None:
        ranges = [_spec_range(spec, name) for name in (x, y)]
    scale = 1.0
    if weight is not None:
        stats = spec.branch(weight)
        if stats.finite:
            scale = max(abs(float(stats.min)), abs(float(stats.max))) or 1.0
    image = layout(x, y, weight=weight, bins=bins, ranges=ranges, periodic=periodic)
    return replace(image, scale=scale)


def _spec_range(spec: DatasetSpec, name: str) -> Range:
    stats = spec.branch(name)
    if not stats.finite:
        raise ConfigError(f"image branch {name!r} holds no finite value: give vectorizer.range")
    low, high = float(stats.min), float(stats.max)
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _bin(
    values: np.ndarray, bounds: Range, n: int, periodic: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The bin index of each value along one axis, and whether it falls in the range."""
    low, high = bounds
    width = high - low
    lo_edge, hi_edge = _inclusive_edges(low, high)
    with np.errstate(invalid="ignore"):
        if periodic:
            outside = (values < lo_edge) | (values > hi_edge)
            values = np.where(outside, low + np.mod(values - low, width), values)
        index = np.floor((values - low) / width * n)
        inside = (values >= lo_edge) & (values <= hi_edge)
    index = np.clip(np.nan_to_num(index, nan=0.0), 0, n - 1).astype(np.int64)
    return index, inside


def _jagged(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        offsets, content = jagged_parts(data)
    except (ValueError, TypeError) as err:
        raise BranchError(f"image branch {name!r} must hold a list of numbers per event") from err
    if content.ndim != 1 or content.dtype.kind not in "biuf":
        raise BranchError(f"image branch {name!r} must hold a list of numbers per event")
    return offsets, content


def event_images(
    chunk: Mapping[str, Any],
    x: str,
    y: str,
    *,
    bins: tuple[int, int] = (32, 32),
    ranges: tuple[Range, Range] = ((-2.5, 2.5), (-math.pi, math.pi)),
    weight: str | None = None,
    periodic: Sequence[bool] | None = None,
) -> np.ndarray:
    """Images ``[n_events, bins_x, bins_y]`` (float32) of the values of ``x`` against ``y``.

    Values outside ``ranges`` are left out on an axis that is not periodic; without
    ``weight`` a pixel counts entries. See the module docstring for the edges.
    """
    try:
        image = layout(x, y, weight=weight, bins=bins, ranges=ranges, periodic=periodic)
    except ConfigError as err:
        raise ValueError(str(err)) from err
    columns = columns_of(chunk, image.branches)
    pixels, _ = image.pixels(columns)
    return pixels.reshape(len(pixels), *image.bins)
