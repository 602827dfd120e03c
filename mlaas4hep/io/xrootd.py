"""XRootD servers (``root://host:port//path``) through the ``xrootd`` client bindings.

uproot's own XRootD source opens files: through fsspec-xrootd, the xrootd 6 bindings
reject the numpy integer offsets that uproot passes for basket reads. The client is
told, once, to give up on an unreachable server after seconds instead of its default
ten minutes of retries.
"""

from __future__ import annotations

import os
import queue
from typing import Any

import uproot

from mlaas4hep.errors import ReadError
from mlaas4hep.extras import require
from mlaas4hep.io.location import REMOTE_BEGIN_CHUNK, Location

_CONFIGURED = False


def configure_client() -> Any:
    """The ``XRootD.client`` module, set to fail fast on unreachable servers.

    ``XRD_CONNECTIONWINDOW``/``XRD_CONNECTIONRETRY`` set by the user win; otherwise a
    server gets 10 s (``MLAAS4HEP_XROOTD_CONNECT_TIMEOUT``) and 2 attempts.
    """
    global _CONFIGURED
    client = require("XRootD.client")
    if _CONFIGURED:
        return client
    if "XRD_CONNECTIONWINDOW" not in os.environ:
        window = int(os.environ.get("MLAAS4HEP_XROOTD_CONNECT_TIMEOUT", "10"))
        client.EnvPutInt("ConnectionWindow", window)
    if "XRD_CONNECTIONRETRY" not in os.environ:
        client.EnvPutInt("ConnectionRetry", 2)
    _CONFIGURED = True
    return client


def split(url: str) -> tuple[str, str]:
    """``(host:port, /path)`` of ``root://host:port//path``."""
    server, _, path = url.partition("//")[2].partition("/")
    return server, "/" + path.lstrip("/")


class XRootDSource(uproot.source.xrootd.XRootDSource):
    """uproot's XRootD source, minus its vector read of nothing.

    A step of an iteration that lies inside baskets already read asks for no range;
    uproot still sends the server an empty vector read, which it refuses ("Read vector
    is invalid"), and the refusal, arriving asynchronously, closes the file under the
    reads that follow ("I/O operation on closed file"). No range, no request.
    """

    def chunks(
        self, ranges: list[tuple[int, int]], notifications: queue.Queue
    ) -> list[uproot.source.chunk.Chunk]:
        """The chunks of ``ranges``, read in vector reads; none (and no read) for none."""
        if not ranges:
            return []
        return super().chunks(ranges, notifications)


class XRootDLocation(Location):
    """An XRootD server: files identified by size and the server's checksum."""

    schemes = ("root",)

    def uproot_options(self, url: str, redirects: Any = None) -> dict[str, Any]:
        configure_client()
        return {
            "begin_chunk_size": REMOTE_BEGIN_CHUNK,
            "handler": XRootDSource,
        }

    def identity(self, url: str) -> dict[str, Any]:
        client = configure_client()
        flags = require("XRootD.client.flags")
        server, path = split(url)
        filesystem = client.FileSystem(f"root://{server}")
        status, stat = filesystem.stat(path)
        if not status.ok:
            raise ReadError(url, f"XRootD error: {status.message.strip()}")
        identity: dict[str, Any] = {"size": int(stat.size)}
        status, answer = filesystem.query(flags.QueryCode.CHECKSUM, path)
        if status.ok and answer:
            algorithm, _, value = answer.decode().strip("\x00 \n").partition(" ")
            identity[algorithm] = value.strip()
        else:
            identity["mtime"] = int(stat.modtime)
        return identity


XROOTD = XRootDLocation()
