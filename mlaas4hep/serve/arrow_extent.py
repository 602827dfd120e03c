"""How many events an Arrow or Parquet body holds, and how big it decodes: read before the work.

A bulk body is small on the wire and large in memory when it is compressed: 939 KiB of
zstd Parquet can hold 50 million events. The service must refuse such a body (413)
*before* it decompresses anything, so this module reads only metadata:

* **Parquet**: the footer's row count and, per column chunk, its number of values times
  the width of its physical type (the pages' own "uncompressed" size is after Parquet's
  dictionary and run-length encodings, which shrink a column of zeros to nothing).
* **Arrow IPC** (stream or file): each message's header, a small flatbuffer. A record
  batch header holds its row count and the place of each buffer in the message body; a
  compressed buffer starts with its uncompressed length (the IPC format's
  ``BodyCompression``: an int64 prefix, ``-1`` when that buffer was left uncompressed).
  pyarrow gives the message header as bytes but does not parse it, so the few fields
  needed are read here from the flatbuffer (the layout of ``Message.fbs``).

Both give an :class:`Extent`; a body whose metadata cannot be parsed is refused as
unreadable by the caller (a :class:`ValueError` here).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

#: ``MessageHeader`` union members of ``Message.fbs`` that carry column data.
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3
_NO_COMPRESSION_PREFIX = -1


@dataclass(frozen=True)
class Extent:
    """What a body holds once decoded: ``rows`` (events) and ``decoded_bytes``."""

    rows: int
    decoded_bytes: int


#: Bytes per value of Parquet's physical types once decoded (variable-length ones: their
#: encoded size stands in, see :func:`parquet_extent`).
_PARQUET_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def parquet_extent(reader: Any) -> Extent:
    """The extent of a Parquet file from its footer (``reader``: a
    ``pyarrow.parquet.ParquetFile``): values × width per column chunk, plus one offset
    per row and column (lists)."""
    meta = reader.metadata
    decoded = 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            chunk = group.column(j)
            width = _PARQUET_WIDTH.get(chunk.physical_type, 0)
            decoded += max(chunk.num_values * width, chunk.total_uncompressed_size)
            decoded += 8 * group.num_rows
    if meta.num_rows < 0 or decoded < 0:
        raise ValueError("a negative count in the Parquet footer")
    return Extent(int(meta.num_rows), int(decoded))


def ipc_extent(pa: Any, buffer: Any) -> Extent:
    """The extent of an Arrow IPC stream (``buffer`` positioned at its first message)."""
    reader = pa.ipc.MessageReader.open_stream(buffer)
    rows = decoded = 0
    while True:
        try:
            message = reader.read_next_message()
        except StopIteration:
            break
        if message is None:
            break
        batch_rows, batch_bytes = _batch_extent(message.metadata.to_pybytes(), message.body)
        rows += batch_rows
        decoded += batch_bytes
    return Extent(rows, decoded)


def _batch_extent(header: bytes, body: Any) -> tuple[int, int]:
    """(rows, decoded bytes) of one message: (0, 0) for a schema message."""
    message = _Table(header, _u32(header, 0))
    kind = message.scalar(1, "<B", 0)
    if kind not in (_RECORD_BATCH, _DICTIONARY_BATCH):
        return 0, 0
    content = message.table(2)
    if content is None:
        raise ValueError("a record batch message without its header")
    if kind == _DICTIONARY_BATCH:
        batch = content.table(1)
        if batch is None:
            raise ValueError("a dictionary batch without its data")
        rows = 0  # a dictionary's values are not events
    else:
        batch = content
        rows = batch.scalar(0, "<q", 0)
    size = 0 if body is None else body.size
    compressed = batch.table(3) is not None
    decoded = 0
    for offset, length in batch.structs(2):
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError("a buffer outside its message body")
        if compressed and length >= 8:
            (prefix,) = struct.unpack("<q", body.slice(offset, 8).to_pybytes())
            decoded += length - 8 if prefix == _NO_COMPRESSION_PREFIX else prefix
        else:
            decoded += length
    if rows < 0 or decoded < 0:
        raise ValueError("a negative length in a record batch header")
    return rows, decoded


def _u32(data: bytes, at: int) -> int:
    return struct.unpack_from("<I", data, at)[0]


class _Table:
    """A flatbuffer table at ``pos`` in ``data``: its fields by index (bounds-checked by
    :mod:`struct`, which raises on a read past the end)."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos
        self.vtable = pos - struct.unpack_from("<i", data, pos)[0]
        self.vtable_size = struct.unpack_from("<H", data, self.vtable)[0]

    def _field(self, index: int) -> int | None:
        entry = 4 + 2 * index
        if entry + 2 > self.vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, self.vtable + entry)[0]
        return self.pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default: int) -> int:
        at = self._field(index)
        return default if at is None else struct.unpack_from(fmt, self.data, at)[0]

    def table(self, index: int) -> _Table | None:
        at = self._field(index)
        return None if at is None else _Table(self.data, at + _u32(self.data, at))

    def structs(self, index: int) -> list[tuple[int, int]]:
        """A vector of 16-byte structs of two int64 (``Buffer``, ``FieldNode``)."""
        at = self._field(index)
        if at is None:
            return []
        vector = at + _u32(self.data, at)
        count = _u32(self.data, vector)
        if vector + 4 + 16 * count > len(self.data):
            raise ValueError("a vector past the end of the message header")
        return [struct.unpack_from("<qq", self.data, vector + 4 + 16 * i) for i in range(count)]
