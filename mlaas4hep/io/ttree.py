"""Reading the events of a TTree: the :class:`~mlaas4hep.io.event_source.EventSource` of
ROOT's classic format.

Branches are classified by their uproot interpretation
(:func:`~mlaas4hep.io.branches.classify_branches`) into flat and jagged columns, which
this reader returns under their expanded names (fixed-size arrays element by element,
members by their member path: :mod:`~mlaas4hep.io.leaves`); read units are baskets, and a memory
step size is turned into entries from the branches' metadata without reading a basket
(see :meth:`TTreeEvents.step_entries`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import awkward as ak
import numpy as np
import uproot

from mlaas4hep.io.branches import COUNTER_DTYPE, classify_branches
from mlaas4hep.io.failures import READ_FAILURES
from mlaas4hep.io.leaves import Leaf, list_counts, take_element

#: uproot class names of the objects read as a TTree.
TREE_CLASSES = ("TTree", "TNtuple")

#: Bytes every entry of a variable-length branch takes in its basket at least: the
#: entry's offset (a 4-byte integer ROOT stores after the basket's data).
ENTRY_OFFSET_BYTES = 4


class TTreeEvents:
    """The events of an open TTree (``tree``: uproot's object), by branch name."""

    format = "TTree"

    def __init__(self, tree: Any) -> None:
        self.tree = tree
        self.branches, self.skipped, self._leaves = classify_branches(tree)

    @property
    def num_entries(self) -> int:
        return int(self.tree.num_entries)

    def __contains__(self, name: object) -> bool:
        return name in self.branches or name in self.skipped or name in self.tree

    def _sources(self, names: Sequence[str]) -> list[str]:
        """The tree's branches that ``names`` are read from, each once."""
        return list(dict.fromkeys(self._leaf(name).source for name in names))

    def _leaf(self, name: str) -> Leaf:
        """Where column ``name`` is read from (a name that is no column: the branch of
        that name, so that uproot says it is missing)."""
        return self._leaves.get(name) or Leaf(name)

    def _expand(self, names: Sequence[str], raw: dict[str, ak.Array]) -> dict[str, ak.Array]:
        """The columns ``names`` out of the branches uproot read (see :mod:`.leaves`)."""
        out = {}
        for name in dict.fromkeys(names):
            leaf = self._leaf(name)
            array = raw[leaf.source]
            if leaf.counts:
                out[name] = list_counts(array, COUNTER_DTYPE)
            else:
                jagged = leaf.index and self.branches[name].kind == "jagged"
                out[name] = take_element(array, leaf.index, jagged=bool(jagged))
        return out

    def cluster_boundaries(self, names: Sequence[str]) -> np.ndarray:
        """Entry numbers where every given branch starts a new basket."""
        try:
            offsets = self.tree.common_entry_offsets(filter_name=self._sources(names))
        except READ_FAILURES:  # pragma: no cover - defensive, uproot is permissive here
            offsets = [0, self.num_entries]
        return np.asarray(offsets, dtype=np.int64)

    def arrays(
        self, names: Sequence[str], entry_start: int, entry_stop: int | None, executor: Any
    ) -> dict[str, ak.Array]:
        """``names`` for entries ``[entry_start, entry_stop)``; ``executor`` (if any)
        decompresses baskets in parallel."""
        options = {"decompression_executor": executor} if executor is not None else {}
        raw = self.tree.arrays(
            self._sources(names),
            entry_start=entry_start,
            entry_stop=entry_stop,
            library="ak",
            how=dict,
            **options,
        )
        return self._expand(names, raw)

    def iterate(
        self,
        names: Sequence[str],
        step: int,
        entry_start: int,
        entry_stop: int | None,
        executor: Any = None,
    ) -> Iterator[dict[str, ak.Array]]:
        """``names`` in steps of ``step`` entries (uproot keeps baskets across steps);
        ``executor`` (if any) decompresses baskets in parallel."""
        options = {"decompression_executor": executor} if executor is not None else {}
        chunks = self.tree.iterate(
            self._sources(names),
            step_size=step,
            entry_start=entry_start,
            entry_stop=entry_stop,
            library="ak",
            how=dict,
            **options,
        )
        return (self._expand(names, raw) for raw in chunks)

    def step_entries(self, names: Sequence[str], target_bytes: int, entries: int) -> int:
        """The entries whose uncompressed ``names`` fill ``target_bytes``.

        uproot's own conversion reads the key header of every basket to learn its size:
        one round trip per basket, in sequence (240 GETs before the first byte of data for
        a 90 MB paper-layout file on S3; on moto each GET even copies the whole object).
        The branches' metadata already hold that total (``fTotBytes``: every basket's
        uncompressed bytes and key header), so this reads nothing and gives uproot's
        number for a whole-tree iteration (the whole tree's average for a part of it).

        That total is the file's own word, though: a hostile file that states one byte
        would make the whole tree one step and blow the memory up. So the total counts
        at least what the branches' types need (:func:`_least_entry_bytes` per entry) and
        at least the compressed bytes their baskets occupy (bounded by the file's size).
        Both bounds hold for honest files, which keep uproot's number.
        """
        total = self._step_bytes(self._sources(names), entries)
        if total <= 0:
            return 1
        return round(target_bytes * entries / total)

    def _step_bytes(self, names: Sequence[str], entries: int) -> int:
        """The uncompressed bytes of the baskets of ``names`` that a memory step size is
        measured against: each branch's stated total, raised to what its type needs and
        to the compressed bytes its baskets occupy (reads no basket).

        What the compressed bytes add beyond the stated totals is bounded by the size of
        the file (a hostile basket table cannot shrink the steps to nothing); an honest
        file adds nothing, so only a file that does is asked for its size.
        """
        stated = beyond = 0
        for name in names:
            branch = self.tree[name]
            bound = max(_uncompressed_bytes(branch), entries * _least_entry_bytes(branch))
            stated += bound
            beyond += max(_compressed_bytes(branch) - bound, 0)
        if beyond > 0:
            beyond = min(beyond, int(self.tree.file.source.num_bytes))
        return stated + beyond


def _uncompressed_bytes(branch: Any) -> int:
    """Uncompressed bytes of a branch's baskets (with key headers), as its metadata state.

    A branch without ``fTotBytes`` (baskets embedded in the metadata, as a writer that
    stopped early leaves them) sums its embedded baskets, which are in memory, and
    counts its other baskets by their compressed bytes: their uncompressed size would
    take reading each basket's key.
    """
    total = int(branch.member("fTotBytes", none_if_missing=True) or 0)
    if total > 0:
        return total
    embedded = branch.embedded_baskets
    return _normal_basket_bytes(branch, len(embedded)) + sum(
        int(basket.uncompressed_bytes) for basket in embedded
    )


def _compressed_bytes(branch: Any) -> int:
    """Compressed bytes of a branch's baskets (with key headers), from the metadata that
    locates them: a basket stated smaller than it is cannot be read."""
    embedded = branch.embedded_baskets
    return _normal_basket_bytes(branch, len(embedded)) + sum(
        int(basket.compressed_bytes) for basket in embedded
    )


def _normal_basket_bytes(branch: Any, n_embedded: int) -> int:
    """Sum of ``fBasketBytes`` over the branch's normal (not embedded) baskets."""
    stated = branch.member("fBasketBytes", none_if_missing=True)
    sizes = np.asarray(stated if stated is not None else [], dtype=np.int64)
    return int(np.clip(sizes[: max(branch.num_baskets - n_embedded, 0)], 0, None).sum())


def _least_entry_bytes(branch: Any) -> int:
    """Bytes one entry of ``branch`` takes in its baskets at least, from its type alone:
    a fixed-width value (or fixed-size array) its width, a variable-length list its
    entry offset and list header, anything else nothing."""
    try:
        interp = branch.interpretation
    except Exception:  # no interpretation: no bound from the type
        return 0
    if isinstance(interp, uproot.interpretation.numerical.AsDtype):
        return int(interp.from_dtype.itemsize)
    if isinstance(interp, uproot.interpretation.jagged.AsJagged):
        return ENTRY_OFFSET_BYTES + int(interp.header_bytes)
    return 0
