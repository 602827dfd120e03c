"""Per-branch statistics of a ROOT file, and how two of them merge.

:class:`BranchStats` holds, for one numeric branch, its kind and dtype, min/max and the
moments (count, sum, sum of squares) of its finite values, its NaN/inf counts and, for
jagged branches, the histogram of list lengths (hence the maximum length and any
quantile a padding length may be taken from) and a :class:`~.sketch.QuantileSketch` of
the finite values (for robust normalisation and quantile clipping).
:meth:`BranchStats.merge` is associative and commutative; :func:`array_stats` computes
one from a column in one vectorised pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mlaas4hep.errors import SpecError
from mlaas4hep.io.branches import BranchInfo
from mlaas4hep.io.columns import flat_values, jagged_parts
from mlaas4hep.spec.sketch import QuantileSketch


@dataclass(frozen=True)
class BranchStats:
    """Mergeable statistics of one branch.

    ``count`` is the number of values (events for flat branches, list elements for
    jagged ones); min, max, sum and sum of squares are over the finite values only.
    ``length_hist[k]`` counts the events whose list holds ``k`` values (jagged only).
    ``sketch`` holds the quantiles of the finite values; it is None in specs written
    before sketches existed, and a merge with such a spec has none either (quantiles of
    part of the data would silently mislead).
    """

    kind: str
    dtype: str
    count: int = 0
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    min: float | int | None = None
    max: float | int | None = None
    sum: float = 0.0
    sumsq: float = 0.0
    length_hist: tuple[int, ...] = ()
    dtypes: tuple[str, ...] = ()
    sketch: QuantileSketch | None = None

    @property
    def finite(self) -> int:
        return self.count - self.nan - self.posinf - self.neginf

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def mean(self) -> float:
        return self.sum / self.finite if self.finite else 0.0

    @property
    def std(self) -> float:
        if not self.finite:
            return 0.0
        variance = self.sumsq / self.finite - self.mean**2
        return math.sqrt(max(variance, 0.0))

    @property
    def max_length(self) -> int:
        return max(len(self.length_hist) - 1, 0)

    def length_quantile(self, q: float) -> int:
        """The smallest list length that holds at least a fraction ``q`` of the events."""
        if not self.length_hist:
            return 0
        cumulative = np.cumsum(self.length_hist)
        return int(np.searchsorted(cumulative, q * cumulative[-1] - 1e-9))

    def quantiles(self, qs: Sequence[float]) -> np.ndarray | None:
        """Estimates of the lower quantiles ``qs`` of the finite values, within the
        sketch's relative error and never outside [min, max]; None without a sketch."""
        if self.sketch is None:
            return None
        estimates = self.sketch.quantiles(qs)
        if self.finite:  # the ends are known exactly
            q = np.asarray(qs, dtype=np.float64)
            low, high = float(self.min), float(self.max)
            estimates = np.where(q == 0, low, np.where(q == 1, high, estimates))
            estimates = np.clip(estimates, low, high)
        return estimates

    def merge(self, other: BranchStats) -> BranchStats:
        """Combine the statistics of two disjoint sets of values of the same branch."""
        if self.kind != other.kind:
            raise SpecError(f"cannot merge a {self.kind} branch with a {other.kind} one")
        dtypes = tuple(sorted({*self.all_dtypes, *other.all_dtypes}))
        return BranchStats(
            kind=self.kind,
            dtype=_promote(dtypes),
            count=self.count + other.count,
            nan=self.nan + other.nan,
            posinf=self.posinf + other.posinf,
            neginf=self.neginf + other.neginf,
            min=_pick(min, self.min, other.min),
            max=_pick(max, self.max, other.max),
            sum=self.sum + other.sum,
            sumsq=self.sumsq + other.sumsq,
            length_hist=_add_hist(self.length_hist, other.length_hist),
            dtypes=dtypes if len(dtypes) > 1 else (),
            sketch=(
                self.sketch.merge(other.sketch)
                if self.sketch is not None and other.sketch is not None
                else None
            ),
        )

    @property
    def all_dtypes(self) -> tuple[str, ...]:
        return self.dtypes or (self.dtype,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "dtype": self.dtype,
            "count": self.count,
            "nan": self.nan,
            "posinf": self.posinf,
            "neginf": self.neginf,
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
            "sumsq": self.sumsq,
        }
        if self.kind == "jagged":
            out["max_length"] = self.max_length
            out["length_hist"] = list(self.length_hist)
        if self.dtypes:
            out["dtypes"] = list(self.dtypes)
        if self.sketch is not None:
            out["sketch"] = self.sketch.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> BranchStats:
        try:
            return cls(
                kind=data["kind"],
                dtype=data["dtype"],
                count=int(data["count"]),
                nan=int(data["nan"]),
                posinf=int(data["posinf"]),
                neginf=int(data["neginf"]),
                min=data["min"],
                max=data["max"],
                sum=float(data["sum"]),
                sumsq=float(data["sumsq"]),
                length_hist=tuple(int(v) for v in data.get("length_hist", ())),
                dtypes=tuple(data.get("dtypes", ())),
                sketch=(
                    QuantileSketch.from_dict(data["sketch"], where)
                    if data.get("sketch") is not None
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SpecError(f"malformed branch statistics in {where}: {err!r}") from err


def _pick(fn: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)


def _add_hist(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if len(a) < len(b):
        a, b = b, a
    return tuple(x + (b[i] if i < len(b) else 0) for i, x in enumerate(a))


def _promote(dtypes: Sequence[str]) -> str:
    return np.result_type(*[np.dtype(d) for d in dtypes]).name


def _as_python(value: Any, dtype: np.dtype) -> float | int | bool:
    if dtype.kind == "b":
        return int(bool(value))
    if dtype.kind in "iu":
        return int(value)
    return float(value)


def values_stats(kind: str, dtype: np.dtype, values: np.ndarray) -> BranchStats:
    """Statistics of a flat array of values, vectorised, with a fast path without NaN/inf."""
    count = int(values.size)
    if count == 0:
        return BranchStats(kind=kind, dtype=dtype.name, sketch=QuantileSketch())
    if dtype.kind == "b":
        ones = int(np.count_nonzero(values))
        sketch = QuantileSketch.of_booleans(ones, count)
        return BranchStats(kind, dtype.name, count, 0, 0, 0, int(ones == count), int(ones > 0),
                           float(ones), float(ones), sketch=sketch)  # fmt: skip
    nan, posinf, neginf, low, high, total, squares, finite = _moments(values)
    if finite.size == 0:
        return BranchStats(kind, dtype.name, count, nan, posinf, neginf, sketch=QuantileSketch())
    return BranchStats(
        kind=kind,
        dtype=dtype.name,
        count=count,
        nan=int(nan),
        posinf=int(posinf),
        neginf=int(neginf),
        min=_as_python(low, dtype),
        max=_as_python(high, dtype),
        sum=float(total),
        sumsq=float(squares),
        sketch=QuantileSketch.of(finite, low, high),
    )


def array_stats(info: BranchInfo, array: Any) -> BranchStats:
    """Statistics of one chunk of a branch (an awkward or numpy array)."""
    dtype = np.dtype(info.dtype)
    if info.kind == "flat":
        return values_stats("flat", dtype, flat_values(array))
    offsets, content = jagged_parts(array)
    stats = values_stats("jagged", dtype, content[offsets[0] : offsets[-1]])
    lengths = np.diff(offsets)
    hist = np.bincount(lengths) if lengths.size else np.zeros(1, dtype=np.int64)
    return replace(stats, length_hist=tuple(hist.tolist()))


def _moments(values: np.ndarray) -> tuple[int, int, int, Any, Any, float, float, np.ndarray]:
    """NaN/+inf/-inf counts, then min, max, sum, sum of squares and the finite values.

    Plain numpy keeps the spec pass free of compiled code (lean serverless package, no
    per-process JIT load); it runs at the speed of the decompression it follows. The sum
    of squares uses einsum, not dot: BLAS would start threads of its own and oversubscribe
    the cores that ``--workers`` processes already use.
    """
    wide = values.astype(np.float64, copy=False)
    total = float(np.sum(wide))
    if math.isfinite(total):  # the common case: no NaN/inf, no mask needed
        return (
            0,
            0,
            0,
            values.min(),
            values.max(),
            total,
            float(np.einsum("i,i", wide, wide)),
            values,
        )
    finite = np.isfinite(wide)
    kept = wide[finite]
    nan = int(np.count_nonzero(np.isnan(wide)))
    posinf = int(np.count_nonzero(wide == np.inf))
    neginf = int(np.count_nonzero(wide == -np.inf))
    if kept.size == 0:
        return nan, posinf, neginf, None, None, 0.0, 0.0, kept
    return (
        nan,
        posinf,
        neginf,
        kept.min(),
        kept.max(),
        float(kept.sum()),
        float(np.einsum("i,i", kept, kept)),
        values[finite],
    )


def empty_stats(info: BranchInfo) -> BranchStats:
    return BranchStats(kind=info.kind, dtype=info.dtype, sketch=QuantileSketch())
