"""A small threaded web server for tests: files of a directory over real loopback sockets.

Python's ``http.server`` answers ``Range`` with the whole file; this one writes the
``206 Partial Content`` answer itself (one range per request, as mlaas4hep asks), with
``Content-Range``, an ``ETag`` and a ``Last-Modified`` taken from the file's size and
modification time. ``FileServer(root, ranges=False)`` is a server that ignores ``Range``
(``200`` and the whole body); a missing file is a 404; ``redirect(path, location)`` makes
one path answer ``302``. Every request is recorded (``requests``), so a test can tell
what reached the server.

The port is bound as port 0 in this process, so there is no race for it.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import re
import threading
from pathlib import Path

from mlaas4hep.local.processes import LOOPBACK

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class FileServer:
    """Serves ``root`` on ``http://127.0.0.1:PORT/``; a context manager."""

    def __init__(self, root: str | Path, *, ranges: bool = True) -> None:
        self.root = Path(root)
        self.ranges = ranges
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url_for(self, name: str) -> str:
        return f"{self.url}/{name}"

    def redirect(self, path: str, location: str) -> None:
        """Make ``GET path`` answer ``302 Found`` pointing at ``location``."""
        self.redirects["/" + path.lstrip("/")] = location

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                with server._lock:
                    server.requests.append((self.command, self.path, self.headers.get("Range")))
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = (server.root / self.path.lstrip("/")).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                stat = path.stat()
                start, stop = 0, len(data)
                wanted = _RANGE.match(self.headers.get("Range", "")) if server.ranges else None
                if wanted and (wanted.group(1) or wanted.group(2)):
                    first, last = wanted.groups()
                    if first:
                        start, stop = (
                            int(first),
                            min(len(data), int(last) + 1 if last else len(data)),
                        )
                    else:
                        start = max(0, len(data) - int(last))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(stop - start))
                self.send_header("ETag", f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"')
                modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
                self.send_header("Last-Modified", modified)
                self.end_headers()
                # a client that wanted a range may hang up on the whole file
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if body:
                        self.wfile.write(data[start:stop])

        return Handler
