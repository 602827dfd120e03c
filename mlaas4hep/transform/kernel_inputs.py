"""The Vectorizer's branches as :func:`~mlaas4hep.transform.kernels.fill_rows` takes them.

Per dtype group (float32 content, and everything else as float64), every branch's
content and offsets joined end to end with where each starts, and a parameter row per
branch: flat arrays and scalars, which a compiled kernel takes without objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlaas4hep.transform import kernels


class KernelInputs:
    """Branches sorted into the kernel's two groups (float32, and float64 for the rest).

    A block is the Vectorizer's ``FeatureBlock`` (its column, length, kind, shift, scale,
    low, high, bound), taken as it is: this module sits below the Vectorizer.
    """

    def __init__(self) -> None:
        self.groups: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[list[float]]]] = {
            "f32": ([], [], []),
            "f64": ([], [], []),
        }
        self.blocks: dict[str, list[Any]] = {"f32": [], "f64": []}

    def add(self, block: Any, content: np.ndarray, offsets: np.ndarray) -> None:
        key = "f32" if content.dtype == np.float32 else "f64"
        contents, offsets_list, params = self.groups[key]
        contents.append(content)  # joined (and cast) once, in arguments()
        offsets_list.append(offsets)
        jagged = 1.0 if block.kind == "jagged" else 0.0
        params.append(
            [block.column, block.length, block.shift, 1.0 / block.scale, jagged,
             block.low, block.high, block.bound]
        )  # fmt: skip
        self.blocks[key].append(block)

    @property
    def order(self) -> list[Any]:
        return self.blocks["f32"] + self.blocks["f64"]

    def arguments(self) -> list[Any]:
        """Per dtype group: every branch's content in one array, their start positions,
        every offsets array in one, their start positions, and the parameter table.

        Flat arrays, not numba typed lists: a typed list's own methods are compiled
        anew in every process (seconds before a worker's first batch), and joining the
        contents is one memcpy, small beside the kernel's scattered writes.
        """
        out: list[Any] = []
        for key, dtype in (("f32", np.float32), ("f64", np.float64)):
            contents, offsets, params = self.groups[key]
            out += [
                *joined(contents, dtype),
                *joined(offsets, np.int64),
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
