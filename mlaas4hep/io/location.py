"""Where a file lives: one :class:`Location` per URL scheme, chosen in one place.

``file`` (a local path), ``s3://bucket/key``, ``root://host:port//path`` and
``https://`` each have a module that implements this small interface, as uproot's
``source/*.py`` implement its ``Source``: how uproot opens the file, the file's content
identity, how a directory, prefix or glob expands to files, and reading or writing a
small document. Code that needs one of these asks
:func:`mlaas4hep.io.schemes.location_of` instead of testing the scheme itself, so that
adding a transport touches one module (and one line of :mod:`~mlaas4hep.io.schemes`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

#: Bytes read by the first request for a remote file. uproot's default (403 bytes, the
#: bare header) costs three more sequential round trips for the directory, streamers and
#: tree metadata that most files keep in their first few kB; 64 KiB costs a remote store
#: no more time than 403 bytes and holds them (7 GETs → 5 for a paper-layout file on S3).
REMOTE_BEGIN_CHUNK = 64 * 1024

#: Hosts that HTTP clients always reach directly, whatever the proxy settings say: a
#: loopback server is never behind a proxy (and a proxy would not reach it).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def normalize_url(url: str | os.PathLike[str]) -> str:
    """The canonical form of a file location: absolute local path, or the URL unchanged."""
    text = os.fspath(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def scheme(url: str | os.PathLike[str]) -> str:
    """``file``, ``root``, ``s3``, ``https`` … (the part before ``://``; ``file`` without)."""
    text = os.fspath(url)
    return text.split("://", 1)[0] if "://" in text else "file"


class Location:
    """What mlaas4hep needs from a place files live in (one subclass per scheme)."""

    #: The URL schemes this location serves.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Whether reading goes over the network (the service reads such URLs itself).
    remote: ClassVar[bool] = True

    def uproot_options(
        self, url: str, redirects: Callable[[str], bool] | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``uproot.open`` of ``url``.

        ``redirects`` says which URLs a redirect may lead to (None: any). Only the HTTP
        location follows redirects itself; the others ignore it.
        """
        return {"begin_chunk_size": REMOTE_BEGIN_CHUNK}

    def identity(self, url: str) -> dict[str, Any]:
        """Size plus a checksum, ETag or version: what tells two versions apart."""
        return {}

    def expand(self, text: str) -> list[str]:
        """The files that ``text`` names (a directory, prefix or glob; else itself)."""
        return [text]

    def read_bytes(self, url: str) -> bytes:
        raise NotImplementedError(f"reading documents from {scheme(url)}:// is not supported")

    def write_bytes(self, url: str, data: bytes) -> None:
        raise NotImplementedError(f"writing documents to {scheme(url)}:// is not supported")

    def put_tree(self, source: Path, target: str) -> None:
        """Copy the local directory ``source`` to ``target`` (a directory or prefix)."""
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            self.write_bytes(f"{target}/{path.relative_to(source).as_posix()}", path.read_bytes())
