"""What reading events needs from a stored event collection, whatever its format.

A ROOT file keeps its events in a TTree or an RNTuple. :class:`EventSource` is the one
interface :class:`~mlaas4hep.io.tree.RootTree` reads both through, as uproot's
``Source`` hides its transports: :class:`~mlaas4hep.io.ttree.TTreeEvents` and
:class:`~mlaas4hep.io.rntuple.RNTupleEvents` implement it. Both expose the same
branch-like names (``Jet_pt``, ``nJet``) and :class:`~mlaas4hep.io.branches.BranchInfo`
kinds, so that specs, streams, training and serving never ask which format a file has.

An implementation raises uproot's own errors; :class:`~mlaas4hep.io.tree.RootTree` maps
them to :class:`~mlaas4hep.errors.ReadError` and checks the offsets of what it returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import awkward as ak
import numpy as np

from mlaas4hep.io.branches import BranchInfo


class EventSource(Protocol):
    """The events of one TTree or RNTuple, by branch-like name."""

    #: ``"TTree"`` or ``"RNTuple"``: what the file stores the events as.
    format: str
    #: The numeric branches (name → :class:`BranchInfo`) in the file's order.
    branches: dict[str, BranchInfo]
    #: The branches that cannot become tensors, with the reason.
    skipped: dict[str, str]

    @property
    def num_entries(self) -> int: ...

    def cluster_boundaries(self, names: Sequence[str]) -> np.ndarray:
        """Entry numbers where every given branch starts a new read unit (basket or
        cluster), from 0 to :attr:`num_entries`."""
        ...

    def arrays(
        self, names: Sequence[str], entry_start: int, entry_stop: int | None, executor: Any
    ) -> dict[str, ak.Array]:
        """``names`` for entries ``[entry_start, entry_stop)``, a dict name → array."""
        ...

    def iterate(
        self,
        names: Sequence[str],
        step: int,
        entry_start: int,
        entry_stop: int | None,
        executor: Any = None,
    ) -> Iterator[dict[str, ak.Array]]:
        """``names`` in steps of ``step`` entries; ``executor`` (if any) decompresses in
        parallel where the format allows it."""
        ...

    def step_entries(self, names: Sequence[str], target_bytes: int, entries: int) -> int:
        """How many of ``entries`` entries fill ``target_bytes`` of uncompressed ``names``,
        from the metadata alone (the caller bounds the result)."""
        ...
