"""Transport and decoding failures, whatever the scheme, as one :class:`ReadError`.

uproot, fsspec, s3fs and the XRootD client raise a dozen exception types for "this file
cannot be read"; callers catch :data:`READ_FAILURES` and turn them into a
:class:`~mlaas4hep.errors.ReadError` that names the file and the cause in one line.
"""

from __future__ import annotations

import importlib
import lzma
import struct
import zlib

import uproot

from mlaas4hep.errors import ReadError

#: The error classes of the codecs uproot may inflate baskets with (module, class), each
#: where installed: a corrupt basket raises one of these, none of them an OSError.
_CODEC_ERRORS = (
    ("isal.igzip_lib", "IsalError"),
    ("zstandard", "ZstdError"),
    ("lz4.block", "LZ4BlockError"),
    ("cramjam", "DecompressionError"),
    ("deflate", "DeflateError"),
)


def _codec_errors() -> tuple[type[BaseException], ...]:
    found = []
    for module, name in _CODEC_ERRORS:
        try:
            error = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


#: Exceptions that mean "this file cannot be read", whatever the transport.
READ_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AssertionError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    zlib.error,  # a corrupt basket: its compressed bytes do not inflate
    lzma.LZMAError,
    struct.error,
    uproot.deserialization.DeserializationError,
    *_codec_errors(),
)


def describe(err: BaseException) -> str:
    """``Type: first line of the message`` (the rest of a traceback is noise in a log)."""
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    name = type(err).__name__
    return f"{name}: {first}" if first else name


def as_read_error(url: str, err: BaseException) -> ReadError:
    """``err`` as the ReadError of ``url`` (a ReadError is returned as it is)."""
    if isinstance(err, ReadError):
        return err
    if isinstance(err, FileNotFoundError):
        return ReadError(url, "no such file")
    return ReadError(url, describe(err))
