"""Which :class:`~mlaas4hep.io.location.Location` serves a URL: the one dispatch on scheme."""

from __future__ import annotations

import os

from mlaas4hep.io.https import HTTPS
from mlaas4hep.io.local import LOCAL
from mlaas4hep.io.location import Location, scheme
from mlaas4hep.io.s3 import S3
from mlaas4hep.io.xrootd import XROOTD

_BY_SCHEME: dict[str, Location] = {
    name: location for location in (LOCAL, S3, XROOTD, HTTPS) for name in location.schemes
}


class _Generic(Location):
    """A scheme without a module here: uproot opens it through fsspec, as it is."""


_GENERIC = _Generic()


def location_of(url: str | os.PathLike[str]) -> Location:
    """The :class:`Location` of ``url`` (another fsspec scheme: a generic remote one)."""
    return _BY_SCHEME.get(scheme(url), _GENERIC)
