"""Exceptions raised by mlaas4hep.

Every error names what it is about (the file, the branch, the field) and the cause, so
that a physicist reading a log line knows which input to fix. Transport and decoding
failures are :class:`ReadError`, a subclass of :class:`OSError` as a user of file APIs
expects.
"""

from __future__ import annotations


class MlaasError(Exception):
    """Base class of every error raised on purpose by mlaas4hep."""


class ReadError(MlaasError, OSError):
    """A ROOT file could not be opened or decoded (missing, truncated, corrupt, unreachable)."""

    def __init__(self, url: str, cause: str, branch: str | None = None) -> None:
        self.url = url
        self.cause = cause
        self.branch = branch
        where = f"branch {branch!r} of {url}" if branch else url
        super().__init__(f"cannot read {where}: {cause}")

    def __reduce__(self):  # keep the three fields across pickling (process pools, Ray)
        return (type(self), (self.url, self.cause, self.branch))


class BranchError(MlaasError, KeyError):
    """A requested branch is missing, non-numeric, or inconsistent across files."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SpecError(MlaasError, ValueError):
    """A FileSpec/DatasetSpec is malformed, or two specs cannot be merged."""


class SchemaVersionError(SpecError):
    """A spec document was written with a schema version this release cannot read."""


class ExpressionError(MlaasError, ValueError):
    """A cut, label or weight expression is invalid or refers to unknown branches."""


class ConfigError(MlaasError, ValueError):
    """A user configuration is invalid; the message names the offending field."""


class ColumnError(MlaasError, ValueError):
    """A column's layout cannot be trusted: offsets that are negative, decrease, or point
    past the values they index. Raised before any kernel reads the column."""

    def __init__(self, branch: str, problem: str) -> None:
        self.branch = branch
        self.problem = problem
        super().__init__(f"branch {branch!r}: {problem}")

    def __reduce__(self):
        return (type(self), (self.branch, self.problem))
