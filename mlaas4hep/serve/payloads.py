"""Request bodies → event columns for the Vectorizer, checked against the model's branches.

Serving takes raw events, never flattened vectors. This module turns what a client sends
into the columns :meth:`mlaas4hep.transform.vectorizer.Vectorizer.transform` reads (a numpy array
per flat branch, a :class:`~mlaas4hep.io.columns.JaggedView` per jagged one):

* JSON records ``{"events": [{"nJet": 2, "Jet_pt": [51.2, 33.0], ...}, ...]}``;
* JSON columns ``{"columns": {"nJet": [2, ...], "Jet_pt": [[51.2, 33.0], ...], ...}}``;
* an Arrow IPC stream or file, or a Parquet file (flat branches as numbers, jagged ones
  as lists of numbers), for bulk scoring.

Each column is converted in one pass by numpy/itertools (no Python loop over events);
only when a check fails is the input scanned again to say where. Every problem is a
:class:`RequestError` naming the field (``events[3].Jet_pt``, ``columns.nJet``, …) and
the problem, which the service answers with a 4xx JSON body. Fields the model does not
use are ignored. Values are cast to the branch's dtype in the training data, so that
a JSON body and the ROOT file it came from give the same numbers.

The answers go the other way: :mod:`mlaas4hep.serve.answers`.
"""

from __future__ import annotations

import difflib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import ColumnError, MlaasError
from mlaas4hep.io.columns import JaggedView, check_offsets
from mlaas4hep.serve.arrow_extent import Extent, ipc_extent, parquet_extent
from mlaas4hep.transform.vectorizer import InputBranch, Vectorizer

Column = np.ndarray | JaggedView


class RequestError(MlaasError, ValueError):
    """A request the service refuses: ``status`` (4xx), the ``field`` and the ``problem``."""

    def __init__(self, problem: str, field: str | None = None, status: int = 400) -> None:
        self.problem = problem
        self.field = field
        self.status = status
        super().__init__(f"{field}: {problem}" if field else problem)

    def payload(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": str(self), "field": self.field, "problem": self.problem}


#: Digits of the longest length header read as a number: no body comes near 10**18
#: bytes, and ``int()`` refuses strings of more than 4300 digits with a ValueError.
LENGTH_DIGITS = 18


def decimal_length(text: str | bytes) -> int | None:
    """A length header's value as a number of bytes, or None unless it is ASCII digits
    alone (``str.isdigit`` also takes ``'²'``, which ``int()`` refuses), at most
    :data:`LENGTH_DIGITS` of them."""
    text = text.strip()
    if len(text) > LENGTH_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


@dataclass
class EventColumns:
    """Columns of ``n`` events, one per branch of the model, ready for the Vectorizer."""

    columns: dict[str, Column]
    n: int

    def __len__(self) -> int:
        return self.n

    def check_lists(self, max_items: int, where: str = "{branch}") -> EventColumns:
        """These columns, if no event's list holds more than ``max_items`` items (a 413
        naming the branch and the event otherwise: ``where`` formats the field)."""
        for name, column in self.columns.items():
            if isinstance(column, JaggedView) and self.n:
                counts = np.diff(column.offsets)
                longest = int(counts.argmax())
                if counts[longest] > max_items:
                    raise RequestError(
                        f"event {longest} holds {int(counts[longest])} items, above the "
                        f"limit of {max_items} per event (limits.list_items)",
                        field=where.format(branch=name),
                        status=413,
                    )
        return self

    @classmethod
    def concat(cls, parts: Sequence[EventColumns]) -> EventColumns:
        """One set of columns holding the events of ``parts`` in order (for batching)."""
        if len(parts) == 1:
            return parts[0]
        columns: dict[str, Column] = {}
        for name, first in parts[0].columns.items():
            if isinstance(first, JaggedView):
                views = [p.columns[name] for p in parts]
                counts = np.concatenate([np.diff(v.offsets) for v in views])  # type: ignore[union-attr]
                offsets = np.zeros(len(counts) + 1, dtype=np.int64)
                np.cumsum(counts, out=offsets[1:])
                content = np.concatenate(
                    [v.content[v.offsets[0] : v.offsets[-1]] for v in views]  # type: ignore[union-attr]
                )
                columns[name] = JaggedView(offsets, content)
            else:
                columns[name] = np.concatenate([p.columns[name] for p in parts])
        return cls(columns, sum(p.n for p in parts))


# ------------------------------------------------------------------------------- JSON


def from_json(body: Mapping[str, Any], vectorizer: Vectorizer, max_events: int) -> EventColumns:
    """Columns from a JSON body holding ``events`` (records) or ``columns``."""
    return to_columns(parse_json(body, vectorizer, max_events), vectorizer)


def parse_json(
    body: Mapping[str, Any], vectorizer: Vectorizer, max_events: int
) -> list[dict[str, Any]] | EventColumns:
    """The cheap part of reading a JSON body, done per request before batching.

    Records are only checked for shape and count (their conversion is done for a whole
    batch at once by :func:`batch_columns`); columns are converted right away.
    """
    events, columns = body.get("events"), body.get("columns")
    if (events is None) == (columns is None):
        raise RequestError(
            "the body must hold either 'events' (a list of records, one per event) or "
            "'columns' (branch name → list of values, one per event)",
            field="body",
        )
    if columns is not None:
        return from_columns(columns, vectorizer, max_events)
    if not isinstance(events, list):
        raise RequestError(f"expected a list of records, got {_kind(events)}", field="events")
    _check_count(len(events), max_events, "events")
    return events


def to_columns(item: list[dict[str, Any]] | EventColumns, vectorizer: Vectorizer) -> EventColumns:
    return item if isinstance(item, EventColumns) else from_records(item, vectorizer, len(item))


def batch_columns(
    items: Sequence[list[dict[str, Any]] | EventColumns], vectorizer: Vectorizer
) -> tuple[EventColumns | None, list[RequestError | None]]:
    """The events of many requests (from :func:`parse_json`) as one set of columns.

    The records of all requests are converted in one pass; only if that fails is each
    request converted on its own, to give each bad one its own error (with its own
    event numbers) while the others are still scored. Returns the columns of the good
    requests, in order, and per request its error or None.
    """
    errors: list[RequestError | None] = [None] * len(items)
    records = [item for item in items if not isinstance(item, EventColumns)]
    if len(records) == len(items) and len(items) > 1:
        try:
            merged = list(chain.from_iterable(records))
            return from_records(merged, vectorizer, len(merged)), errors
        except RequestError:
            pass
    parts = []
    for index, item in enumerate(items):
        try:
            parts.append(to_columns(item, vectorizer))
        except RequestError as err:
            errors[index] = err
    return (EventColumns.concat(parts) if parts else None), errors


def from_records(records: Any, vectorizer: Vectorizer, max_events: int) -> EventColumns:
    """Columns from ``[{"branch": value, ...}, ...]``, one record per event."""
    if not isinstance(records, list):
        raise RequestError(f"expected a list of records, got {_kind(records)}", field="events")
    _check_count(len(records), max_events, "events")
    if set(map(type, records)) != {dict}:
        i = next(i for i, r in enumerate(records) if not isinstance(r, dict))
        raise RequestError(
            f"expected a record (an object of branches), got {_kind(records[i])}",
            field=f"events[{i}]",
        )
    columns: dict[str, Column] = {}
    for block in vectorizer.inputs:
        try:
            values = list(map(itemgetter(block.name), records))
        except KeyError:
            i = next(i for i, r in enumerate(records) if block.name not in r)
            raise RequestError(
                _missing(block.name, records[i]), field=f"events[{i}].{block.name}"
            ) from None
        columns[block.name] = _column(block, values, lambda i, n=block.name: f"events[{i}].{n}")
    return EventColumns(columns, len(records))


def from_columns(columns: Any, vectorizer: Vectorizer, max_events: int) -> EventColumns:
    """Columns from ``{"branch": [value per event], ...}``."""
    if not isinstance(columns, dict):
        raise RequestError(
            f"expected an object of branch name → list of values, got {_kind(columns)}",
            field="columns",
        )
    out: dict[str, Column] = {}
    first: str | None = None
    n = 0
    for block in vectorizer.inputs:
        name = block.name
        if name not in columns:
            raise RequestError(_missing(name, columns), field=f"columns.{name}")
        values = columns[name]
        if not isinstance(values, list):
            raise RequestError(
                f"expected a list with one value per event, got {_kind(values)}",
                field=f"columns.{name}",
            )
        if first is None:
            first, n = name, len(values)
            _check_count(n, max_events, f"columns.{name}")
        elif len(values) != n:
            raise RequestError(
                f"has {len(values)} events but columns.{first} has {n}: every column must "
                "hold one value per event",
                field=f"columns.{name}",
            )
        out[name] = _column(block, values, lambda i, name=name: f"columns.{name}[{i}]")
    return EventColumns(out, n)


def check_event_count(
    n: int, max_events: int, field: str, per: str = "per JSON request", hint: str = ""
) -> None:
    """A 400 for an empty batch, a 413 for more than ``max_events`` events (``per`` says
    which limit, ``hint`` what to do instead), both naming ``field``."""
    if n == 0:
        raise RequestError("empty batch: no events to score", field=field)
    if n > max_events:
        raise RequestError(
            f"{n} events exceed the limit of {max_events} {per}" + (f" ({hint})" if hint else ""),
            field=field,
            status=413,
        )


def _check_count(n: int, max_events: int, field: str) -> None:
    check_event_count(n, max_events, field, hint="send more with POST /predict_arrow")


def _column(block: InputBranch, values: list[Any], where: Any) -> Column:
    if block.kind == "flat":
        try:
            return _cast(block, _numbers(values), where)
        except _NotANumber as bad:
            raise RequestError(bad.problem, field=where(bad.index)) from None
    if set(map(type, values)) != {list}:
        i = next(i for i, v in enumerate(values) if not isinstance(v, list))
        raise RequestError(
            f"expected a list of numbers (a jagged branch), got {_kind(values[i])}",
            field=where(i),
        )
    counts = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    content = list(chain.from_iterable(values))
    try:
        numbers = _numbers(content) if content else np.zeros(0, np.float64)
    except _NotANumber as bad:  # name the event and the position in its list
        event = int(np.searchsorted(offsets, bad.index, side="right") - 1)
        field = f"{where(event)}[{bad.index - offsets[event]}]"
        raise RequestError(bad.problem, field=field) from None
    return JaggedView(offsets, _cast(block, numbers, None))


class _NotANumber(Exception):
    def __init__(self, index: int, problem: str) -> None:
        self.index, self.problem = index, problem


def _numbers(values: list[Any]) -> np.ndarray:
    """A 1-d numeric array of ``values``; raises _NotANumber at the first non-number."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        array = None
    if array is None or array.ndim != 1 or array.dtype.kind not in "biuf":
        i = next(i for i, v in enumerate(values) if not _is_number(v))
        raise _NotANumber(i, f"expected a number, got {_kind(values[i])}")
    return array


def _cast(block: InputBranch, array: np.ndarray, where: Any) -> np.ndarray:
    target = np.dtype(block.dtype)
    if target.kind in "iu" and array.dtype.kind in "fiu":
        # an integer branch takes whole numbers its dtype holds: never a cast to INT_MIN
        info = np.iinfo(target)
        with np.errstate(invalid="ignore"):
            outside = (array < info.min) | (array > info.max)
            if array.dtype.kind == "f":
                outside |= ~np.isfinite(array) | (array != np.round(array))
        bad = np.flatnonzero(outside)
        if len(bad):
            i = int(bad[0])
            field = where(i) if where else block.name
            raise RequestError(
                f"expected an integer from {info.min} to {info.max} ({target.name}), "
                f"got {array[i].item()!r}",
                field=field,
            )
    if array.dtype == target:
        return array
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(target)


def typed_column(
    block: InputBranch,
    values: np.ndarray,
    offsets: np.ndarray | None,
    field: str,
    *,
    checked: bool = False,
) -> Column:
    """``values`` of ``block``'s branch in its dtype (whole numbers for an integer branch),
    as a jagged column when ``offsets`` are given (checked against the values, unless
    the caller made them valid by construction: ``checked``)."""
    if offsets is None:
        return _cast(block, values, lambda i: f"{field}[{i}]")
    if not checked:
        try:
            check_offsets(offsets, len(values), block.name)
        except ColumnError as err:
            raise RequestError(err.problem, field=field) from None

    def where(i: int) -> str:  # the event and the position in its list
        event = int(np.searchsorted(offsets, i, side="right") - 1)
        return f"{field}[{event}][{i - int(offsets[event])}]"

    return JaggedView(offsets, _cast(block, values, where))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, int) and abs(value) >= 2**63:
        return "an integer too large for 64 bits"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return type(value).__name__


def _missing(name: str, present: Mapping[str, Any]) -> str:
    hint = difflib.get_close_matches(name, [str(k) for k in present], n=1)
    extra = f" (did you mean to send {hint[0]!r} as {name!r}?)" if hint else ""
    return f"missing branch {name!r}, which the model needs{extra}"


# ------------------------------------------------------------------------ Arrow, Parquet


def read_table(
    data: bytes | bytearray | memoryview,
    media_type: str = "",
    *,
    max_events: int | None = None,
    max_decoded_bytes: int | None = None,
) -> Any:
    """A pyarrow Table from an Arrow IPC stream or file, or a Parquet file (by content).

    With limits, the body's metadata is read first (:mod:`mlaas4hep.serve.arrow_extent`):
    more events than ``max_events`` or more decoded bytes than ``max_decoded_bytes`` is a
    413 naming the limit, before anything is decompressed.
    """
    pa = extras.require("pyarrow")
    if len(data) == 0:
        raise RequestError("empty body: send an Arrow IPC stream or a Parquet file", "body")
    head = bytes(data[:6])
    buffer = pa.py_buffer(data)
    pq = extras.require("pyarrow.parquet") if head[:4] == b"PAR1" else None
    try:
        if pq is not None:
            source: Any = pq.ParquetFile(pa.BufferReader(buffer))
            extent = parquet_extent(source)
        else:
            stream = buffer.slice(8) if head == b"ARROW1" else buffer
            extent = ipc_extent(pa, stream)
        _check_extent(extent, max_events, max_decoded_bytes)
        if pq is not None:
            table = source.read()
        elif head == b"ARROW1":
            table = pa.ipc.open_file(buffer).read_all()
        else:
            table = pa.ipc.open_stream(buffer).read_all()
    except (pa.ArrowException, OSError, ValueError, struct.error) as err:
        if isinstance(err, RequestError):
            raise
        raise RequestError(
            f"not a readable Arrow IPC stream/file or Parquet file ({media_type or 'no '}"
            f"content type): {err}",
            field="body",
        ) from None
    _check_extent(Extent(table.num_rows, table.nbytes), max_events, max_decoded_bytes)
    return table


def _check_extent(extent: Extent, max_events: int | None, max_bytes: int | None) -> None:
    if max_events is not None and extent.rows > max_events:
        raise RequestError(
            f"{extent.rows} events exceed the limit of {max_events} per request "
            "(limits.bulk_events): split the table into several requests",
            field="body",
            status=413,
        )
    if max_bytes is not None and extent.decoded_bytes > max_bytes:
        raise RequestError(
            f"the body decodes to {extent.decoded_bytes} bytes, above the limit of "
            f"{max_bytes} (limits.decoded_bytes): split it into several requests",
            field="body",
            status=413,
        )


def from_table(table: Any, vectorizer: Vectorizer) -> EventColumns:
    """Columns from a pyarrow Table (no copy for numeric and list-of-numeric columns)."""
    pa = extras.require("pyarrow")
    names = set(table.column_names)
    if table.num_rows == 0:
        raise RequestError("empty batch: the table holds no rows", field="body")
    columns: dict[str, Column] = {}
    for block in vectorizer.inputs:
        if block.name not in names:
            raise RequestError(_missing(block.name, dict.fromkeys(names)), field=block.name)
        chunked = table.column(block.name)
        array = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
        if array.null_count:
            raise RequestError(f"holds {array.null_count} null value(s)", field=block.name)
        kind = array.type
        if block.kind == "flat":
            if not _arrow_number(pa, kind):
                raise RequestError(f"expected numbers, got Arrow type {kind}", field=block.name)
            values = array.to_numpy(zero_copy_only=False)
            columns[block.name] = typed_column(block, values, None, block.name)
            continue
        if pa.types.is_fixed_size_list(kind):
            array = pa.ListArray.from_arrays(
                pa.array(np.arange(len(array) + 1, dtype=np.int32) * kind.list_size),
                array.flatten(),
            )
            kind = array.type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not _arrow_number(
            pa, kind.value_type
        ):
            raise RequestError(
                f"expected a list of numbers per event, got Arrow type {kind}", field=block.name
            )
        if array.values.null_count:
            raise RequestError("holds null values inside its lists", field=block.name)
        offsets = np.asarray(array.offsets, dtype=np.int64)
        content = array.values.to_numpy(zero_copy_only=False)
        columns[block.name] = typed_column(block, content, offsets, block.name)
    return EventColumns(columns, table.num_rows)


def _arrow_number(pa: Any, kind: Any) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
