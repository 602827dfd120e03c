"""A mergeable, deterministic quantile sketch of a branch's values (a DDSketch).

Robust normalisation (median, 16th/84th percentiles) and quantile clipping need the
quantiles of every branch over the whole dataset, but specs are computed per file and
merged in any order. :class:`QuantileSketch` is a DDSketch (Masson, Rim, Lee, VLDB 2019):
values are counted in logarithmic buckets, separately for positive values, negative
values and zeros. Two sketches merge by adding their bucket counts, so the merge is
exact: associative, commutative, and the sketch of a set of values does not depend on
how it was split into chunks or files (no randomness, unlike KLL; no order dependence,
unlike t-digest). A file's spec therefore has one sketch, bit for bit, however it was
read.

Buckets. A magnitude's bucket is its binary exponent and the top six bits of its
mantissa: the top 14 bits of its float32 pattern, whatever the dtype (a float64 gives
the same key as its float32 truncation, and keys go on past float32's range). That is a
logarithmic bucketing with 64 buckets per octave, each spanning a factor of at most
1 + 1/64, found with one shift per value and no transcendental function: the sketch
costs a small fraction of the spec pass, in plain numpy like the rest of it.

Error. A quantile is the sketch's estimate of the *lower* order statistic
(``numpy.quantile(values, q, method="lower")``): the value ``x`` of that rank is reported
as its bucket's ``2 lo hi / (lo + hi)``, within a relative error of
:data:`RELATIVE_ACCURACY` = 1/129 (0.78 %): ``|estimate - x| <= |x| / 129``. Two limits
on this: magnitudes below float32's smallest normal (1.2e-38) count as zero, and each
sign keeps at most :data:`MAX_BINS` buckets, the lowest magnitudes being folded into
one bucket when a sign's values span more than 32 octaves (a ratio of 4.3e9 between
its largest and smallest magnitude); values in that bucket are reported as its value,
so their error is bounded by the bucket's magnitude, not by 0.78 % of theirs.

Size. At most ``2 * MAX_BINS`` bucket counts (4096) plus the zero count, however many
values were seen; pT-like values from 1 to 10^4 use about 850, a flag or a counter a few.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlaas4hep.errors import SpecError

#: Relative accuracy of every quantile (see the module docstring for the two exceptions).
RELATIVE_ACCURACY = 1 / 129
#: The most buckets kept per sign: the bound on a sketch's size.
MAX_BINS = 2048

_MANTISSA_BITS = 6  # buckets per octave: 2**6
_ZERO_KEYS = 1 << _MANTISSA_BITS  # keys below this (float32 exponent 0) count as zero
_F32_SHIFT = 23 - _MANTISSA_BITS
_SIGN_KEY = 1 << (31 - _F32_SHIFT)  # the sign bit of a float32 pattern, shifted like keys
_F64_SHIFT = 52 - _MANTISSA_BITS
_F64_REBIAS = (1023 - 127) << _MANTISSA_BITS  # float64 exponent bias → float32's
_MAGNITUDE = np.int64(0x7FFFFFFFFFFFFFFF)
_EMPTY = np.zeros(0, dtype=np.int64)
_DIRECT = 2 * _SIGN_KEY
_FLOAT32_EXACT = 1 << 24  # every integer up to this magnitude is exact in float32


class QuantileSketch:
    """Counts of values per logarithmic bucket, for positive and negative values, and zeros.

    Immutable: ``merge`` returns a new sketch. Equality is equality of the counts.
    """

    __slots__ = ("_neg", "_neg_offset", "_pos", "_pos_offset", "zero")

    def __init__(
        self,
        zero: int = 0,
        positive: tuple[int, np.ndarray] = (0, _EMPTY),
        negative: tuple[int, np.ndarray] = (0, _EMPTY),
    ) -> None:
        self.zero = int(zero)
        self._pos_offset, self._pos = _normalise(*positive) if len(positive[1]) else (0, _EMPTY)
        self._neg_offset, self._neg = _normalise(*negative) if len(negative[1]) else (0, _EMPTY)

    @property
    def count(self) -> int:
        """How many values the sketch holds."""
        return self.zero + int(self._pos.sum()) + int(self._neg.sum())

    @property
    def n_buckets(self) -> tuple[int, int]:
        """Buckets kept for the positive and the negative values (each <= MAX_BINS)."""
        return len(self._pos), len(self._neg)

    @property
    def empty(self) -> bool:
        return not (self.zero or len(self._pos) or len(self._neg))

    @classmethod
    def of(
        cls, values: np.ndarray, low: float | None = None, high: float | None = None
    ) -> QuantileSketch:
        """The sketch of an array of finite values (any numeric dtype), vectorised.

        ``low``/``high`` are the values' min and max when the caller has them already
        (the spec pass does): they size the histogram without another pass.
        """
        values = np.asarray(values)
        if values.size == 0:
            return cls()
        if low is None or high is None:
            low, high = values.min(), values.max()
        if values.dtype == np.float32 or _exact_in_float32(values, low, high):
            bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
            keys = bits >> np.uint32(_F32_SHIFT)  # the sign lands on _SIGN_KEY
            if keys.size >= _DIRECT:
                # Many values: one histogram over every float32 key, no other pass (it
                # is smaller than the copy bincount makes of its input anyway).
                counts = np.bincount(keys)
                return cls._from_counts(0, counts[:_SIGN_KEY], 0, counts[_SIGN_KEY:])
            sign = np.uint32(_SIGN_KEY.bit_length() - 1)
            magnitude = np.uint32(_SIGN_KEY - 1)
        else:
            bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
            keys = ((bits & _MAGNITUDE) >> _F64_SHIFT) - _F64_REBIAS
            np.maximum(keys, 0, out=keys)  # below float32's range: zero
            if np.signbit(low):
                keys |= (bits < 0).astype(np.int64) << 62
            sign, magnitude = np.int64(62), np.int64((1 << 62) - 1)
        if not np.signbit(low):
            # One sign, the common case: a histogram from the lowest key, one pass.
            first = _key(float(low))
            return cls._from_counts(first, np.bincount(keys - keys.dtype.type(first)))
        # Both signs: interleave them (key * 2 + sign) so that the histogram spans the
        # magnitudes, not the gap between positive and negative keys.
        both = ((keys & magnitude) << keys.dtype.type(1)) | (keys >> sign)
        first = int(both.min()) & ~1
        counts = np.bincount(both - both.dtype.type(first))
        if len(counts) % 2:
            counts = np.append(counts, 0)
        return cls._from_counts(first // 2, counts[0::2], first // 2, counts[1::2])

    @classmethod
    def of_booleans(cls, ones: int, count: int) -> QuantileSketch:
        """The sketch of ``count`` booleans of which ``ones`` are True (as 0 and 1)."""
        return cls(count - ones, (_key(1.0), np.array([ones], dtype=np.int64)))

    @classmethod
    def _from_counts(
        cls,
        first: int,
        positive: np.ndarray,
        negative_first: int = 0,
        negative: np.ndarray = _EMPTY,
    ) -> QuantileSketch:
        """A sketch from dense counts per key, per sign, starting at keys ``first``."""
        zero = 0
        stores = []
        for start, counts in ((first, positive), (negative_first, negative)):
            below = min(max(_ZERO_KEYS - start, 0), len(counts))
            zero += int(counts[:below].sum())
            stores.append((start + below, counts[below:]))
        return cls(zero, stores[0], stores[1])

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """The sketch of the union of both sets of values (exact: counts are added)."""
        if other.empty:
            return self
        if self.empty:
            return other
        return QuantileSketch(
            self.zero + other.zero,
            _add(self._pos_offset, self._pos, other._pos_offset, other._pos),
            _add(self._neg_offset, self._neg, other._neg_offset, other._neg),
        )

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        """Estimates of the lower quantiles ``qs`` (in [0, 1]); NaN for an empty sketch."""
        q = np.asarray(qs, dtype=np.float64)
        if np.any((q < 0) | (q > 1)):
            raise ValueError(f"quantiles must lie in [0, 1], not {qs}")
        n = self.count
        if n == 0:
            return np.full(q.shape, np.nan)
        # Every bucket in ascending order of value: negatives from the largest magnitude
        # down, then the zeros, then positives.
        neg_keys = self._neg_offset + np.arange(len(self._neg) - 1, -1, -1)
        pos_keys = self._pos_offset + np.arange(len(self._pos))
        counts = np.concatenate([self._neg[::-1], [self.zero], self._pos])
        values = np.concatenate([-_bucket_value(neg_keys), [0.0], _bucket_value(pos_keys)])
        rank = np.floor(q * (n - 1))
        index = np.searchsorted(np.cumsum(counts), rank, side="right")
        return values[index]

    def quantile(self, q: float) -> float:
        """The estimate of one lower quantile (see :meth:`quantiles`)."""
        return float(self.quantiles([q])[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return (
            self.zero == other.zero
            and self._pos_offset == other._pos_offset
            and self._neg_offset == other._neg_offset
            and np.array_equal(self._pos, other._pos)
            and np.array_equal(self._neg, other._neg)
        )

    def __hash__(self) -> int:
        return hash((self.zero, self._pos_offset, self._pos.tobytes(), self._neg_offset))

    def __repr__(self) -> str:
        return f"QuantileSketch({self.count} values, {sum(self.n_buckets)} buckets)"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: the accuracy it was made with, the zero count and, per sign,
        the key of its first bucket and the counts from there, a run of ``k > 1`` empty
        buckets written as ``-k`` (small files fill few buckets, large files most)."""
        return {
            "relative_accuracy": RELATIVE_ACCURACY,
            "zero": self.zero,
            "positive": [self._pos_offset, _encode(self._pos)],
            "negative": [self._neg_offset, _encode(self._neg)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> QuantileSketch:
        try:
            accuracy = float(data["relative_accuracy"])
            if accuracy != RELATIVE_ACCURACY:
                raise SpecError(
                    f"the quantile sketch in {where} has relative accuracy {accuracy}, this "
                    f"release uses {RELATIVE_ACCURACY}: recompute the spec"
                )
            stores = []
            for sign in ("positive", "negative"):
                offset, counts = data[sign]
                array = _decode(counts)
                if len(array) > MAX_BINS:
                    raise ValueError(f"more than {MAX_BINS} {sign} buckets")
                stores.append((int(offset), array))
            return cls(int(data["zero"]), stores[0], stores[1])
        except (KeyError, TypeError, ValueError) as err:
            raise SpecError(f"malformed quantile sketch in {where}: {err!r}") from err


def _exact_in_float32(values: np.ndarray, low: float | None, high: float | None) -> bool:
    if values.dtype.kind not in "iub":
        return False
    if values.itemsize <= 2:
        return True
    if low is None or high is None:
        low, high = values.min(), values.max()
    return int(low) >= -_FLOAT32_EXACT and int(high) <= _FLOAT32_EXACT


def _key(value: float) -> int:
    """The key of one value's magnitude (the same formula as the vectorised one)."""
    bits = int(np.array([abs(value)], dtype=np.float64).view(np.int64)[0])
    return max((bits >> _F64_SHIFT) - _F64_REBIAS, 0)


def _bucket_value(keys: np.ndarray) -> np.ndarray:
    """The value reported for each bucket: the one within the same relative error of
    both of its ends, ``2 lo hi / (lo + hi)`` (written so as not to overflow)."""
    lo = _lower_edge(keys)
    return 2.0 * lo / (1.0 + lo / _lower_edge(keys + 1))


def _lower_edge(keys: np.ndarray) -> np.ndarray:
    """The smallest magnitude in buckets ``keys`` (exponent and top mantissa bits)."""
    keys = np.asarray(keys, dtype=np.int64)
    mantissa = 1.0 + (keys & (_ZERO_KEYS - 1)) / _ZERO_KEYS
    return np.ldexp(mantissa, (keys >> _MANTISSA_BITS) - 127)


def _encode(counts: np.ndarray) -> list[int]:
    """Counts with each run of ``k > 1`` zeros replaced by ``-k`` (see ``to_dict``)."""
    empty = np.concatenate([[False], counts == 0, [False]])
    edges = np.flatnonzero(empty[1:] != empty[:-1])
    out: list[int] = []
    done = 0
    for start, stop in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
        if stop - start > 1:
            out += counts[done:start].tolist()
            out.append(start - stop)
            done = stop
    return out + counts[done:].tolist()


def _decode(encoded: Sequence[int]) -> np.ndarray:
    items = np.asarray(encoded, dtype=np.int64).reshape(-1)
    runs = items < 0
    return np.repeat(np.where(runs, 0, items), np.where(runs, -items, 1))


def _add(a_offset: int, a: np.ndarray, b_offset: int, b: np.ndarray) -> tuple[int, np.ndarray]:
    if not len(b):
        return a_offset, a
    if not len(a):
        return b_offset, b
    low = min(a_offset, b_offset)
    out = np.zeros(max(a_offset + len(a), b_offset + len(b)) - low, dtype=np.int64)
    out[a_offset - low : a_offset - low + len(a)] += a
    out[b_offset - low : b_offset - low + len(b)] += b
    return low, out


def _normalise(offset: int, counts: np.ndarray) -> tuple[int, np.ndarray]:
    """Trim empty buckets at both ends and fold the lowest magnitudes into the lowest of
    the top ``MAX_BINS`` buckets. The result depends only on the union of the values
    (the fold threshold follows the highest key, which a merge can only raise), so
    folding keeps merges exact."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    if used.size == 0:
        return 0, _EMPTY
    first, last = int(used[0]), int(used[-1])
    if last - first >= MAX_BINS:
        folded = last - MAX_BINS + 1
        counts = counts.copy()
        counts[folded] += counts[first:folded].sum()
        first = folded
    kept = counts[first : last + 1]
    kept.flags.writeable = False
    return int(offset) + first, kept
