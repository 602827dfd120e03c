"""Opening ROOT trees from local disk, XRootD and S3, and reading chunks of branches.

One entry point, :func:`open_tree`, accepts a local path, ``root://host:port//path``
(uproot's XRootD source, the ``xrootd`` wheel) or ``s3://bucket/key`` (fsspec + s3fs,
endpoint from the standard ``AWS_ENDPOINT_URL``). It finds the tree when the file holds
exactly one, classifies branches into numeric ``flat``/``jagged`` ones and skipped
non-numeric ones, and maps every transport or decoding failure to
:class:`~mlaas4hep.errors.ReadError` naming the file, so that one bad file in a dataset
gives one clear line instead of a traceback from deep inside uproot.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import uproot

from mlaas4hep.errors import BranchError, ReadError

Kind = Literal["flat", "jagged"]

#: Bytes read by the first request for a remote file. uproot's default (403 bytes, the
#: bare header) costs three more sequential round trips for the directory, streamers and
#: tree metadata that most files keep in their first few kB; 64 KiB costs a remote store
#: no more time than 403 bytes and holds them (7 GETs → 5 for a paper-layout file on S3).
REMOTE_BEGIN_CHUNK = 64 * 1024

#: Exceptions that mean "this file cannot be read", whatever the transport.
_READ_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AssertionError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    uproot.deserialization.DeserializationError,
)


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


def normalize_url(url: str | os.PathLike[str]) -> str:
    """The canonical form of a file location: absolute local path, or the URL unchanged."""
    text = os.fspath(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def scheme(url: str) -> str:
    """``file``, ``root`` or ``s3`` (other fsspec schemes are passed through)."""
    return url.split("://", 1)[0] if "://" in url else "file"


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    name = type(err).__name__
    return f"{name}: {first}" if first else name


def _map_transport_error(url: str, err: BaseException) -> ReadError:
    if isinstance(err, ReadError):
        return err
    if isinstance(err, FileNotFoundError):
        return ReadError(url, "no such file")
    return ReadError(url, _describe(err))


class RootTree:
    """An open TTree and the file that holds it; closes the file on exit.

    ``branches`` lists the numeric branches (name → :class:`BranchInfo`) in tree order,
    ``skipped`` the non-numeric ones with the reason.
    """

    def __init__(self, url: str | os.PathLike[str], tree: str | None = None) -> None:
        self.url = normalize_url(url)
        options: dict[str, Any] = {}
        if scheme(self.url) != "file":
            options["begin_chunk_size"] = REMOTE_BEGIN_CHUNK
        if scheme(self.url) == "root":
            _configure_xrootd_client()
            # uproot's own XRootD source: through fsspec-xrootd, the xrootd 6 bindings
            # reject the numpy integer offsets that uproot passes for basket reads.
            options["handler"] = uproot.source.xrootd.XRootDSource
        try:
            self._file = uproot.open(self.url, object_cache=None, array_cache=None, **options)
        except _READ_FAILURES as err:
            raise _map_transport_error(self.url, err) from err
        try:
            self.tree_name = tree or _only_tree(self._file, self.url)
            try:
                self.tree = self._file[self.tree_name]
            except uproot.KeyInFileError as err:
                raise ReadError(self.url, f"no TTree named {self.tree_name!r}") from err
            except _READ_FAILURES as err:
                raise _map_transport_error(self.url, err) from err
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
        except _READ_FAILURES:  # pragma: no cover - defensive, uproot is permissive here
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
        except _READ_FAILURES as err:
            raise _map_transport_error(self.url, err) from err
        return out

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
            except _READ_FAILURES as err:
                raise _map_transport_error(self.url, err) from err
            yield chunk

    def step_entries(self, branches: Sequence[str], step_size: int | str) -> int:
        """``step_size`` as a number of entries: an int as it is; a memory size such as
        ``"64 MB"`` as the entries whose uncompressed ``branches`` fill it.

        uproot's own conversion reads the key header of every basket to learn its size:
        one round trip per basket, in sequence (240 GETs before the first byte of data for
        a 90 MB paper-layout file on S3; on moto each GET even copies the whole object).
        The branches' metadata already hold that total (``fTotBytes``: every basket's
        uncompressed bytes and key header), so this reads nothing and gives uproot's
        number for a whole-tree iteration (the whole tree's average for a part of it). A
        branch without it (baskets embedded in the metadata) is summed as uproot does.
        """
        if isinstance(step_size, int | np.integer):
            return int(step_size)
        target = uproot._util.memory_size(
            step_size, f"a number of entries or a memory size such as '64 MB', not {step_size!r}"
        )
        try:
            total = sum(_uncompressed_bytes(self.tree[name]) for name in dict.fromkeys(branches))
        except _READ_FAILURES as err:
            raise _map_transport_error(self.url, err) from err
        if total <= 0:
            return 1
        return max(1, round(target * self.num_entries / total))


def _uncompressed_bytes(branch: Any) -> int:
    """Uncompressed bytes of a branch's baskets (with key headers), from its metadata."""
    total = int(branch.member("fTotBytes", none_if_missing=True) or 0)
    if total > 0:
        return total
    return int(sum(branch.basket_uncompressed_bytes(i) for i in range(branch.num_baskets)))


#: ``MLAAS4HEP_ZLIB``: the inflate library for ZLIB baskets, ``isal`` or ``zlib``.
ZLIB_VARIABLE = "MLAAS4HEP_ZLIB"


def use_zlib_library(library: str | None = None) -> str:
    """Pick the library that inflates ZLIB-compressed baskets (most ROOT files): ``isal``
    (Intel ISA-L, ~1.7× zlib's speed, the same bytes) when installed, else ``zlib``.

    Inflating is most of the CPU time of a pass over a file (0.6 of 1.1 s a 90 MB
    paper-layout file with zlib), so specs, training streams and ``/predict_file`` all
    gain. uproot inflates every basket through one decompressor object; its library is
    set there, so that writing (``uproot.ZLIB``) keeps zlib and its compression levels.
    ``library`` (or ``MLAAS4HEP_ZLIB``) forces one; the library in use is returned.
    """
    wanted = library or os.environ.get(ZLIB_VARIABLE) or "isal"
    if wanted not in ("isal", "zlib"):
        raise ValueError(
            f"the ZLIB library ({ZLIB_VARIABLE}) must be 'isal' or 'zlib', not {wanted!r}"
        )
    if wanted == "isal":
        try:
            import isal.isal_zlib  # noqa: F401
        except ImportError:
            wanted = "zlib"
    decompressor = getattr(uproot.compression, "_decompress_ZLIB", None)
    if decompressor is None or not hasattr(decompressor, "library"):
        return "zlib"  # an uproot without the switch inflates with zlib
    decompressor.library = wanted
    return wanted


try:
    use_zlib_library()
except ValueError as _err:  # a typo in the variable must not stop every import
    warnings.warn(f"{_err}; using zlib", stacklevel=1)
    use_zlib_library("zlib")


_XROOTD_CONFIGURED = False


def _configure_xrootd_client() -> None:
    """Fail fast on unreachable XRootD servers (the client's default retries for 10 min).

    ``XRD_CONNECTIONWINDOW``/``XRD_CONNECTIONRETRY`` set by the user win; otherwise a
    server gets 10 s (``MLAAS4HEP_XROOTD_CONNECT_TIMEOUT``) and 2 attempts.
    """
    global _XROOTD_CONFIGURED
    if _XROOTD_CONFIGURED:
        return
    from mlaas4hep.extras import require

    client = require("XRootD.client")
    if "XRD_CONNECTIONWINDOW" not in os.environ:
        window = int(os.environ.get("MLAAS4HEP_XROOTD_CONNECT_TIMEOUT", "10"))
        client.EnvPutInt("ConnectionWindow", window)
    if "XRD_CONNECTIONRETRY" not in os.environ:
        client.EnvPutInt("ConnectionRetry", 2)
    _XROOTD_CONFIGURED = True


def open_tree(url: str | os.PathLike[str], tree: str | None = None) -> RootTree:
    """Open the tree of a ROOT file at a local path, ``root://`` or ``s3://`` URL."""
    return RootTree(url, tree)


def _only_tree(file: Any, url: str) -> str:
    try:
        classnames = file.classnames()
    except _READ_FAILURES as err:
        raise _map_transport_error(url, err) from err
    trees = sorted(
        {key.split(";")[0] for key, cls in classnames.items() if cls in ("TTree", "TNtuple")}
    )
    if not trees:
        raise ReadError(url, "the file holds no TTree")
    if len(trees) > 1:
        raise ReadError(url, f"the file holds several TTrees ({', '.join(trees)}); choose one")
    return trees[0]


def _numeric_dtype(interp: Any) -> np.dtype | None:
    to_dtype = getattr(interp, "to_dtype", None)
    if to_dtype is None or to_dtype.fields is not None:
        return None
    if to_dtype.subdtype is not None:
        return to_dtype.subdtype[0] if to_dtype.subdtype[0].kind in "biuf" else None
    return to_dtype if to_dtype.kind in "biuf" else None


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
            skipped[name] = f"no interpretation ({_describe(err)})"
            continue
        info = _branch_info(name, branch, interp)
        if info is None:
            skipped[name] = type(interp).__name__
        else:
            numeric[name] = info
    return numeric, skipped


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


_GLOB_CHARS = set("*?[")


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
    names = list(branches)
    skipped = skipped or {}
    chosen: list[str] = []
    dropped: list[str] = []
    for pattern in include if include is not None else ["*"]:
        matches = _match(names, pattern)
        not_numeric = _match(list(skipped), pattern)
        dropped += not_numeric
        if not matches and not not_numeric:
            raise BranchError(f"branch {pattern!r} not found in {where}")
        chosen += [m for m in matches if m not in chosen]
    for pattern in exclude or []:
        chosen = [name for name in chosen if not fnmatch.fnmatchcase(name, pattern)]
        dropped = [name for name in dropped if not fnmatch.fnmatchcase(name, pattern)]
    if dropped and warn:
        listed = ", ".join(f"{n} ({skipped[n]})" for n in dict.fromkeys(dropped))
        warnings.warn(
            f"skipping non-numeric branches of {where}: {listed}",
            NonNumericBranchWarning,
            stacklevel=2,
        )
    return chosen


def _match(names: list[str], pattern: str) -> list[str]:
    if _GLOB_CHARS & set(pattern):
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return [pattern] if pattern in names else []


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


def file_identity(url: str) -> dict[str, Any]:
    """A content identity of a file: its size plus a checksum (local, XRootD) or ETag (S3).

    Used to skip recomputing a spec for a file that did not change, and to tell two
    versions of the same key apart.
    """
    url = normalize_url(url)
    kind = scheme(url)
    try:
        if kind == "file":
            return _local_identity(url)
        if kind == "s3":
            return _s3_identity(url)
        if kind == "root":
            return _xrootd_identity(url)
    except ReadError:
        raise
    except _READ_FAILURES as err:
        raise _map_transport_error(url, err) from err
    return {}


def _local_identity(path: str) -> dict[str, Any]:
    import xxhash

    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return {"size": os.path.getsize(path), "xxh3_64": digest.hexdigest()}


def _s3_identity(url: str) -> dict[str, Any]:
    info = _s3fs().info(url)
    identity: dict[str, Any] = {"size": int(info["size"]), "etag": info.get("ETag", "").strip('"')}
    if info.get("VersionId"):
        identity["version_id"] = info["VersionId"]
    return identity


def _xrootd_identity(url: str) -> dict[str, Any]:
    from mlaas4hep.extras import require

    _configure_xrootd_client()
    client = require("XRootD.client")
    flags = require("XRootD.client.flags")
    server, _, path = url.partition("//")[2].partition("/")
    filesystem = client.FileSystem(f"root://{server}")
    status, stat = filesystem.stat("/" + path.lstrip("/"))
    if not status.ok:
        raise ReadError(url, f"XRootD error: {status.message.strip()}")
    identity: dict[str, Any] = {"size": int(stat.size)}
    status, answer = filesystem.query(flags.QueryCode.CHECKSUM, "/" + path.lstrip("/"))
    if status.ok and answer:
        algorithm, _, value = answer.decode().strip("\x00 \n").partition(" ")
        identity[algorithm] = value.strip()
    else:
        identity["mtime"] = int(stat.modtime)
    return identity


def expand_sources(items: Sequence[str | os.PathLike[str]]) -> list[str]:
    """File URLs from paths, directories, glob patterns and ``s3://`` prefixes.

    A local directory or an ``s3://bucket/prefix/`` gives every ``*.root`` file under
    it; a glob is expanded; anything else (including ``root://`` URLs) is kept as is.
    """
    found: list[str] = []
    for item in items:
        text = os.fspath(item)
        kind = scheme(text)
        if kind == "file":
            path = Path(normalize_url(text))
            if path.is_dir():
                found += sorted(str(p) for p in path.rglob("*.root"))
            elif _GLOB_CHARS & set(text):
                found += sorted(str(Path(p).resolve()) for p in _glob(text))
            else:
                found.append(str(path))
        elif kind == "s3" and (text.endswith("/") or _GLOB_CHARS & set(text)):
            fs = _s3fs()
            pattern = text if _GLOB_CHARS & set(text) else text + "**/*.root"
            found += sorted(f"s3://{p}" for p in fs.glob(pattern))
        else:
            found.append(text)
    return list(dict.fromkeys(found))


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(os.path.expanduser(pattern), recursive=True)


def _s3fs() -> Any:
    from mlaas4hep.extras import require

    return require("s3fs").S3FileSystem(skip_instance_cache=True)


def read_text(url: str) -> str:
    """The text of a small document (a spec, a config) at a local path or ``s3://`` URL."""
    if scheme(url) == "s3":
        with _s3fs().open(url, "rb") as handle:
            return handle.read().decode()
    return Path(url).read_text()


def write_text(url: str, text: str) -> None:
    """Write a small document to a local path (parents created) or an ``s3://`` URL."""
    if scheme(url) == "s3":
        with _s3fs().open(url, "wb") as handle:
            handle.write(text.encode())
        return
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
