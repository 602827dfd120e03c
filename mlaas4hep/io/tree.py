"""Opening the tree of a ROOT file, wherever it lives, and reading chunks of branches.

One entry point, :func:`open_tree`, takes a local path or a URL of any
:class:`~mlaas4hep.io.location.Location` (``root://``, ``s3://``, ``https://``). It finds
the tree when the file holds exactly one, classifies branches into numeric
``flat``/``jagged`` ones and skipped non-numeric ones, and maps every transport or
decoding failure to :class:`~mlaas4hep.errors.ReadError` naming the file, so that one
bad file in a dataset gives one clear line instead of a traceback from deep inside
uproot.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from typing import Any

import awkward as ak
import numpy as np
import uproot

from mlaas4hep.errors import ColumnError, ReadError
from mlaas4hep.io.branches import classify_branches, select_branches
from mlaas4hep.io.codec import ensure_inflate_library
from mlaas4hep.io.columns import check_layout
from mlaas4hep.io.failures import READ_FAILURES, as_read_error
from mlaas4hep.io.location import normalize_url
from mlaas4hep.io.schemes import location_of

TREE_CLASSES = ("TTree", "TNtuple")

#: The most entries in one step of a memory-sized iteration (``"64 MB"``), whatever the
#: file's metadata say: one million float32 values are 4 MB a branch, steps small enough
#: for a 2 GB function and large enough that a step's overhead does not show.
MAX_STEP_ENTRIES = 1_000_000

#: Bytes every entry of a variable-length branch takes in its basket at least: the
#: entry's offset (a 4-byte integer ROOT stores after the basket's data).
ENTRY_OFFSET_BYTES = 4


class RootTree:
    """An open TTree and the file that holds it; closes the file on exit.

    ``branches`` lists the numeric branches (name → :class:`BranchInfo`) in tree order,
    ``skipped`` the non-numeric ones with the reason.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        tree: str | None = None,
        *,
        data: bytes | bytearray | None = None,
    ) -> None:
        self.url = normalize_url(url) if data is None else str(url)
        ensure_inflate_library()
        try:
            if data is not None:  # a file held in memory (an upload); url only names it
                self._file = uproot.open(MemoryFile(data), object_cache=None, array_cache=None)
            else:
                options = location_of(self.url).uproot_options(self.url)
                self._file = uproot.open(self.url, object_cache=None, array_cache=None, **options)
        except ImportError as err:  # a transport's client missing from this installation
            raise ReadError(self.url, str(err)) from err
        except READ_FAILURES as err:
            raise as_read_error(self.url, err) from err
        try:
            self.tree_name = tree or only_tree(self._file, self.url)
            try:
                self.tree = self._file[self.tree_name]
            except uproot.KeyInFileError as err:
                raise ReadError(self.url, f"no TTree named {self.tree_name!r}") from err
            except READ_FAILURES as err:
                raise as_read_error(self.url, err) from err
            if not isinstance(self.tree, uproot.behaviors.TTree.TTree):
                raise ReadError(self.url, f"{self.tree_name!r} is not a TTree")
            self.branches, self.skipped = classify_branches(self.tree)
        except BaseException:
            self.close()
            raise

    @property
    def num_entries(self) -> int:
        return int(self.tree.num_entries)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RootTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def select(
        self,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        *,
        warn: bool = True,
    ) -> list[str]:
        """Numeric branch names matching ``include`` minus ``exclude``, in a stable order."""
        return select_branches(
            self.branches, include, exclude, skipped=self.skipped, where=self.url, warn=warn
        )

    def cluster_boundaries(self, branches: Sequence[str]) -> np.ndarray:
        """Entry numbers where every given branch starts a new basket (cheap read units)."""
        try:
            offsets = self.tree.common_entry_offsets(filter_name=list(branches))
        except READ_FAILURES:  # pragma: no cover - defensive, uproot is permissive here
            offsets = [0, self.num_entries]
        return np.asarray(offsets, dtype=np.int64)

    def arrays(
        self,
        branches: Sequence[str],
        entry_start: int = 0,
        entry_stop: int | None = None,
        *,
        executor: Any = None,
    ) -> dict[str, ak.Array]:
        """Read ``branches`` for entries ``[entry_start, entry_stop)`` as awkward arrays.

        ``executor`` (a ``concurrent.futures`` executor) decompresses baskets in parallel.
        """
        options = {"decompression_executor": executor} if executor is not None else {}
        try:
            out = self.tree.arrays(
                list(branches),
                entry_start=entry_start,
                entry_stop=entry_stop,
                library="ak",
                how=dict,
                **options,
            )
        except READ_FAILURES as err:
            raise as_read_error(self.url, err) from err
        return self._checked(out)

    def _checked(self, arrays: dict[str, ak.Array]) -> dict[str, ak.Array]:
        """``arrays`` whose list offsets (taken from the file as they are) are sound; a
        crafted basket is a ReadError naming the file and the branch."""
        for name, array in arrays.items():
            try:
                check_layout(array, name)
            except ColumnError as err:
                raise ReadError(self.url, err.problem, branch=name) from None
        return arrays

    def iterate(
        self,
        branches: Sequence[str],
        step_size: int | str = "64 MB",
        entry_start: int = 0,
        entry_stop: int | None = None,
    ) -> Iterator[dict[str, ak.Array]]:
        """Chunks of ``branches`` (a dict name → array per chunk), reading only those branches.

        ``step_size`` is a number of events or a memory size such as ``"64 MB"``; memory
        stays bounded whatever the size of the file.
        """
        iterator = self.tree.iterate(
            list(branches),
            step_size=self.step_entries(branches, step_size),
            entry_start=entry_start,
            entry_stop=entry_stop,
            library="ak",
            how=dict,
        )
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            except READ_FAILURES as err:
                raise as_read_error(self.url, err) from err
            yield self._checked(chunk)

    def step_entries(self, branches: Sequence[str], step_size: int | str) -> int:
        """``step_size`` as a number of entries: an int as it is; a memory size such as
        ``"64 MB"`` as the entries whose uncompressed ``branches`` fill it, never more
        than :data:`MAX_STEP_ENTRIES`.

        An int is the caller's own choice of entries and is not bounded: choosing the
        entries of a step is legitimate (the predictor reads in fixed event counts).

        uproot's own conversion reads the key header of every basket to learn its size:
        one round trip per basket, in sequence (240 GETs before the first byte of data for
        a 90 MB paper-layout file on S3; on moto each GET even copies the whole object).
        The branches' metadata already hold that total (``fTotBytes``: every basket's
        uncompressed bytes and key header), so this reads nothing and gives uproot's
        number for a whole-tree iteration (the whole tree's average for a part of it).

        That total is the file's own word, though: a hostile file that states one byte
        would make the whole tree one step and blow the memory up. So the total counts
        at least what the branches' types need (:func:`_least_entry_bytes` per entry) and
        at least the compressed bytes their baskets occupy (bounded by the file's size),
        and the step never exceeds :data:`MAX_STEP_ENTRIES` whatever the metadata say.
        Both bounds hold for honest files, which keep uproot's number.
        """
        if isinstance(step_size, int | np.integer):
            return int(step_size)
        target = uproot._util.memory_size(
            step_size, f"a number of entries or a memory size such as '64 MB', not {step_size!r}"
        )
        try:
            total = self._step_bytes(list(dict.fromkeys(branches)))
        except READ_FAILURES as err:
            raise as_read_error(self.url, err) from err
        if total <= 0:
            return 1
        return int(min(MAX_STEP_ENTRIES, max(1, round(target * self.num_entries / total))))

    def _step_bytes(self, names: Sequence[str]) -> int:
        """The uncompressed bytes of the baskets of ``names`` that a memory step size is
        measured against: each branch's stated total, raised to what its type needs and
        to the compressed bytes its baskets occupy (reads no basket).

        What the compressed bytes add beyond the stated totals is bounded by the size of
        the file (a hostile basket table cannot shrink the steps to nothing); an honest
        file adds nothing, so only a file that does is asked for its size.
        """
        entries = self.num_entries
        stated = beyond = 0
        for name in names:
            branch = self.tree[name]
            bound = max(_uncompressed_bytes(branch), entries * _least_entry_bytes(branch))
            stated += bound
            beyond += max(_compressed_bytes(branch) - bound, 0)
        if beyond > 0:
            beyond = min(beyond, self._file_size())
        return stated + beyond

    def _file_size(self) -> int:
        """The size of the file in bytes, as its transport knows it (not its header)."""
        return int(self._file.file.source.num_bytes)


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


class MemoryFile(io.RawIOBase):
    """A read-only file over bytes held in memory, without copying them (``io.BytesIO``
    copies a ``bytearray``): what uproot reads an uploaded file through."""

    def __init__(self, data: bytes | bytearray) -> None:
        self._view = memoryview(data)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        self._position = max(0, base[whence] + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._position + size
        piece = self._view[self._position : end].tobytes()
        self._position += len(piece)
        return piece

    def readinto(self, buffer: Any) -> int:
        piece = self.read(len(buffer))
        buffer[: len(piece)] = piece
        return len(piece)


def open_tree(
    url: str | os.PathLike[str], tree: str | None = None, *, data: bytes | bytearray | None = None
) -> RootTree:
    """Open the tree of a ROOT file at a local path or a URL (``root://``, ``s3://`` …),
    or held in memory as ``data`` (then ``url`` is only the name errors give it)."""
    return RootTree(url, tree, data=data)


def only_tree(file: Any, url: str) -> str:
    """The name of the one tree an open file holds (a ReadError for none or several)."""
    try:
        classnames = file.classnames()
    except READ_FAILURES as err:
        raise as_read_error(url, err) from err
    trees = sorted({key.split(";")[0] for key, cls in classnames.items() if cls in TREE_CLASSES})
    if not trees:
        raise ReadError(url, "the file holds no TTree")
    if len(trees) > 1:
        raise ReadError(url, f"the file holds several TTrees ({', '.join(trees)}); choose one")
    return trees[0]
