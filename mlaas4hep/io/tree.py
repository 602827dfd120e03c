"""Opening the events of a ROOT file, wherever it lives, and reading chunks of branches.

One entry point, :func:`open_tree`, takes a local path or a URL of any
:class:`~mlaas4hep.io.location.Location` (``root://``, ``s3://``, ``https://``). It finds
the TTree or RNTuple when the file holds exactly one, reads it through one
:class:`~mlaas4hep.io.event_source.EventSource` (:mod:`.ttree`, :mod:`.rntuple`: the same
branch-like names and kinds for both formats), and maps every transport or decoding
failure to :class:`~mlaas4hep.errors.ReadError` naming the file, so that one bad file in
a dataset gives one clear line instead of a traceback from deep inside uproot.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import awkward as ak
import numpy as np
import uproot

from mlaas4hep.errors import ColumnError, ReadError
from mlaas4hep.io.branches import select_branches
from mlaas4hep.io.codec import ensure_inflate_library
from mlaas4hep.io.columns import check_layout
from mlaas4hep.io.event_source import EventSource
from mlaas4hep.io.failures import READ_FAILURES, as_read_error
from mlaas4hep.io.location import normalize_url
from mlaas4hep.io.rntuple import RNTUPLE_CLASSES, RNTupleEvents
from mlaas4hep.io.schemes import location_of
from mlaas4hep.io.ttree import TREE_CLASSES, TTreeEvents

#: The most entries in one step of a memory-sized iteration (``"64 MB"``), whatever the
#: file's metadata say: one million float32 values are 4 MB a branch, steps small enough
#: for a 2 GB function and large enough that a step's overhead does not show.
MAX_STEP_ENTRIES = 1_000_000

#: What each class of stored events is called in messages.
_FORMATS = {**dict.fromkeys(TREE_CLASSES, "TTree"), **dict.fromkeys(RNTUPLE_CLASSES, "RNTuple")}


class RootTree:
    """The events of a ROOT file (a TTree or an RNTuple) and the file that holds them;
    closes the file on exit.

    ``branches`` lists the numeric branches (name → :class:`BranchInfo`) in the file's
    order, ``skipped`` the non-numeric ones with the reason, ``format`` says ``"TTree"``
    or ``"RNTuple"`` and ``tree`` is uproot's object.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        tree: str | None = None,
        *,
        data: bytes | bytearray | None = None,
        redirects: Callable[[str], bool] | None = None,
    ) -> None:
        self.url = normalize_url(url) if data is None else str(url)
        ensure_inflate_library()
        try:
            if data is not None:  # a file held in memory (an upload); url only names it
                self._file = uproot.open(MemoryFile(data), object_cache=None, array_cache=None)
            else:
                options = location_of(self.url).uproot_options(self.url, redirects)
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
                raise ReadError(self.url, f"no TTree or RNTuple named {self.tree_name!r}") from err
            except READ_FAILURES as err:
                raise as_read_error(self.url, err) from err
            try:
                self.events = _events_of(self.tree, self.url, self.tree_name)
            except ReadError:
                raise
            except READ_FAILURES as err:
                raise as_read_error(self.url, err) from err
            self.branches, self.skipped = self.events.branches, self.events.skipped
        except BaseException:
            self.close()
            raise

    @property
    def format(self) -> str:
        """``"TTree"`` or ``"RNTuple"``."""
        return self.events.format

    @property
    def num_entries(self) -> int:
        return self.events.num_entries

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RootTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __contains__(self, name: object) -> bool:
        """True when the file holds a branch of that name, numeric or not."""
        return name in self.events

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
        """Entry numbers where every given branch starts a new basket or cluster (cheap
        read units), from 0 to the number of entries."""
        try:
            return self.events.cluster_boundaries(branches)
        except READ_FAILURES as err:
            raise as_read_error(self.url, err) from err

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
        try:
            out = self.events.arrays(branches, entry_start, entry_stop, executor)
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
        *,
        executor: Any = None,
    ) -> Iterator[dict[str, ak.Array]]:
        """Chunks of ``branches`` (a dict name → array per chunk), reading only those branches.

        ``step_size`` is a number of events or a memory size such as ``"64 MB"``; memory
        stays bounded whatever the size of the file. ``executor`` (a ``concurrent.futures``
        executor) decompresses a TTree's baskets in parallel.
        """
        step = self.step_entries(branches, step_size)
        try:
            iterator = self.events.iterate(branches, step, entry_start, entry_stop, executor)
        except READ_FAILURES as err:
            raise as_read_error(self.url, err) from err
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
        ``"64 MB"`` as the entries whose uncompressed ``branches`` fill it (from the
        metadata, reading no basket or page: see the formats' ``step_entries``), never
        more than :data:`MAX_STEP_ENTRIES` whatever the metadata say.

        An int is the caller's own choice of entries and is not bounded: choosing the
        entries of a step is legitimate (the predictor reads in fixed event counts).
        """
        if isinstance(step_size, int | np.integer):
            return int(step_size)
        target = uproot._util.memory_size(
            step_size, f"a number of entries or a memory size such as '64 MB', not {step_size!r}"
        )
        try:
            entries = self.events.step_entries(list(branches), int(target), self.num_entries)
        except READ_FAILURES as err:
            raise as_read_error(self.url, err) from err
        return int(min(MAX_STEP_ENTRIES, max(1, entries)))


def _events_of(tree: Any, url: str, name: str) -> EventSource:
    """The event source of uproot's object ``tree`` (a ReadError for anything else)."""
    if isinstance(tree, uproot.behaviors.TTree.TTree):
        return TTreeEvents(tree)
    if isinstance(tree, uproot.behaviors.RNTuple.RNTuple):
        return RNTupleEvents(tree)
    raise ReadError(url, f"{name!r} is not a TTree or an RNTuple")


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
    url: str | os.PathLike[str],
    tree: str | None = None,
    *,
    data: bytes | bytearray | None = None,
    redirects: Callable[[str], bool] | None = None,
) -> RootTree:
    """Open the tree of a ROOT file at a local path or a URL (``root://``, ``s3://``,
    ``https://`` …), or held in memory as ``data`` (then ``url`` is only the name errors
    give it). ``redirects`` says which URLs an HTTP server may redirect the reads to
    (None: any http(s) URL; the service allows its ``file_sources`` only)."""
    return RootTree(url, tree, data=data, redirects=redirects)


def only_tree(file: Any, url: str) -> str:
    """The name of the one TTree or RNTuple an open file holds (a ReadError for none or
    several, naming them: the ``tree`` option chooses one)."""
    try:
        classnames = file.classnames()
    except READ_FAILURES as err:
        raise as_read_error(url, err) from err
    found = {key.split(";")[0]: _FORMATS[cls] for key, cls in classnames.items() if cls in _FORMATS}
    if not found:
        raise ReadError(url, "the file holds no TTree or RNTuple")
    if len(found) > 1:
        single = len(set(found.values())) == 1
        kinds = f"{next(iter(found.values()))}s" if single else "TTrees and RNTuples"
        listed = ", ".join(
            name if single else f"{name} ({kind})" for name, kind in sorted(found.items())
        )
        raise ReadError(url, f"the file holds several {kinds} ({listed}); choose one")
    return next(iter(found))
