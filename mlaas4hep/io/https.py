"""Web servers (``https://``, ``http://``, and WebDAV's ``davs://``/``dav://``): ROOT
files read in byte ranges over HTTP.

Room for CERN Open Data and the grid storage (EOS, dCache, StoRM) that serves ROOT files
over HTTPS or WebDAV. Reading a file over WebDAV is a plain HTTP GET with a ``Range``
header (what ROOT's Davix plugin sends for ``davs://``), so the WebDAV schemes are read
as HTTPS and HTTP are; no WebDAV method (``PROPFIND``: listing) is used, and an URL
names one file.

This module is uproot's ``source/http.py`` for mlaas4hep, in one place because reading
needs rules uproot's own HTTP source does not keep:

* every request asks for a byte range and accepts only ``206 Partial Content`` for
  exactly that range: a server that ignores ``Range`` (``200`` with the whole body) is
  a :class:`~mlaas4hep.errors.ReadError` that says so, before its body is read, instead
  of a confusing decoding failure or a silent download of the whole file;
* redirects are followed (at most :data:`MAX_REDIRECTS`), only to ``http(s)`` URLs,
  never from ``https`` down to ``http``, credentials are never sent after one, and a
  caller may restrict where they lead (the service allows only its ``file_sources``);
* environment proxies (``HTTPS_PROXY``, ``NO_PROXY``) are honoured except for loopback
  hosts, which are always reached directly (as the service client does);
* a 404 is a ReadError that names the URL ("no such file").

A file's identity is what the server says of it in the same ranged answer: its size
(``Content-Range``), and its ``ETag`` or else its ``Last-Modified``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uproot

from mlaas4hep.errors import ConfigError, ReadError
from mlaas4hep.io.location import LOOPBACK_HOSTS, REMOTE_BEGIN_CHUNK, Location

#: The most redirects one request follows.
MAX_REDIRECTS = 5
#: Seconds to wait for a server (uproot's ``timeout`` option, when given, wins).
TIMEOUT = 30.0
#: Range requests in flight at once per open file: baskets are many small ranges, and a
#: server far away answers them faster in parallel than one after the other.
WORKERS = 8
#: The scheme each scheme of this module is requested with.
_WIRE_SCHEME = {"https": "https", "http": "http", "davs": "https", "dav": "http"}
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)

#: Whether a redirect may lead to this URL (given as the server wrote it, made absolute).
RedirectCheck = Callable[[str], bool]


def wire_url(url: str) -> str:
    """``url`` as it is requested: ``davs://`` is ``https://``, ``dav://`` is ``http://``,
    and user information (``user:password@``) is left out (it goes in a header)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((_WIRE_SCHEME[parts.scheme.lower()], netloc, *parts[2:]))


@dataclass(frozen=True)
class RangeAnswer:
    """What a server answered to a range request: the bytes, and what it says of the file."""

    data: bytes
    size: int | None
    etag: str | None
    last_modified: str | None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, limited: http(s) targets only, no https → http, and
    only where ``allowed`` says so."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, url: str, allowed: RedirectCheck | None) -> None:
        self.url = url
        self.allowed = allowed

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        target = urlsplit(newurl)
        came_from = urlsplit(req.full_url).scheme
        if target.scheme not in ("http", "https") or (came_from, target.scheme) == (
            "https",
            "http",
        ):
            raise ReadError(self.url, f"the server redirects to {newurl[:200]!r}: not followed")
        if self.allowed is not None and not self.allowed(newurl):
            raise ReadError(
                self.url,
                f"the server redirects to {newurl[:200]!r}, outside the sources this "
                "reader may follow",
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def read_range(
    url: str,
    start: int,
    stop: int,
    *,
    allowed: RedirectCheck | None = None,
    timeout: float | None = None,
) -> RangeAnswer:
    """Bytes ``[start, stop)`` of the file at ``url`` (``stop`` past the end: up to it).

    A ReadError naming ``url`` for a missing file, an unreachable server, any status but
    206, a server that ignores ``Range``, or an answer for other bytes than asked.
    """
    with _opened(url, {"Range": f"bytes={start}-{stop - 1}"}, allowed, timeout) as answer:
        if answer.status != 206:  # the body (maybe the whole file) is never read
            raise ReadError(
                url,
                f"the server ignores Range requests (it answered {answer.status}, not 206 "
                "Partial Content): ROOT files are read in byte ranges; serve the file "
                "from a server that supports them, or copy it to local disk first",
            )
        headers = answer.headers
        data = _read(url, answer)
    first, size = _content_range(url, headers.get("Content-Range", ""))
    expected = stop - start if size is None else min(stop, size) - start
    if first != start or len(data) != expected:
        raise ReadError(
            url,
            f"asked for bytes {start}-{stop - 1}, got {len(data)} bytes from {first} "
            "(the file changed while it was read, or the server answers ranges wrongly)",
        )
    return RangeAnswer(data, size, _etag(headers.get("ETag")), headers.get("Last-Modified") or None)


def _etag(value: str | None) -> str | None:
    """An ETag without its quotes (a weak one keeps its ``W/``), or None."""
    if not value:
        return None
    weak = value.startswith("W/")
    inner = value[2:] if weak else value
    return ("W/" if weak else "") + inner.strip('"')


def read_whole(url: str, *, timeout: float | None = None) -> bytes:
    """The whole document at ``url`` in one plain GET (a manifest or a spec, not a ROOT
    file), under the same rules for redirects, proxies and errors."""
    with _opened(url, {}, None, timeout) as answer:
        return _read(url, answer)


@contextlib.contextmanager
def _opened(
    url: str, headers: dict[str, str], allowed: RedirectCheck | None, timeout: float | None
) -> Iterator[Any]:
    """The server's answer to a GET of ``url``, redirects followed; every failure a
    ReadError naming ``url``."""
    parts = urlsplit(url)
    # identity: a range of the stored bytes, not of a compressed rendering of them
    request = urllib.request.Request(
        wire_url(url), headers={"Accept-Encoding": "identity", **headers}
    )
    if parts.username is not None:  # never forwarded on a redirect (unredirected header)
        pair = f"{parts.username}:{parts.password or ''}".encode()
        request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    handlers: list[urllib.request.BaseHandler] = [_Redirects(url, allowed)]
    if (parts.hostname or "") in LOOPBACK_HOSTS:
        handlers.append(urllib.request.ProxyHandler({}))
    try:
        answer = urllib.request.build_opener(*handlers).open(request, timeout=timeout or TIMEOUT)
    except ReadError:  # a redirect refused by _Redirects
        raise
    except urllib.error.HTTPError as err:
        err.close()
        if err.code in (404, 410):
            raise ReadError(url, f"no such file (HTTP {err.code} {err.reason})") from None
        raise ReadError(url, f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise ReadError(url, f"cannot reach the server: {err.reason}") from None
    except OSError as err:  # a reset or timeout while the headers arrive
        raise ReadError(url, f"cannot reach the server: {err}") from None
    with answer:
        yield answer


def _read(url: str, answer: Any) -> bytes:
    """The body of ``answer`` (a connection lost midway: a ReadError naming ``url``)."""
    try:
        return answer.read()
    except (OSError, http.client.HTTPException) as err:
        raise ReadError(url, f"the connection broke while reading: {err}") from None


def _content_range(url: str, value: str) -> tuple[int, int | None]:
    """``(first byte, size of the file or None)`` of a ``Content-Range`` header."""
    match = _CONTENT_RANGE.match(value)
    if match is None:
        raise ReadError(url, f"a 206 answer without a valid Content-Range ({value[:80]!r})")
    size = match.group(3)
    return int(match.group(1)), None if size == "*" else int(size)


class _RangeReader(uproot.source.chunk.Resource):
    """The resource of one worker thread: it asks the server for one range per task."""

    def __init__(self, file_path: str) -> None:
        self._file_path = file_path

    def __enter__(self) -> _RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @staticmethod
    def future(source: HTTPSource, start: int, stop: int) -> uproot.source.futures.ResourceFuture:
        def task(resource: _RangeReader) -> bytes:
            return source.read(start, stop)

        return uproot.source.futures.ResourceFuture(task)


class HTTPSource(uproot.source.chunk.MultithreadedSource):
    """An uproot source over HTTP range requests (see the module docstring).

    Opening it asks for the first byte, so that a missing file, a server that ignores
    ``Range`` and a redirect that may not be followed fail at ``uproot.open`` with one
    clear line. The option ``redirects`` (a :data:`RedirectCheck`) limits redirects.
    """

    ResourceClass = _RangeReader

    def __init__(self, file_path: str, **options: Any) -> None:
        self._file_path = file_path
        self._allowed: RedirectCheck | None = options.get("redirects")
        self._timeout: float | None = options.get("timeout")
        self._num_requests = 0
        self._num_requested_chunks = 0
        self._num_requested_bytes = 0
        size = self.read_answer(0, 1).size
        if size is None:
            raise ReadError(file_path, "the server does not say the size of the file")
        self._num_bytes = size
        self._executor = uproot.source.futures.ResourceThreadPoolExecutor(
            [_RangeReader(file_path) for _ in range(WORKERS)]
        )

    def read_answer(self, start: int, stop: int) -> RangeAnswer:
        return read_range(
            self._file_path, start, stop, allowed=self._allowed, timeout=self._timeout
        )

    def read(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the file."""
        return self.read_answer(start, stop).data

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_executor")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__ = state
        self._executor = uproot.source.futures.ResourceThreadPoolExecutor(
            [_RangeReader(self._file_path) for _ in range(WORKERS)]
        )


class HTTPSLocation(Location):
    """A web or WebDAV server: files identified by size and ETag or Last-Modified."""

    schemes = ("https", "http", "davs", "dav")

    def uproot_options(self, url: str, redirects: RedirectCheck | None = None) -> dict[str, Any]:
        return {
            "begin_chunk_size": REMOTE_BEGIN_CHUNK,
            "handler": HTTPSource,
            "redirects": redirects,
        }

    def identity(self, url: str) -> dict[str, Any]:
        answer = read_range(url, 0, 1)
        identity: dict[str, Any] = {}
        if answer.size is not None:
            identity["size"] = answer.size
        if answer.etag:
            identity["etag"] = answer.etag
        elif answer.last_modified:
            identity["last_modified"] = answer.last_modified
        return identity

    def expand(self, text: str) -> list[str]:
        """The URL itself: a web server lists no directories (an URL ending in ``/`` or
        holding ``*`` is refused, saying so)."""
        path = urlsplit(text).path
        if not path or path.endswith("/") or "*" in path:
            raise ConfigError(
                f"{text}: an {urlsplit(text).scheme}:// URL names one file; a web server's "
                "directories and globs are not listed: give each file's URL"
            )
        return [text]

    def read_bytes(self, url: str) -> bytes:
        return read_whole(url)


HTTPS = HTTPSLocation()
