"""Which URLs ``POST /predict_file`` may read: the configured ``file_sources`` only.

The service reads a URL with the task's own credentials, so a URL from a client is a
request to use them: without a check, any object the task role can read (the models
bucket, other datasets) and any XRootD host the task can reach would be one request
away, and the error text ("no such key") would tell a caller what exists; a web URL
would let a caller make the service fetch from any host it can reach (an SSRF). A URL
is read only if it lies under one of the configured prefixes (``s3://bucket/prefix``,
``root://host[:port]/path`` or ``https://host[:port]/path``, ``http://`` too); anything
else is refused with the same answer whether or not the object exists, before anything
is contacted. A web server's redirect is followed only to a URL that is itself under a
configured prefix (:func:`covered`, which the service gives the reader).

Matching is on the parsed URL, not the text: the scheme, the bucket or host (exactly,
case aside), the port (1094 for XRootD, 443 and 80 for the web when not given), then a
plain prefix of the key or path (write prefixes with their final ``/``). URLs with user
information, a query, a fragment, ``..`` segments, backslashes or control characters,
and web paths with an empty segment (``//``), are refused outright: they are where two
readers of one URL disagree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from mlaas4hep.serve.payloads import RequestError
from mlaas4hep.serve.protocol import FILE_URL_SCHEMES

XROOTD_PORT = 1094
#: The port of each scheme ``POST /predict_file`` reads, when a URL does not give one.
DEFAULT_PORTS: dict[str, int | None] = {"s3": None, "root": XROOTD_PORT, "https": 443, "http": 80}
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True)
class Source:
    """A parsed ``file_sources`` entry or request URL: scheme, host (bucket), port, path."""

    scheme: str
    host: str
    port: int | None
    path: str

    def covers(self, other: Source) -> bool:
        return (
            self.scheme == other.scheme
            and self.host == other.host
            and self.port == other.port
            and other.path.startswith(self.path)
        )


def parse_source(url: str) -> Source | None:
    """``url`` as a :class:`Source`, or None when it is not a plain s3/root/http(s) URL."""
    if _UNSAFE.search(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in FILE_URL_SCHEMES or parts.query or parts.fragment or "?" in url:
        return None
    if "@" in parts.netloc or not parts.hostname:
        return None
    if ".." in parts.path.split("/") or "%" in parts.path:
        return None
    if scheme == "s3":
        if port is not None:
            return None
        return Source("s3", parts.hostname, None, parts.path.lstrip("/"))
    host, port = parts.hostname.lower(), port or DEFAULT_PORTS[scheme]
    if scheme == "root":
        return Source("root", host, port, "/" + parts.path.lstrip("/"))
    path = parts.path or "/"
    if "//" in path:
        return None
    return Source(scheme, host, port, path)


def covered(url: str, sources: Sequence[str]) -> bool:
    """Whether one of ``sources`` covers ``url`` (see the module docstring)."""
    wanted = parse_source(url)
    if wanted is None:
        return False
    for entry in sources:
        allowed = parse_source(entry)
        if allowed is not None and allowed.covers(wanted):
            return True
    return False


def check_file_url(url: str, sources: Sequence[str]) -> str:
    """``url`` if a configured source covers it; a 403 that says nothing about the
    object otherwise (the same text whether it exists or not) nor names the sources."""
    if covered(url, sources):
        return url
    hint = "" if sources else " (it has none: upload the file as the request body)"
    raise RequestError(
        f"{url[:200]!r} is not under the sources this service is configured to read "
        f"(file_sources){hint}",
        field="url",
        status=403,
    )
