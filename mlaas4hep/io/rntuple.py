"""Reading the events of an RNTuple: the :class:`~mlaas4hep.io.event_source.EventSource`
of ROOT's columnar format, under the branch names a TTree of the same events has.

An RNTuple holds fields, which may be records and collections of records; a TTree holds
flat branches. So that one configuration reads a dataset stored either way, fields are
exposed under branch-like names by one rule, the one uproot's TTree writer and CMS
NanoAOD follow:

* a field's name is its path of record fields joined with ``_``: a collection ``Jet``
  of records with a member ``pt`` gives ``Jet_pt`` (jagged), a record ``MET`` with a
  member ``pt`` gives ``MET_pt`` (flat);
* a numeric leaf under no list is ``flat``, under one list (a collection, a
  ``std::vector``/``RVec``) ``jagged``, a ``std::array`` ``jagged`` of fixed length;
  lists of lists, strings and other types are skipped with their C++ type as the reason;
* every stored top-level collection also gives its counter ``n<name>`` (``nJet``,
  ``int32``, the number of entries of each event's list), as a TTree writer adds it,
  unless the RNTuple holds a field of that name itself (ROOT's RNTupleImporter writes
  ``nJet`` as an ``RNTupleCardinality``, read with the type it declares);
* fields that projected fields read from (the ``_collectionN`` fields ROOT's
  RNTupleImporter stores NanoAOD's collections in, read through the projected
  ``Jet_pt``, ``nJet`` …) are not listed: their values come under the projected names.

Read units are the RNTuple's clusters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep.io.branches import COUNTER_DTYPE, BranchInfo
from mlaas4hep.io.leaves import element_names, list_counts, member_name, take_element

#: uproot class names of the objects read as an RNTuple.
RNTUPLE_CLASSES = ("ROOT::RNTuple",)

#: Bytes every entry of a list takes in its pages at least: its offset (an index column
#: of 32 bits at least, before compression).
LIST_OFFSET_BYTES = 4

_CARDINALITY = re.compile(r"RNTupleCardinality<(?:std::)?(u?int(?:8|16|32|64))(?:_t)?>")


@dataclass(frozen=True)
class _Column:
    """How one branch-like name is read: ``path`` is the record fields from a top-level
    field down, ``field`` the uproot field path to request (a leaf), ``counter`` whether
    the values are the lengths of the list at ``path``, ``dtype`` the values' type,
    ``least_bytes`` what an entry takes in the pages at least, ``index`` the element of
    a fixed-size array and ``jagged`` whether the values sit in a list."""

    path: tuple[str, ...]
    field: str
    dtype: np.dtype
    least_bytes: int
    counter: bool = False
    index: tuple[int, ...] = ()
    jagged: bool = False


class RNTupleEvents:
    """The events of an open RNTuple (``ntuple``: uproot's object), by branch-like name."""

    format = "RNTuple"

    def __init__(self, ntuple: Any) -> None:
        self.ntuple = ntuple
        index_children(ntuple)
        self.branches, self.skipped, self._columns = classify_fields(ntuple)

    @property
    def num_entries(self) -> int:
        return int(self.ntuple.num_entries)

    def __contains__(self, name: object) -> bool:
        return name in self.branches or name in self.skipped

    def cluster_boundaries(self, names: Sequence[str]) -> np.ndarray:
        """The first entry of every cluster, and the number of entries (every field of
        an RNTuple starts a page at each cluster)."""
        starts = [int(c.num_first_entry) for c in self.ntuple.cluster_summaries]
        bounds = np.unique(np.asarray([0, *starts, self.num_entries], dtype=np.int64))
        return bounds[(bounds >= 0) & (bounds <= self.num_entries)]

    def arrays(
        self, names: Sequence[str], entry_start: int, entry_stop: int | None, executor: Any
    ) -> dict[str, ak.Array]:
        """``names`` for entries ``[entry_start, entry_stop)``, each read field once.

        ``executor`` is not used: uproot decompresses an RNTuple's pages itself.
        """
        columns = {name: self._columns[name] for name in dict.fromkeys(names)}
        if not columns:
            return {}
        wanted = {column.field for column in columns.values()}
        raw = self.ntuple.arrays(
            filter_name=lambda path: path in wanted,
            entry_start=entry_start,
            entry_stop=entry_stop,
            library="ak",
            how=dict,
        )
        return {name: _extract(raw, column) for name, column in columns.items()}

    def iterate(
        self,
        names: Sequence[str],
        step: int,
        entry_start: int,
        entry_stop: int | None,
        executor: Any = None,
    ) -> Iterator[dict[str, ak.Array]]:
        """``names`` in steps of ``step`` entries (``executor`` unused, as in :meth:`arrays`)."""
        stop = self.num_entries if entry_stop is None else min(entry_stop, self.num_entries)
        for start in range(entry_start, stop, max(1, step)):
            yield self.arrays(names, start, min(start + step, stop), None)

    def step_entries(self, names: Sequence[str], target_bytes: int, entries: int) -> int:
        """uproot's entries for ``target_bytes`` of ``names`` (from the page list, which
        states each column's elements), never more than the types allow: the page list
        is the file's own word."""
        columns = [self._columns[name] for name in dict.fromkeys(names)]
        if not columns:
            return 1
        wanted = {column.field for column in columns}
        stated = int(
            self.ntuple.num_entries_for(target_bytes, filter_name=lambda path: path in wanted)
        )
        least = sum(column.least_bytes for column in columns)
        return min(stated, target_bytes // least) if least else stated


def _extract(raw: dict[str, ak.Array], column: _Column) -> ak.Array:
    """The values of ``column`` out of what uproot read: the record path followed down
    (a field of a list of records is a list of its values), or a list's lengths."""
    array = raw[column.path[0]]
    for name in column.path[1:]:
        array = array[name]
    if column.counter:
        return list_counts(array, column.dtype)
    array = take_element(array, column.index, jagged=column.jagged)
    if column.dtype != _leaf_dtype(array):
        return ak.values_astype(array, column.dtype)
    return array


def _leaf_dtype(array: ak.Array) -> np.dtype | None:
    layout = ak.to_layout(array)
    while not isinstance(layout, ak.contents.NumpyArray):
        if not hasattr(layout, "content"):
            return None
        layout = layout.content
    return layout.data.dtype


def index_children(ntuple: Any) -> None:
    """Fill uproot's per-field lists of child fields in one pass over the field records.

    uproot finds a field's children by scanning every field record, once per field:
    quadratic in the number of fields, 2.3 s of a 2-core machine for the 1,679 fields of
    a CMS NanoAOD RNTuple, paid at every open (by the first ``iteritems``,
    ``num_entries_for`` or ``arrays``). The lists filled here are the ones uproot would
    compute (same rule: a field's records whose parent it is, an anonymous child
    replaced by its own children, in field-id order; a test compares them); an uproot
    without these attributes is left to compute them itself.
    """
    records = getattr(ntuple, "field_records", None)
    fields = getattr(ntuple, "all_fields", None)
    if not records or not fields or len(fields) != len(records):
        return
    if not all(hasattr(f, "_fields") and hasattr(f, "is_anonymous") for f in fields):
        return
    children: list[list[int]] = [[] for _ in records]
    for fid, record in enumerate(records):
        parent = record.parent_field_id
        if parent != fid and 0 <= parent < len(records):
            children[parent].append(fid)
    resolved: dict[int, list[Any]] = {}

    def of(fid: int) -> list[Any]:
        if fid not in resolved:
            found: list[Any] = []
            for child in children[fid]:
                found.extend(of(child) if fields[child].is_anonymous else [fields[child]])
            resolved[fid] = found
        return resolved[fid]

    for fid, field in enumerate(fields):
        if field._fields is None:
            field._fields = of(fid)


def classify_fields(
    ntuple: Any,
) -> tuple[dict[str, BranchInfo], dict[str, str], dict[str, _Column]]:
    """The numeric branch-like names of an RNTuple (see the module's rule), the skipped
    ones with their reason, and how to read each numeric one."""
    fields = dict(ntuple.iteritems(recursive=True))
    typenames = {path: field.typename for path, field in fields.items()}
    records = ntuple.field_records
    sources = {id(records[r.source_field_id]) for r in records if r.source_field_id is not None}
    hidden = {path for path, field in fields.items() if id(field.record) in sources}
    walk = _Walk(typenames, hidden)
    form = ntuple.to_akform()[0]  # (form, field names)
    for name, content in zip(form.fields, form.contents, strict=True):
        walk.field(content, (name,), 0)
    branches: dict[str, BranchInfo] = {}
    columns: dict[str, _Column] = {}
    stored = {path for path, field in fields.items() if field.record.source_field_id is None}
    # a projected list's counter: the cardinality field projected from the same collection
    cardinality_of = {
        fields[name].record.source_field_id: name
        for name in form.fields
        if _CARDINALITY.search(typenames.get(name, ""))
    }
    for top, found in walk.found.items():
        is_collection = top in walk.lists and top in stored
        leaf = next((c for info, c in found if info.kind == "jagged"), None)
        counter = f"n{top}" if top in stored else cardinality_of.get(_source_of(fields, top))
        if (
            is_collection
            and leaf is not None
            and counter not in walk.names
            and counter not in branches
        ):
            branches[counter] = BranchInfo(counter, "flat", COUNTER_DTYPE.name)
            columns[counter] = _Column(
                (top,), leaf.field, COUNTER_DTYPE, LIST_OFFSET_BYTES, counter=True
            )
        for info, column in found:
            if top in walk.lists and counter is not None and info.kind == "jagged":
                info = BranchInfo(info.name, info.kind, info.dtype, counter=counter)
            branches[info.name] = info
            columns[info.name] = column
    return branches, walk.skipped, columns


def _source_of(fields: dict[str, Any], top: str) -> int | None:
    field = fields.get(top)
    return None if field is None else field.record.source_field_id


class _Walk:
    """One pass over an RNTuple's awkward form, collecting its branch-like names."""

    def __init__(self, typenames: dict[str, str], hidden: set[str]) -> None:
        self.typenames = typenames
        self.hidden = hidden
        self.found: dict[str, list[tuple[BranchInfo, _Column]]] = {}
        self.skipped: dict[str, str] = {}
        self.names: set[str] = set()
        self.lists: set[str] = set()  # top-level fields that are lists

    def field(self, form: Any, path: tuple[str, ...], lists: int) -> None:
        dotted = ".".join(path)
        if dotted in self.hidden:
            return
        name = member_name(path)
        kind = form.parameters.get("__array__")
        if isinstance(form, ak.forms.RecordForm):
            for member, content in zip(form.fields, form.contents, strict=True):
                self.field(content, (*path, member), lists)
        elif isinstance(form, ak.forms.ListOffsetForm | ak.forms.ListForm) and kind not in (
            "string",
            "bytestring",
        ):
            if lists:
                self._skip(name, dotted, "a list of lists")
            else:
                if len(path) == 1:
                    self.lists.add(path[0])
                self.field(form.content, path, lists + 1)
        elif isinstance(form, ak.forms.RegularForm) and _numeric(_fixed_leaf(form)[1]):
            shape, leaf = _fixed_leaf(form)
            dtype = _dtype_of(leaf, self.typenames.get(dotted, ""))
            kind = "jagged" if lists else "flat"
            for i, (element, index) in enumerate(element_names(name, shape)):
                # the list's offsets are stored once for all its elements
                least = (LIST_OFFSET_BYTES if i == 0 else 0) if lists else dtype.itemsize
                column = _Column(path, dotted, dtype, least, index=index, jagged=bool(lists))
                self._add(BranchInfo(element, kind, dtype.name), column)
        elif _numeric(form):
            dtype = _dtype_of(form, self.typenames.get(dotted, ""))
            info = BranchInfo(name, "jagged" if lists else "flat", dtype.name)
            least = LIST_OFFSET_BYTES if lists else dtype.itemsize
            self._add(info, _Column(path, dotted, dtype, least, jagged=bool(lists)))
        else:
            self._skip(name, dotted, "not numeric")

    def _add(self, info: BranchInfo, column: _Column) -> None:
        if info.name in self.names:
            self.skipped[".".join(column.path)] = f"its name collides with {info.name!r}"
            return
        self.names.add(info.name)
        self.found.setdefault(column.path[0], []).append((info, column))

    def _skip(self, name: str, dotted: str, why: str) -> None:
        typename = self.typenames.get(dotted) or "a record"
        self.skipped[name] = f"{typename} ({why})"


def _fixed_leaf(form: Any) -> tuple[tuple[int, ...], Any]:
    """The shape of nested fixed-size arrays (``std::array<std::array<…>>``) and the
    form of their values."""
    shape: list[int] = []
    while isinstance(form, ak.forms.RegularForm):
        shape.append(int(form.size))
        form = form.content
    return tuple(shape), form


def _numeric(form: Any) -> bool:
    return (
        isinstance(form, ak.forms.NumpyForm)
        and form.inner_shape == ()
        and np.dtype(form.primitive).kind in "biuf"
    )


def _dtype_of(form: Any, typename: str) -> np.dtype:
    """The dtype of a numeric leaf: the one an ``RNTupleCardinality`` declares (uproot
    reads them as int64), else the one uproot reads."""
    match = _CARDINALITY.search(typename)
    return np.dtype(match.group(1)) if match else np.dtype(form.primitive)
