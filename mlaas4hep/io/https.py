"""Web servers (``https://``, ``http://``): read with uproot's HTTP source.

Room for CERN Open Data and the sites that serve ROOT files over HTTPS: uproot reads
them with range requests. A file's identity is what the server says of it (size, ETag,
Last-Modified), when it says it.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from mlaas4hep.io.location import Location


class HTTPSLocation(Location):
    """A web server: files identified by Content-Length and ETag or Last-Modified."""

    schemes = ("https", "http")

    def identity(self, url: str) -> dict[str, Any]:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=30) as answer:
            headers = answer.headers
        identity: dict[str, Any] = {}
        if headers.get("Content-Length"):
            identity["size"] = int(headers["Content-Length"])
        if headers.get("ETag"):
            identity["etag"] = headers["ETag"].strip('"')
        elif headers.get("Last-Modified"):
            identity["last_modified"] = headers["Last-Modified"]
        return identity

    def read_bytes(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.read()


HTTPS = HTTPSLocation()
