"""Which branches of a tree can become tensors, and selecting them by name or pattern.

A numeric branch is ``flat`` (one value per event) or ``jagged`` (a list per event, or a
fixed-size array); anything else (strings, objects) is skipped with the reason, so that
``include: ["*"]`` says what it left out instead of failing.
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

Kind = Literal["flat", "jagged"]


class NonNumericBranchWarning(UserWarning):
    """Branches that cannot become tensors (strings, objects) were skipped."""


@dataclass(frozen=True)
class BranchInfo:
    """What a numeric branch holds: its kind, its dtype and, for jagged ones, its counter."""

    name: str
    kind: Kind
    dtype: str
    counter: str | None = None
    fixed_length: int | None = None


def classify_branches(tree: Any) -> tuple[dict[str, BranchInfo], dict[str, str]]:
    """Split a tree's branches into numeric ones (flat/jagged) and skipped ones with a reason."""
    numeric: dict[str, BranchInfo] = {}
    skipped: dict[str, str] = {}
    for name, branch in tree.iteritems(recursive=True):
        if len(branch.branches) > 0:
            continue  # a grouping branch: its leaves are listed on their own
        try:
            interp = branch.interpretation
        except Exception as err:
            skipped[name] = f"no interpretation ({describe(err)})"
            continue
        info = _branch_info(name, branch, interp)
        if info is None:
            skipped[name] = type(interp).__name__
        else:
            numeric[name] = info
    return numeric, skipped


def _numeric_dtype(interp: Any) -> np.dtype | None:
    to_dtype = getattr(interp, "to_dtype", None)
    if to_dtype is None or to_dtype.fields is not None:
        return None
    if to_dtype.subdtype is not None:
        return to_dtype.subdtype[0] if to_dtype.subdtype[0].kind in "biuf" else None
    return to_dtype if to_dtype.kind in "biuf" else None


def _branch_info(name: str, branch: Any, interp: Any) -> BranchInfo | None:
    if isinstance(interp, uproot.interpretation.numerical.AsDtype):
        dtype = _numeric_dtype(interp)
        if dtype is None:
            return None
        shape = interp.inner_shape
        if len(shape) == 0:
            return BranchInfo(name, "flat", dtype.name)
        if len(shape) == 1:
            return BranchInfo(name, "jagged", dtype.name, fixed_length=int(shape[0]))
        return None
    if isinstance(interp, uproot.interpretation.jagged.AsJagged):
        content = interp.content
        if not isinstance(content, uproot.interpretation.numerical.AsDtype):
            return None
        dtype = _numeric_dtype(content)
        if dtype is None or len(content.inner_shape) > 0:
            return None
        counter = getattr(branch, "count_branch", None)
        counter_name = counter.name if counter is not None else None
        return BranchInfo(name, "jagged", dtype.name, counter=counter_name)
    return None


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
