"""Columns of a chunk as numpy data: the columnar helpers every transform shares.

A jagged column is two numpy arrays, ``offsets`` (absolute, into ``content``) and
``content`` (the flat values), as awkward keeps it; :func:`jagged_parts` gets them from
whatever layout uproot, Arrow or a JSON request produced, without a copy where the
layout allows, and :class:`JaggedView` slices events with two integer operations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep.errors import BranchError, ColumnError


@dataclass(frozen=True)
class JaggedView:
    """A jagged column as numpy ``offsets`` (absolute, into ``content``) and ``content``.

    Slicing a range of events is two integer operations, where slicing an awkward array
    builds new layout objects: the ChunkStream hands these to the Vectorizer.
    """

    offsets: np.ndarray
    content: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, where: slice) -> JaggedView:
        start, stop, step = where.indices(len(self))
        if step != 1:
            raise ValueError("a JaggedView only takes contiguous slices")
        return JaggedView(self.offsets[start : stop + 1], self.content)

    @classmethod
    def of(cls, array: ak.Array | np.ndarray) -> JaggedView:
        offsets, content = jagged_parts(array)
        return cls(offsets, content)


def numpy_column(array: ak.Array | np.ndarray, kind: str) -> np.ndarray | JaggedView:
    """A column as numpy data: the values of a flat branch, a JaggedView of a jagged one."""
    return flat_values(array) if kind == "flat" else JaggedView.of(array)


class DistinctOffsets:
    """Offsets arrays, each distinct one kept once, by index.

    uproot gives every branch of a collection (``Jet_pt``, ``Jet_eta``… counted by
    ``nJet``) its own copy of the same offsets. Equal means equal values, compared in
    full (or the same memory), never "the same counter branch": a file's own word about
    its counters must not decide what indexes a compiled kernel's reads.
    """

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self._by_ends: dict[tuple[int, int, int], list[int]] = {}

    def index(self, offsets: np.ndarray) -> int:
        """Where an array equal to ``offsets`` is in :attr:`arrays` (added if new)."""
        ends = (len(offsets), int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0, 0)
        candidates = self._by_ends.setdefault(ends, [])
        for index in candidates:
            known = self.arrays[index]
            if _same_memory(known, offsets) or np.array_equal(known, offsets):
                return index
        self.arrays.append(offsets)
        candidates.append(len(self.arrays) - 1)
        return len(self.arrays) - 1


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.strides == b.strides and a.ctypes.data == b.ctypes.data


def share_offsets(columns: dict[str, Any]) -> dict[str, Any]:
    """``columns`` with the JaggedViews of equal offsets holding one offsets array: a
    stream reads a block once and slices it many times, so the values are compared
    here, once per block, and the Vectorizer then knows them by their memory."""
    table = DistinctOffsets()
    out = dict(columns)
    for name, column in columns.items():
        if isinstance(column, JaggedView):
            known = table.arrays[table.index(column.offsets)]
            if known is not column.offsets:
                out[name] = JaggedView(known, column.content)
    return out


def jagged_parts(array: ak.Array | np.ndarray | JaggedView) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, content)`` of a one-level jagged or fixed-size array, as numpy views.

    ``offsets`` has ``len(array) + 1`` entries and may not start at 0 (a sliced array);
    ``content`` is the flat values, indexed by ``offsets``. No copy for the layouts uproot
    produces (ListOffsetArray/RegularArray over a NumpyArray).
    """
    if isinstance(array, JaggedView):
        return array.offsets, array.content
    if isinstance(array, np.ndarray):
        n, length = array.shape[0], array.shape[1]
        return np.arange(n + 1, dtype=np.int64) * length, array.reshape(-1)
    layout = ak.to_layout(array)
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(
        layout.content, ak.contents.NumpyArray
    ):
        return np.asarray(layout.offsets.data, dtype=np.int64), np.asarray(layout.content.data)
    if isinstance(layout, ak.contents.RegularArray) and isinstance(
        layout.content, ak.contents.NumpyArray
    ):
        n = len(layout)
        content = np.asarray(layout.content.data)[: n * layout.size]
        return np.arange(n + 1, dtype=np.int64) * layout.size, content
    if isinstance(layout, ak.contents.NumpyArray) and layout.data.ndim == 2:
        return jagged_parts(np.asarray(layout.data))
    counts = np.asarray(ak.num(array, axis=1), dtype=np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, np.asarray(ak.flatten(array, axis=1))


def flat_values(array: ak.Array | np.ndarray) -> np.ndarray:
    """The numpy values of a flat branch (no copy for uproot's NumpyArray layouts)."""
    if isinstance(array, np.ndarray):
        return array
    return np.asarray(ak.to_numpy(array))


def columns_of(chunk: Mapping[str, Any] | ak.Array, names: Sequence[str]) -> Mapping[str, Any]:
    """The named columns of a chunk (a dict of arrays or an awkward record array)."""
    if isinstance(chunk, ak.Array):
        fields = set(chunk.fields)
        missing = [n for n in names if n not in fields]
        if missing:
            raise BranchError(f"the chunk lacks the branch(es) {', '.join(missing)}")
        return {n: chunk[n] for n in names}
    missing = [n for n in names if n not in chunk]
    if missing:
        raise BranchError(f"the chunk lacks the branch(es) {', '.join(missing)}")
    return chunk


def check_offsets(offsets: np.ndarray, content_size: int, branch: str) -> None:
    """Raise :class:`~mlaas4hep.errors.ColumnError` naming ``branch`` unless ``offsets``
    can index ``content_size`` values: at least one entry, the first ≥ 0, never
    decreasing, the last ≤ ``content_size``. Vectorised: one pass over the offsets.

    Columns are checked once, where they enter (ROOT baskets read by
    :class:`~mlaas4hep.io.tree.RootTree`, Arrow and Parquet bodies): the kernels then
    index the content without a bounds check of their own.
    """
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or len(offsets) == 0:
        raise ColumnError(branch, "its offsets are empty or not one-dimensional")
    first, last = int(offsets[0]), int(offsets[-1])
    if first < 0:
        raise ColumnError(branch, f"its offsets start below zero ({first})")
    if last > content_size:
        raise ColumnError(branch, f"its offsets point past its {content_size} values (to {last})")
    if len(offsets) > 1:
        decreasing = np.flatnonzero(offsets[1:] < offsets[:-1])
        if len(decreasing):
            raise ColumnError(branch, f"its offsets decrease at event {int(decreasing[0])}")


def check_layout(array: ak.Array | np.ndarray, branch: str) -> None:
    """:func:`check_offsets` for every list level of an awkward array (and the starts and
    stops of a ListArray); a flat array passes."""
    if isinstance(array, np.ndarray):
        return
    node = ak.to_layout(array)
    while True:
        if isinstance(node, ak.contents.ListOffsetArray):
            check_offsets(np.asarray(node.offsets.data), len(node.content), branch)
        elif isinstance(node, ak.contents.ListArray):
            starts, stops = np.asarray(node.starts.data), np.asarray(node.stops.data)
            if len(starts) and (
                starts.min() < 0 or np.any(stops < starts) or stops.max() > len(node.content)
            ):
                raise ColumnError(branch, "its list starts and stops do not fit its values")
        elif not isinstance(node, ak.contents.RegularArray):
            return
        node = node.content
