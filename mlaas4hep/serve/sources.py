"""Which URLs ``POST /predict_file`` may read: the configured ``file_sources`` only.

The service reads a URL with the task's own credentials, so a URL from a client is a
request to use them: without a check, any object the task role can read (the models
bucket, other datasets) and any XRootD host the task can reach would be one request
away, and the error text ("no such key") would tell a caller what exists. A URL is read
only if it lies under one of the configured prefixes (``s3://bucket/prefix`` or
``root://host[:port]/path``); anything else is refused with the same answer whether or
not the object exists, before anything is contacted.

Matching is on the parsed URL, not the text: the scheme, the bucket or host (and the
XRootD port, 1094 when not given), then a plain prefix of the key or path. URLs with
user information, a query, a fragment, ``..`` segments, backslashes or control
characters are refused outright: they are where two readers of one URL disagree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from mlaas4hep.serve.payloads import RequestError

XROOTD_PORT = 1094
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
    """``url`` as a :class:`Source`, or None when it is not a plain s3/root URL."""
    if _UNSAFE.search(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("s3", "root") or parts.query or parts.fragment or "?" in url:
        return None
    if "@" in parts.netloc or not parts.hostname:
        return None
    if ".." in parts.path.split("/") or "%" in parts.path:
        return None
    if scheme == "s3":
        if port is not None:
            return None
        return Source("s3", parts.hostname, None, parts.path.lstrip("/"))
    return Source("root", parts.hostname.lower(), port or XROOTD_PORT, "/" + parts.path.lstrip("/"))


def check_file_url(url: str, sources: Sequence[str]) -> str:
    """``url`` if a configured source covers it; a 403 that says nothing about the
    object otherwise (the same text whether it exists or not) nor names the sources."""
    wanted = parse_source(url)
    if wanted is not None:
        for entry in sources:
            allowed = parse_source(entry)
            if allowed is not None and allowed.covers(wanted):
                return url
    hint = "" if sources else " (it has none: upload the file as the request body)"
    raise RequestError(
        f"{url[:200]!r} is not under the sources this service is configured to read "
        f"(file_sources){hint}",
        field="url",
        status=403,
    )
