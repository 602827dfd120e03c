"""The Vectorizer's branches as :func:`~mlaas4hep.transform.kernels.fill_rows` takes them.

Per dtype group (float32 content, and everything else as float64), every branch's
content joined end to end with where each starts, and a parameter row per branch; the
distinct offsets arrays of the jagged branches joined once for both groups: flat arrays
and scalars, which a compiled kernel takes without objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlaas4hep.io.columns import DistinctOffsets
from mlaas4hep.transform import kernels

#: Offsets array 0 is empty: what flat branches point at (they read no offsets).
_NONE = np.zeros(0, dtype=np.int64)


class KernelInputs:
    """Branches sorted into the kernel's two groups (float32, and float64 for the rest).

    A block is the Vectorizer's ``FeatureBlock`` (its column, length, kind, shift, scale,
    low, high, bound), taken as it is: this module sits below the Vectorizer.

    The branches of one collection (``Jet_pt``, ``Jet_eta``… counted by ``nJet``) hold
    equal offsets: each distinct array is joined once (6 instead of 52 in the paper
    layout, 37 MB less to copy per 100k events) and the branches point at it.
    """

    def __init__(self) -> None:
        self.groups: dict[str, tuple[list[np.ndarray], list[list[float]]]] = {
            "f32": ([], []),
            "f64": ([], []),
        }
        self.blocks: dict[str, list[Any]] = {"f32": [], "f64": []}
        self.offsets = DistinctOffsets()
        self.offsets.index(_NONE)  # index 0

    def add(self, block: Any, content: np.ndarray, offsets: np.ndarray | None) -> None:
        """A branch: its content from its first value on, and (jagged) its offsets,
        which may start past 0 (a slice of a larger read)."""
        key = "f32" if content.dtype == np.float32 else "f64"
        contents, params = self.groups[key]
        contents.append(content)  # joined (and cast) once, in arguments()
        jagged = block.kind == "jagged"
        index, base = 0, 0
        if jagged:
            assert offsets is not None
            index, base = self.offsets.index(offsets), int(offsets[0])
        params.append(
            [block.column, block.length, block.shift, 1.0 / block.scale, float(jagged),
             block.low, block.high, block.bound, index, base]
        )  # fmt: skip
        self.blocks[key].append(block)

    @property
    def order(self) -> list[Any]:
        return self.blocks["f32"] + self.blocks["f64"]

    def arguments(self) -> list[Any]:
        """The distinct offsets in one array and where each starts; then per dtype
        group every branch's content in one array, their start positions, and the
        parameter table.

        Flat arrays, not numba typed lists: a typed list's own methods are compiled
        anew in every process (seconds before a worker's first batch), and joining the
        contents is one memcpy, small beside the kernel's scattered writes.
        """
        out: list[Any] = [*joined(self.offsets.arrays, np.int64)]
        for key, dtype in (("f32", np.float32), ("f64", np.float64)):
            contents, params = self.groups[key]
            out += [
                *joined(contents, dtype),
                np.asarray(params, dtype=np.float64).reshape(-1, kernels.N_PARAMS),
            ]
        return out


def joined(arrays: list[np.ndarray], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """``arrays`` end to end in one contiguous array of ``dtype``, and where each starts
    (``len(arrays) + 1`` positions: array ``b`` is ``joined[starts[b]:starts[b + 1]]``)."""
    starts = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=starts[1:])
    if not arrays:
        return np.zeros(0, dtype=dtype), starts
    return np.concatenate(arrays, dtype=dtype, casting="unsafe"), starts


def warm_up() -> None:
    """Call the kernel once on no events, with the types a chunk gives it: a fresh
    process pays numba's first use (its start-up and loading the compiled kernel from
    the cache) here, ahead of its first chunk (a training worker does while it starts)."""
    X, mask = np.zeros((1, 1), dtype=np.float32), np.zeros((1, 1), dtype=bool)
    rows = np.zeros(0, dtype=np.int64)
    kernels.fill_rows(X, mask, rows, 0, True, np.float32(0), *KernelInputs().arguments())
