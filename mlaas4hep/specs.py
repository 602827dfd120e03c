"""File and dataset specs: what every branch holds, computed in one streaming pass.

A :class:`FileSpec` describes one ROOT file: per numeric branch its kind (``flat`` or
``jagged``), dtype, min/max and moments over finite values, NaN/inf counts and, for
jagged branches, the histogram of list lengths (hence the maximum length and any
quantile a padding length may be taken from); plus the file's entries and a content
identity (size + checksum or ETag) so that an unchanged file is never read twice.

A :class:`DatasetSpec` is the set of FileSpecs of a dataset, keyed by file. Merging is a
union of those sets, so it is associative, commutative and idempotent by construction,
whatever order or tree shape the serverless merges take, and a file delivered twice is
counted once. The dataset-wide statistics are derived from the files in key order, so
they are bit-identical however the specs were merged. Both are JSON documents with a
``schema_version``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from mlaas4hep.errors import BranchError, MlaasError, SchemaVersionError, SpecError
from mlaas4hep.io.branches import BranchInfo
from mlaas4hep.io.columns import flat_values, jagged_parts
from mlaas4hep.io.expand import expand_sources
from mlaas4hep.io.identity import file_identity
from mlaas4hep.io.location import normalize_url
from mlaas4hep.io.names import matches
from mlaas4hep.io.tree import open_tree

SCHEMA_VERSION = 1
DEFAULT_STEP_SIZE = "64 MB"


@dataclass(frozen=True)
class BranchStats:
    """Mergeable statistics of one branch.

    ``count`` is the number of values (events for flat branches, list elements for
    jagged ones); min, max, sum and sum of squares are over the finite values only.
    ``length_hist[k]`` counts the events whose list holds ``k`` values (jagged only).
    """

    kind: str
    dtype: str
    count: int = 0
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    min: float | int | None = None
    max: float | int | None = None
    sum: float = 0.0
    sumsq: float = 0.0
    length_hist: tuple[int, ...] = ()
    dtypes: tuple[str, ...] = ()

    @property
    def finite(self) -> int:
        return self.count - self.nan - self.posinf - self.neginf

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def mean(self) -> float:
        return self.sum / self.finite if self.finite else 0.0

    @property
    def std(self) -> float:
        if not self.finite:
            return 0.0
        variance = self.sumsq / self.finite - self.mean**2
        return math.sqrt(max(variance, 0.0))

    @property
    def max_length(self) -> int:
        return max(len(self.length_hist) - 1, 0)

    def length_quantile(self, q: float) -> int:
        """The smallest list length that holds at least a fraction ``q`` of the events."""
        if not self.length_hist:
            return 0
        cumulative = np.cumsum(self.length_hist)
        return int(np.searchsorted(cumulative, q * cumulative[-1] - 1e-9))

    def merge(self, other: BranchStats) -> BranchStats:
        """Combine the statistics of two disjoint sets of values of the same branch."""
        if self.kind != other.kind:
            raise SpecError(f"cannot merge a {self.kind} branch with a {other.kind} one")
        dtypes = tuple(sorted({*self.all_dtypes, *other.all_dtypes}))
        return BranchStats(
            kind=self.kind,
            dtype=_promote(dtypes),
            count=self.count + other.count,
            nan=self.nan + other.nan,
            posinf=self.posinf + other.posinf,
            neginf=self.neginf + other.neginf,
            min=_pick(min, self.min, other.min),
            max=_pick(max, self.max, other.max),
            sum=self.sum + other.sum,
            sumsq=self.sumsq + other.sumsq,
            length_hist=_add_hist(self.length_hist, other.length_hist),
            dtypes=dtypes if len(dtypes) > 1 else (),
        )

    @property
    def all_dtypes(self) -> tuple[str, ...]:
        return self.dtypes or (self.dtype,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "dtype": self.dtype,
            "count": self.count,
            "nan": self.nan,
            "posinf": self.posinf,
            "neginf": self.neginf,
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
            "sumsq": self.sumsq,
        }
        if self.kind == "jagged":
            out["max_length"] = self.max_length
            out["length_hist"] = list(self.length_hist)
        if self.dtypes:
            out["dtypes"] = list(self.dtypes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> BranchStats:
        try:
            return cls(
                kind=data["kind"],
                dtype=data["dtype"],
                count=int(data["count"]),
                nan=int(data["nan"]),
                posinf=int(data["posinf"]),
                neginf=int(data["neginf"]),
                min=data["min"],
                max=data["max"],
                sum=float(data["sum"]),
                sumsq=float(data["sumsq"]),
                length_hist=tuple(int(v) for v in data.get("length_hist", ())),
                dtypes=tuple(data.get("dtypes", ())),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SpecError(f"malformed branch statistics in {where}: {err!r}") from err


def _pick(fn: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)


def _add_hist(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if len(a) < len(b):
        a, b = b, a
    return tuple(x + (b[i] if i < len(b) else 0) for i, x in enumerate(a))


def _promote(dtypes: Sequence[str]) -> str:
    return np.result_type(*[np.dtype(d) for d in dtypes]).name


def _as_python(value: Any, dtype: np.dtype) -> float | int | bool:
    if dtype.kind == "b":
        return int(bool(value))
    if dtype.kind in "iu":
        return int(value)
    return float(value)


def values_stats(kind: str, dtype: np.dtype, values: np.ndarray) -> BranchStats:
    """Statistics of a flat array of values, vectorised, with a fast path without NaN/inf."""
    count = int(values.size)
    if count == 0:
        return BranchStats(kind=kind, dtype=dtype.name)
    if dtype.kind == "b":
        ones = int(np.count_nonzero(values))
        return BranchStats(kind, dtype.name, count, 0, 0, 0, int(ones == count), int(ones > 0),
                           float(ones), float(ones))  # fmt: skip
    nan, posinf, neginf, low, high, total, squares, finite = _moments(values)
    if finite == 0:
        return BranchStats(kind, dtype.name, count, nan, posinf, neginf)
    return BranchStats(
        kind=kind,
        dtype=dtype.name,
        count=count,
        nan=int(nan),
        posinf=int(posinf),
        neginf=int(neginf),
        min=_as_python(low, dtype),
        max=_as_python(high, dtype),
        sum=float(total),
        sumsq=float(squares),
    )


def array_stats(info: BranchInfo, array: Any) -> BranchStats:
    """Statistics of one chunk of a branch (an awkward or numpy array)."""
    dtype = np.dtype(info.dtype)
    if info.kind == "flat":
        return values_stats("flat", dtype, flat_values(array))
    offsets, content = jagged_parts(array)
    stats = values_stats("jagged", dtype, content[offsets[0] : offsets[-1]])
    lengths = np.diff(offsets)
    hist = np.bincount(lengths) if lengths.size else np.zeros(1, dtype=np.int64)
    return replace(stats, length_hist=tuple(hist.tolist()))


def _moments(values: np.ndarray) -> tuple[int, int, int, Any, Any, float, float, int]:
    """NaN/+inf/-inf counts, then min, max, sum, sum of squares and count of finite values.

    Plain numpy keeps the spec pass free of compiled code (lean serverless package, no
    per-process JIT load); it runs at the speed of the decompression it follows. The sum
    of squares uses einsum, not dot: BLAS would start threads of its own and oversubscribe
    the cores that ``--workers`` processes already use.
    """
    wide = values.astype(np.float64, copy=False)
    total = float(np.sum(wide))
    if math.isfinite(total):  # the common case: no NaN/inf, no mask needed
        return (
            0,
            0,
            0,
            values.min(),
            values.max(),
            total,
            float(np.einsum("i,i", wide, wide)),
            wide.size,
        )
    finite = np.isfinite(wide)
    kept = wide[finite]
    nan = int(np.count_nonzero(np.isnan(wide)))
    posinf = int(np.count_nonzero(wide == np.inf))
    neginf = int(np.count_nonzero(wide == -np.inf))
    if kept.size == 0:
        return nan, posinf, neginf, None, None, 0.0, 0.0, 0
    return (
        nan,
        posinf,
        neginf,
        kept.min(),
        kept.max(),
        float(kept.sum()),
        float(np.einsum("i,i", kept, kept)),
        kept.size,
    )


def _empty_stats(info: BranchInfo) -> BranchStats:
    return BranchStats(kind=info.kind, dtype=info.dtype, length_hist=(0,) * 0)


@dataclass(frozen=True)
class FileSpec:
    """The spec of one ROOT file: its branches' statistics, entries and content identity."""

    source: str
    tree: str
    entries: int
    identity: dict[str, Any]
    branches: dict[str, BranchStats]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """How this file is known within a dataset: its source URL."""
        return self.source

    def content(self) -> dict[str, Any]:
        """What the file holds, without where it was read from (for cross-transport checks)."""
        data = self.to_dict()
        for name in ("source", "identity"):
            data.pop(name)
        return data

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "file",
            "source": self.source,
            "tree": self.tree,
            "entries": self.entries,
            "identity": dict(self.identity),
            "branches": {name: stats.to_dict() for name, stats in self.branches.items()},
            "skipped": dict(self.skipped),
        }

    def to_json(self, indent: int | None = None) -> str:
        return _dump(self.to_dict(), indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileSpec:
        _check_document(data, "file")
        where = f"file spec of {data.get('source', '?')}"
        try:
            return cls(
                source=data["source"],
                tree=data["tree"],
                entries=int(data["entries"]),
                identity=dict(data.get("identity", {})),
                branches={
                    name: BranchStats.from_dict(stats, f"{where}, branch {name!r}")
                    for name, stats in data["branches"].items()
                },
                skipped=dict(data.get("skipped", {})),
            )
        except KeyError as err:
            raise SpecError(f"{where} lacks the field {err.args[0]!r}") from err

    @classmethod
    def from_json(cls, text: str | bytes) -> FileSpec:
        return cls.from_dict(_load(text))


@dataclass(frozen=True)
class BranchSummary:
    """A branch across a dataset: merged statistics and where it is missing or inconsistent."""

    name: str
    stats: BranchStats
    missing_in: tuple[str, ...] = ()
    conflict: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = self.stats.to_dict()
        if self.missing_in:
            out["missing_in"] = list(self.missing_in)
        if self.conflict:
            out["conflict"] = self.conflict
        return out


class DatasetSpec:
    """The spec of a dataset: the FileSpecs of its files, and their merged statistics."""

    def __init__(self, files: Iterable[FileSpec] = ()) -> None:
        merged: dict[str, FileSpec] = {}
        for spec in files:
            _add_file(merged, spec)
        self._files = dict(sorted(merged.items()))

    @classmethod
    def empty(cls) -> DatasetSpec:
        return cls()

    @property
    def files(self) -> dict[str, FileSpec]:
        return dict(self._files)

    @property
    def entries(self) -> int:
        return sum(spec.entries for spec in self._files.values())

    @property
    def tree(self) -> str | None:
        names = {spec.tree for spec in self._files.values()}
        return names.pop() if len(names) == 1 else None

    def merge(self, *others: FileSpec | DatasetSpec) -> DatasetSpec:
        """The union of this dataset with files or datasets (pure; order does not matter)."""
        files = list(self._files.values())
        for other in others:
            if isinstance(other, DatasetSpec):
                files += other._files.values()
            elif isinstance(other, FileSpec):
                files.append(other)
            else:
                raise TypeError(f"cannot merge a {type(other).__name__} into a DatasetSpec")
        return DatasetSpec(files)

    def without(self, *keys: str) -> DatasetSpec:
        """The dataset less some files (e.g. to replace a file that changed)."""
        return DatasetSpec(spec for key, spec in self._files.items() if key not in keys)

    def contains(self, spec: FileSpec) -> bool:
        """True when this exact file version is already counted."""
        known = self._files.get(spec.key)
        return known is not None and known.identity == spec.identity

    @cached_property
    def branches(self) -> dict[str, BranchSummary]:
        """Dataset-wide statistics per branch, derived from the files in key order."""
        per_branch: dict[str, list[tuple[str, BranchStats]]] = {}
        for key, spec in self._files.items():
            for name, stats in spec.branches.items():
                per_branch.setdefault(name, []).append((key, stats))
        summaries: dict[str, BranchSummary] = {}
        keys = list(self._files)
        for name in sorted(per_branch):
            entries = per_branch[name]
            present = {key for key, _ in entries}
            missing = tuple(key for key in keys if key not in present)
            kinds = {stats.kind for _, stats in entries}
            if len(kinds) > 1:
                detail = "; ".join(f"{key}: {stats.kind}" for key, stats in entries)
                summaries[name] = BranchSummary(
                    name, entries[0][1], missing, f"kind differs between files ({detail})"
                )
                continue
            total = entries[0][1]
            for _, stats in entries[1:]:
                total = total.merge(stats)
            summaries[name] = BranchSummary(name, total, missing)
        return summaries

    def branch(self, name: str) -> BranchStats:
        """Merged statistics of a usable branch; a clear error when missing or conflicting."""
        summary = self.branches.get(name)
        if summary is None:
            raise BranchError(f"branch {name!r} is not in the dataset spec")
        if summary.conflict:
            raise BranchError(f"branch {name!r} cannot be used: {summary.conflict}")
        return summary.stats

    def problems(self, max_names: int = 8) -> list[str]:
        """Human-readable inconsistencies: conflicting branches, and branches missing from
        some files (grouped by the files that lack them, so 900 branches give one line)."""
        out = []
        missing: dict[tuple[str, ...], list[str]] = {}
        for name, summary in self.branches.items():
            if summary.conflict:
                out.append(f"branch {name!r}: {summary.conflict}")
            if summary.missing_in:
                missing.setdefault(summary.missing_in, []).append(name)
            if summary.stats.dtypes:
                out.append(
                    f"branch {name!r} has different dtypes across files "
                    f"({', '.join(summary.stats.dtypes)}); promoted to {summary.stats.dtype}"
                )
        for files, names in missing.items():
            shown = ", ".join(names[:max_names])
            more = f" (+{len(names) - max_names} more)" if len(names) > max_names else ""
            out.append(f"{len(names)} branch(es) missing from {', '.join(files)}: {shown}{more}")
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DatasetSpec):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"DatasetSpec({len(self._files)} files, {self.entries} entries)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "dataset",
            "entries": self.entries,
            "tree": self.tree,
            "branches": {name: s.to_dict() for name, s in self.branches.items()},
            "files": {key: spec.to_dict() for key, spec in self._files.items()},
        }

    def to_json(self, indent: int | None = None) -> str:
        return _dump(self.to_dict(), indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        _check_document(data, "dataset")
        if not isinstance(data.get("files"), dict):
            raise SpecError("dataset spec lacks its 'files' mapping")
        # The merged statistics are derived again from the files, never trusted as stored.
        return cls(FileSpec.from_dict(spec) for spec in data["files"].values())

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetSpec:
        return cls.from_dict(_load(text))


def _add_file(files: dict[str, FileSpec], spec: FileSpec) -> None:
    known = files.get(spec.key)
    if known is None:
        files[spec.key] = spec
    elif known != spec:
        if known.identity == spec.identity and known.identity:
            # Same content read with other options: keep one, chosen so that the result
            # does not depend on the order of the merge.
            files[spec.key] = min(known, spec, key=lambda s: s.to_json())
            return
        raise SpecError(
            f"file {spec.key} appears twice with different contents "
            f"(identity {known.identity} vs {spec.identity}); "
            "remove the old version with DatasetSpec.without() before merging the new one"
        )


def load_spec(text: str | bytes) -> FileSpec | DatasetSpec:
    """Load a FileSpec or DatasetSpec from JSON, whichever the document holds."""
    data = _load(text)
    if data.get("kind") == "file":
        return FileSpec.from_dict(data)
    return DatasetSpec.from_dict(data)


def read_spec_file(path: str | os.PathLike[str]) -> FileSpec | DatasetSpec:
    """Load a spec from a local JSON file."""
    with open(path, "rb") as handle:
        return load_spec(handle.read())


def _dump(data: dict[str, Any], indent: int | None) -> str:
    return json.dumps(data, indent=indent, allow_nan=False, sort_keys=False)


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpecError(f"a spec must be a JSON document: {err}") from err
    if not isinstance(data, dict):
        raise SpecError("a spec must be a JSON object")
    return data


def _check_document(data: dict[str, Any], kind: str) -> None:
    version = data.get("schema_version")
    if version is None:
        raise SpecError("spec document has no schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"spec schema_version {version!r} is not supported (this mlaas4hep reads "
            f"version {SCHEMA_VERSION}); recompute the spec with this release"
        )
    if data.get("kind") != kind:
        raise SpecError(f"expected a {kind} spec, got kind {data.get('kind')!r}")


def compute_file_spec(
    url: str | os.PathLike[str],
    tree: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    step_size: int | str = DEFAULT_STEP_SIZE,
    identity: bool = True,
) -> FileSpec:
    """The FileSpec of one file, in one streaming pass over the selected numeric branches.

    Memory is bounded by ``step_size`` whatever the size of the file. Raises
    :class:`~mlaas4hep.errors.ReadError` (naming the file) for unreadable files and
    :class:`~mlaas4hep.errors.BranchError` for a selection that matches nothing.
    """
    source = normalize_url(url)
    ident = file_identity(source) if identity else {}
    with open_tree(source, tree) as root_tree:
        names = root_tree.select(include, exclude)
        infos = {name: root_tree.branches[name] for name in names}
        totals = {name: _empty_stats(info) for name, info in infos.items()}
        for chunk in root_tree.iterate(names, step_size=step_size):
            for name, info in infos.items():
                totals[name] = totals[name].merge(array_stats(info, chunk[name]))
        skipped = {n: r for n, r in root_tree.skipped.items() if _selected(n, include, exclude)}
        return FileSpec(
            source=source,
            tree=root_tree.tree_name,
            entries=root_tree.num_entries,
            identity=ident,
            branches=totals,
            skipped=skipped,
        )


def _selected(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    inc = include if include is not None else ["*"]
    if not any(matches(name, p) for p in inc):
        return False
    return not any(matches(name, p) for p in exclude or [])


@dataclass
class SpecRun:
    """The outcome of a multi-file spec computation: the dataset, the files that failed
    (file → error) and the files whose previous spec was kept unread."""

    dataset: DatasetSpec
    failures: dict[str, str]
    reused: list[str] = field(default_factory=list)


def compute_dataset_spec(
    urls: Sequence[str | os.PathLike[str]],
    tree: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    workers: int = 1,
    strict: bool = False,
    step_size: int | str = DEFAULT_STEP_SIZE,
    progress: Callable[[str, str | None], None] | None = None,
    previous: DatasetSpec | None = None,
) -> SpecRun:
    """Specs of many files, in parallel processes, merged into one DatasetSpec.

    With ``previous``, a file whose content identity and branch selection are unchanged
    keeps its FileSpec without being read again (listed in ``reused``).
    ``urls`` may hold directories, globs and ``s3://`` prefixes (see ``expand_sources``).
    A file that cannot be read is reported in ``failures`` (file → error) and the spec of
    the good ones is still returned, unless ``strict``, where the first failure raises.
    ``progress(url, error_or_None)`` is called as each file finishes.
    """
    sources = list(dict.fromkeys(normalize_url(u) for u in expand_sources(urls)))
    specs: list[FileSpec] = []
    failures: dict[str, str] = {}
    reused: list[str] = []
    if previous is not None:
        for url in sources:
            known = previous.files.get(url)
            if known is not None and _unchanged(known, tree, include, exclude):
                specs.append(known)
                reused.append(url)
                if progress is not None:
                    progress(url, None)
        sources = [url for url in sources if url not in reused]

    def record(url: str, outcome: FileSpec | BaseException) -> None:
        if isinstance(outcome, BaseException):
            if strict or not isinstance(outcome, (MlaasError, OSError)):
                raise outcome
            failures[url] = str(outcome)
        else:
            specs.append(outcome)
        if progress is not None:
            progress(url, failures.get(url))

    kwargs = {"tree": tree, "include": include, "exclude": exclude, "step_size": step_size}
    if workers <= 1 or len(sources) <= 1:
        for url in sources:
            try:
                outcome: FileSpec | BaseException = compute_file_spec(url, **kwargs)
            except (MlaasError, OSError) as err:
                outcome = err
            record(url, outcome)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(compute_file_spec, url, **kwargs): url for url in sources}
            try:
                for future in as_completed(futures):
                    error = future.exception()
                    record(futures[future], error if error else future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return SpecRun(DatasetSpec(specs), failures, reused)


def _unchanged(
    known: FileSpec,
    tree: str | None,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
) -> bool:
    """True when a file still has the content and the branch selection of its spec."""
    try:
        if not known.identity or file_identity(known.source) != known.identity:
            return False
        with open_tree(known.source, tree) as root_tree:
            selected = root_tree.select(include, exclude, warn=False)
            return root_tree.tree_name == known.tree and set(selected) == set(known.branches)
    except (MlaasError, OSError):
        return False  # recomputing reports the problem properly
