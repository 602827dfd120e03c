"""The content identity of a file: its size plus a checksum, ETag or version.

Used to skip recomputing a spec for a file that did not change, to tell two versions of
the same key apart, and to check a staged copy; each
:class:`~mlaas4hep.io.location.Location` says what identifies its files.
"""

from __future__ import annotations

from typing import Any

from mlaas4hep.errors import ReadError
from mlaas4hep.io.failures import READ_FAILURES, as_read_error
from mlaas4hep.io.location import normalize_url
from mlaas4hep.io.schemes import location_of


def file_identity(url: str) -> dict[str, Any]:
    """A content identity of ``url`` (empty where its location knows none)."""
    url = normalize_url(url)
    try:
        return location_of(url).identity(url)
    except ReadError:
        raise
    except READ_FAILURES as err:
        raise as_read_error(url, err) from err
