"""FileSpec and DatasetSpec: the JSON documents of what a file and a dataset hold.

A :class:`FileSpec` describes one ROOT file: its :class:`~.statistics.BranchStats` per
numeric branch, its entries and a content identity (size + checksum or ETag) so that an
unchanged file is never read twice.

A :class:`DatasetSpec` is the set of FileSpecs of a dataset, keyed by file. Merging is a
union of those sets, so it is associative, commutative and idempotent by construction,
whatever order or tree shape the serverless merges take, and a file delivered twice is
counted once. The dataset-wide statistics are derived from the files in key order, so
they are bit-identical however the specs were merged. Both are JSON documents with a
``schema_version``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from mlaas4hep.errors import BranchError, SchemaVersionError, SpecError
from mlaas4hep.spec.statistics import BranchStats

SCHEMA_VERSION = 1


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
