"""Which branches of a tree can become tensors, and selecting them by name or pattern.

A numeric column is ``flat`` (one value per event) or ``jagged`` (a list per event);
fixed-size arrays and members are expanded into such columns by the rule of
:mod:`~mlaas4hep.io.leaves`. What cannot be a number or a list of numbers (strings,
maps, lists of lists, objects that are not split) is skipped with its type and the
reason, so that ``include: ["*"]`` says what it left out instead of failing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import uproot

from mlaas4hep.errors import BranchError
from mlaas4hep.io import names
from mlaas4hep.io.failures import describe
from mlaas4hep.io.leaves import Leaf, element_names, member_name

Kind = Literal["flat", "jagged"]

#: The dtype of a collection's counter that a reader adds (``nV0s``), as uproot's TTree
#: writer writes counters.
COUNTER_DTYPE = np.dtype(np.int32)


class NonNumericBranchWarning(UserWarning):
    """Branches that cannot become tensors (strings, objects) were skipped."""


@dataclass(frozen=True)
class BranchInfo:
    """What a numeric branch holds: its kind, its dtype and, for jagged ones, its counter
    (the flat branch that holds each event's number of entries, when the file has one)."""

    name: str
    kind: Kind
    dtype: str
    counter: str | None = None


def classify_branches(
    tree: Any,
) -> tuple[dict[str, BranchInfo], dict[str, str], dict[str, Leaf]]:
    """A TTree's numeric columns (flat/jagged, by the naming rule of
    :mod:`~mlaas4hep.io.leaves`), the skipped branches with the reason, and where each
    column is read from.

    Every numeric leaf uproot reads becomes columns: plain numbers and ``Double32_t``/
    ``Float16_t`` (read as float64/float32), fixed-size arrays (one column per element),
    variable-length lists of those (``float[]``, ``std::vector``, ``std::set``, the
    members of a split ``TClonesArray`` or ``std::vector<struct>``), ``std::bitset``
    (one bool per bit) and the members of split objects. A member of a collection whose
    count is not a branch of its own (a ``TClonesArray``'s ``V0s_``) gets the counter
    ``n<collection>`` (``nV0s``), read as the length of its lists.
    """
    found: list[tuple[str, str, Any, Any]] = []
    skipped: dict[str, str] = {}
    owners: dict[str, tuple[str, Any]] = {}  # leaf name → (path, branch that holds it)
    for path, branch in tree.iteritems(recursive=True):
        for leaf in branch.member("fLeaves", none_if_missing=True) or []:
            owners.setdefault(str(leaf.member("fName")), (path, branch))
        if len(branch.branches) > 0:
            continue  # a grouping branch (split object or collection): its leaves follow
        name = tree_member_name(path)
        try:
            interp = branch.interpretation
        except Exception as err:
            skipped[name] = f"{_typename(branch)} (no interpretation: {describe(err)})"
            continue
        found.append((name, path, branch, interp))
    numeric: dict[str, BranchInfo] = {}
    leaves: dict[str, Leaf] = {}
    listed = {name for name, *_ in found}

    def add(info: BranchInfo, leaf: Leaf) -> None:
        if info.name in numeric:
            skipped[leaf.source] = f"its name collides with {info.name!r}"
        else:
            numeric[info.name], leaves[info.name] = info, leaf

    for name, path, branch, interp in found:
        shape = _numeric_shape(interp)
        if isinstance(shape, str):
            skipped[name] = f"{_typename(branch)} ({shape})"
            continue
        dtype, inner, jagged = shape
        counter, count_leaf = _counter_of(branch, path, owners, listed) if jagged else (None, None)
        if counter is not None and count_leaf is not None and counter not in numeric:
            # a collection's count, read from its first member
            add(BranchInfo(counter, "flat", COUNTER_DTYPE.name), count_leaf)
        kind: Kind = "jagged" if jagged else "flat"
        for element, index in element_names(name, inner):  # a plain value: (name, ())
            add(BranchInfo(element, kind, dtype.name, counter), Leaf(path, index))
    return numeric, skipped, leaves


def _typename(branch: Any) -> str:
    """The C++ type of a branch, as uproot names it (for the reason a branch is skipped)."""
    try:
        return str(branch.typename) or "unknown type"
    except Exception:  # uproot could not even name it: the reason says so
        return "unknown type"


def _numeric_shape(interp: Any) -> tuple[np.dtype, tuple[int, ...], bool] | str:
    """``(dtype, fixed inner shape, jagged)`` of what a numeric interpretation reads, or
    why it is no number (a string, a map, a list of lists, an object)."""
    numerical = uproot.interpretation.numerical
    if isinstance(interp, numerical.AsDtype | numerical.TruncatedNumerical):
        return _dtype_shape(interp.to_dtype, jagged=False)
    if isinstance(interp, uproot.interpretation.jagged.AsJagged):
        content = interp.content
        if isinstance(content, numerical.AsDtype | numerical.TruncatedNumerical):
            return _dtype_shape(content.to_dtype, jagged=True)
        return "a list of non-numbers"
    if isinstance(interp, uproot.interpretation.strings.AsStrings):
        return "a string"
    if isinstance(interp, uproot.interpretation.objects.AsObjects):
        return _container_shape(interp.model)
    return type(interp).__name__


def _container_shape(model: Any) -> tuple[np.dtype, tuple[int, ...], bool] | str:
    containers = uproot.containers
    if isinstance(model, containers.AsBitSet):
        if model.num_bits is None:
            return "a bitset of unknown size"
        return np.dtype(bool), (int(model.num_bits),), False
    if isinstance(model, containers.AsString):
        return "a string"
    if isinstance(model, containers.AsMap):
        return "a map"
    if isinstance(model, containers.AsVectorLike):
        items = model._items  # the element type: a dtype for a list of numbers
        if isinstance(items, np.dtype):
            return _dtype_shape(items, jagged=True)
        if isinstance(items, containers.AsVectorLike | containers.AsArray):
            return "a list of lists"
        return "a list of non-numbers"
    return "an object (not split)"


def _dtype_shape(dtype: np.dtype, *, jagged: bool) -> tuple[np.dtype, tuple[int, ...], bool] | str:
    dtype = np.dtype(dtype)
    if dtype.fields is not None:
        return "a struct"
    base, inner = dtype.subdtype if dtype.subdtype is not None else (dtype, ())
    if base.kind not in "biuf":
        return f"not numeric ({base})"
    return base, tuple(inner), jagged


def _counter_of(
    branch: Any, path: str, owners: dict[str, tuple[str, Any]], listed: set[str]
) -> tuple[str | None, Leaf | None]:
    """The counter of a jagged branch: the branch that holds its count leaf (``nJet``),
    or, when that leaf belongs to a collection's grouping branch (a split
    ``TClonesArray``'s ``V0s_``, a ``std::vector<struct>``'s ``coll_``), ``n<collection>``
    with how to read it (unless the tree has a branch of that name). uproot's own
    ``count_branch`` follows the leaf's parent, which for a collection's members is
    another member."""
    leaf = branch.count_leaf
    owner = None if leaf is None else owners.get(str(leaf.member("fName")))
    if owner is None:
        return None, None
    holder_path, holder = owner
    if len(holder.branches) == 0:
        return tree_member_name(holder_path), None
    name = "n" + tree_member_name(holder_path)
    if name in listed:
        return name, None
    return name, Leaf(path, counts=True)


def tree_member_name(path: str) -> str:
    """The column name of the TTree branch at ``path`` (``iteritems``' ``a/a.b``): its
    member path, by :func:`~mlaas4hep.io.leaves.member_name`. ROOT repeats a parent's
    name in its members' names (``V0s/V0s.fInvMass`` is ``V0s_fInvMass``) and may give a
    fixed-size member its dimensions (``fM[3]``); neither is repeated in the name."""
    parts: list[str] = []
    for piece in path.split("/"):
        piece = piece.split("[", 1)[0]
        if parts and piece.startswith(parts[-1].rstrip(".") + "."):
            parts[-1] = piece
        else:
            parts.append(piece)
    return member_name(parts)


def select_branches(
    branches: dict[str, BranchInfo] | Sequence[str],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    skipped: dict[str, str] | None = None,
    where: str = "the dataset",
    warn: bool = True,
) -> list[str]:
    """Resolve include/exclude names and glob patterns against the available branches.

    The result follows ``include`` (each pattern's matches in tree order) and never
    repeats a name. An exact name that is missing, or a pattern that matches nothing, is
    a :class:`BranchError` naming ``where``; non-numeric branches the selection would
    have taken are skipped with a :class:`NonNumericBranchWarning` listing them.
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise TypeError("include/exclude take a list of names or patterns, not a string")
    available = list(branches)
    skipped = skipped or {}
    chosen: list[str] = []
    dropped: list[str] = []
    for pattern in include if include is not None else ["*"]:
        found = names.select(available, pattern)
        not_numeric = names.select(skipped, pattern)
        dropped += not_numeric
        if not found and not not_numeric:
            raise BranchError(f"branch {pattern!r} not found in {where}")
        chosen += [m for m in found if m not in chosen]
    for pattern in exclude or []:
        chosen = [name for name in chosen if not names.matches(name, pattern)]
        dropped = [name for name in dropped if not names.matches(name, pattern)]
    if dropped and warn:
        listed = ", ".join(f"{n} ({skipped[n]})" for n in dict.fromkeys(dropped))
        warnings.warn(
            f"skipping non-numeric branches of {where}: {listed}",
            NonNumericBranchWarning,
            stacklevel=2,
        )
    return chosen
