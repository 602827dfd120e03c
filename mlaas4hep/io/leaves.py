"""How a numeric leaf that is more than one value or one list per event is exposed.

The Vectorizer knows two kinds of branch, ``flat`` (one value per event) and ``jagged``
(one list per event). So that every numeric leaf of a file can still become a feature,
both readers (:mod:`.ttree`, :mod:`.rntuple`) expand what is more than that at read
time, by the rules of this module, and return ordinary flat/jagged columns under the
expanded names; specs, streams, the Vectorizer and the service see only those:

* a member of a record, a split object or a collection of structs is named by its
  member path joined with ``_`` (:func:`member_name`: ``Jet.pt`` → ``Jet_pt``);
* a fixed-size array of shape ``(k,)`` is ``k`` columns ``name_0`` … ``name_{k-1}``
  (:func:`element_names`), flat, or jagged where the array sits inside a collection
  (one jagged column per inner index); a multi-dimensional one is flattened in C order,
  ``name_i_j`` for shape ``(n, m)``;
* :func:`take_element` reads one of those columns out of the array uproot returns, as
  contiguous numpy data under the original list offsets.

``_`` rather than ``name[0]``: the Vectorizer already names the padded slots of a jagged
branch ``Jet_pt[0]``, and ``[`` is a glob character in selections.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np


@dataclass(frozen=True)
class Leaf:
    """Where an exposed column comes from: ``source`` (the name the reader asks uproot
    for), ``index`` (into the fixed-size array each value is, ``()`` for a plain value)
    and ``counts`` (the column is the number of entries of ``source``'s lists)."""

    source: str
    index: tuple[int, ...] = ()
    counts: bool = False


def member_name(path: Sequence[str]) -> str:
    """The column name of a member at ``path`` (record fields from the top): joined with
    ``_``, empty parts (ROOT's trailing ``.`` on a split object's branch) dropped."""
    parts = [part for piece in path for part in piece.split(".") if part]
    return "_".join(parts)


def element_names(name: str, shape: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """``(column name, index)`` for every element of a fixed-size array of ``shape``, in
    C order: ``x_0``, ``x_1`` … for ``(k,)``, ``x_0_0``, ``x_0_1`` … for ``(n, m)``;
    a plain value (shape ``()``) is the one element ``(name, ())``."""
    return [
        ("_".join([name, *map(str, index)]), index)
        for index in itertools.product(*(range(int(size)) for size in shape))
    ]


def take_element(array: ak.Array, index: tuple[int, ...], *, jagged: bool) -> ak.Array:
    """Element ``index`` of the fixed-size array that each value of ``array`` is, for a
    flat column (``n * k * T``) or a ``jagged`` one (``n * var * k * T``); a plain
    ``index=()`` gives ``array`` back. Either way without awkward's parameters (uproot
    marks a ``std::set`` as one), so that every column is plain lists of numbers.
    Vectorised: one strided copy of the values."""
    array = ak.without_parameters(array)
    if not index:
        return array
    layout = ak.to_layout(array)
    if jagged:
        if isinstance(layout, ak.contents.ListArray):
            layout = layout.to_ListOffsetArray64(True)
        inner = take_element(ak.Array(layout.content), index, jagged=False)
        return ak.Array(ak.contents.ListOffsetArray(layout.offsets, ak.to_layout(inner)))
    values = np.asarray(ak.to_numpy(ak.Array(layout)))
    return ak.Array(np.ascontiguousarray(values[(slice(None), *index)]))


def list_counts(array: ak.Array, dtype: np.dtype) -> ak.Array:
    """The number of entries of each event's list in ``array``, as ``dtype``."""
    return ak.values_astype(ak.num(array, axis=1), dtype)
