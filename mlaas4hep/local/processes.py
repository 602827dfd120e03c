"""Managing the real local servers: start on a free loopback port, wait, stop by group.

The servers themselves are in :mod:`.xrootd`, :mod:`.moto`, :mod:`.bento` and
:mod:`.stack` (the Ray head); this module holds what they share, down to the sockets a
process group listens on (read from ``/proc``, to check that a server binds loopback
only).

mlaas4hep reads ROOT files over ``root://`` (XRootD) and ``s3://``. Mocking those
transports would test the mocks, so the integration tests and the local demo stack run
the real servers instead: the Debian ``xrootd`` daemon and moto's S3 server. This module
starts them as child processes on free loopback ports, waits until they answer a
protocol-level request, and stops them by process group.

Design:

* Every server binds ``127.0.0.1`` only; nothing is reachable from outside the machine.
* Each server runs in its own session (``start_new_session=True``), so :meth:`stop`
  can signal the whole process group: SIGTERM, a grace period, then SIGKILL.
* Ready means: the process is alive, the listening socket on the port is its own (read
  from ``/proc``, so a stranger already on the port is not mistaken for it), a TCP
  connection succeeds, and the server answers its protocol (XRootD handshake plus a
  ``stat`` of the export; moto's ``/moto-api/data.json``).
* stdout and stderr of the server go to one log file (:attr:`ManagedServer.log_path`),
  in a temporary work directory that :meth:`stop` removes unless one was passed;
  when a server dies during start-up or never becomes ready, :meth:`start` raises
  :class:`ServerError` (a :class:`RuntimeError`) with the last 40 lines of that log.
* Nothing heavy is imported at module level: boto3 and the XRootD Python bindings are
  imported inside the methods that need them.

XRootD specifics:

* ``xrootd`` refuses to run as root. When this process is root, the daemon is started
  with ``-R xrootd`` (the unprivileged user created by Debian's ``xrootd-server``
  package). That user must be able to read the exported directory and every directory
  above it: the directory is never copied behind the caller's back. A directory under
  ``/root`` (mode 0700) is therefore refused with a :class:`ServerError` that says so;
  pass a directory such as a ``tempfile.mkdtemp()`` chmod-ed to 0755.
* ``xrootd`` has no option to choose the interface it listens on (``-b`` means
  "background", and ``xrd.port`` only takes a port): left alone, it listens on all
  interfaces. It does, however, accept an already-bound socket through systemd's socket
  activation protocol (``LISTEN_FDS``/``LISTEN_PID``, fd 3; the Debian build links
  libsystemd). :class:`XRootDServer` binds ``127.0.0.1:PORT`` itself, hands that socket
  to the daemon as fd 3, and after start-up checks ``/proc/net/tcp*`` that nothing
  listens on the port on another address; a build without socket activation is
  stopped and reported instead of being left listening on every interface.
* The generated configuration enables ``xrootd.chksum adler32`` so that checksum
  queries are answered. The daemon may log that it cannot cache the checksum in an
  extended attribute of a file it does not own; the answer is computed all the same.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Self

LOOPBACK = "127.0.0.1"
LOG_TAIL_LINES = 40


class ServerError(RuntimeError):
    """A local server could not be configured, started, or did not become ready."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now.

    The port is found by binding port 0 and closing the socket, so another process may
    take it before the caller binds it; :class:`ManagedServer` reports such a race as a
    start failure with the server's log.
    """
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = LOOPBACK, avoid: Iterable[int] = ()) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` right now, none of them in ``avoid``.

    All are bound at once before any is released: two calls of :func:`free_port` in a row
    may get the same port back from the kernel, which a server that takes several ports
    (Ray's head) refuses.
    """
    avoided = set(avoid)
    sockets: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in avoided:
                ports.append(port)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None:
        return "(no log)"
    try:
        with open(path, errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip() or "(log is empty)"
    except OSError as exc:
        return f"(cannot read log {path}: {exc})"


def _tcp_connectable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tcp_listeners(port: int) -> list[tuple[str, str]] | None:
    """(local address in hex as in /proc/net/tcp*, socket inode) of each TCP listener on
    ``port``; None where /proc/net is not available. ``0100007F`` is 127.0.0.1: a server
    bound to loopback only lists that address alone."""
    found: list[tuple[str, str]] = []
    seen_any = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.readlines()[1:]
        except OSError:
            continue
        seen_any = True
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = TCP_LISTEN
                continue
            addr, _, hexport = fields[1].partition(":")
            if int(hexport, 16) == port:
                found.append((addr, fields[9]))
    return found if seen_any else None


def _owns_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a socket listening on ``port``; None if unknown."""
    listeners = tcp_listeners(port)
    if listeners is None:
        return None
    inodes = {f"socket:[{inode}]" for _addr, inode in listeners}
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


def _exit_status(pid: int) -> int | None:
    """Exit status of our child ``pid`` if it has exited, else None; does not reap it.

    Negative values are signal numbers, as in :attr:`subprocess.Popen.returncode`.
    """
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # already reaped
        return -1
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _exit_status(pid) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _killpg(pgid: int, sig: int) -> None:
    # servers run in their own session (setsid): the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# strong references: a server dropped without stop() is still stopped at exit
_RUNNING: set[ManagedServer] = set()
_EXIT_HOOK: list[bool] = []


def _stop_all() -> None:  # a crashed test session must not leave daemons behind
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()


class ManagedServer:
    """A server child process on a loopback port, started and stopped by PID.

    Subclasses provide :meth:`_command` (argv) and :meth:`_protocol_ready` (a
    protocol-level check run once the port accepts TCP connections), and may override
    :meth:`_prepare` (files to write before the start) and :meth:`_cleanup`.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (idempotent).
    """

    name = "server"
    host = LOOPBACK

    def __init__(
        self,
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.port: int = int(port) if port else free_port(self.host)
        self._own_workdir = workdir is None
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.workdir: Path | None = self._workdir_arg
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- hooks for subclasses -------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _protocol_ready(self) -> bool:
        """True once the server answers a request of its own protocol."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write configuration before the process starts (workdir exists)."""

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def _after_ready(self) -> None:
        """Checks once the server is ready; raise ServerError to refuse it."""

    def _spawned(self) -> None:
        """Called right after the process was created (e.g. to close inherited fds)."""

    def _cleanup(self) -> None:
        """Release what _prepare/_popen_kwargs created (called on stop and failure)."""

    def _child_env(self) -> dict[str, str]:
        return dict(os.environ)

    def _cwd(self) -> Path | None:
        return self.workdir

    # -- public API -----------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """PID of the server process (also its process-group id), None if not started."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the server process exists and has not exited."""
        proc = self._proc
        return proc is not None and proc.returncode is None and _exit_status(proc.pid) is None

    def start(self) -> Self:
        """Start the server and wait until it is ready; returns self."""
        if self.is_running():
            return self
        try:
            self._make_workdir()
            assert self.workdir is not None
            self.log_path = self.workdir / f"{self.name}.log"
            self._prepare()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            kwargs: dict[str, Any] = {"stdin": subprocess.DEVNULL}
            kwargs.update(self._popen_kwargs())
            self._proc = subprocess.Popen(
                self._command(),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd(),
                env=self._child_env(),
                start_new_session=True,
                **kwargs,
            )
        except BaseException:
            self._release()
            raise
        if not _EXIT_HOOK:  # registered with the first server, not at import
            atexit.register(_stop_all)
            _EXIT_HOOK.append(True)
        _RUNNING.add(self)
        try:
            self._spawned()
            self._wait_ready()
            self._after_ready()
        except BaseException as exc:
            log = _tail(self.log_path)
            self.stop()
            if isinstance(exc, ServerError):
                raise ServerError(
                    f"{exc}\n--- last lines of the {self.name} log ---\n{log}"
                ) from None
            raise
        return self

    def stop(self) -> None:
        """Stop the process group: SIGTERM, wait, then SIGKILL. Safe to call twice.

        The leader is reaped only after the last signal, so its pid, which is also the
        process-group id, cannot have been reused by an unrelated process meanwhile.
        """
        proc = self._proc
        if proc is not None and proc.returncode is None:
            _killpg(proc.pid, signal.SIGTERM)
            if not _wait_exit(proc.pid, self.stop_timeout):
                _killpg(proc.pid, signal.SIGKILL)
                _wait_exit(proc.pid, self.stop_timeout)
            _killpg(proc.pid, signal.SIGKILL)  # whatever the leader left in its group
            proc.wait(timeout=self.stop_timeout)  # reap
        _RUNNING.discard(self)
        self._release()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid} {state}>"

    # -- internals ------------------------------------------------------------------
    def _make_workdir(self) -> None:
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"mlaas4hep-{self.name}-"))
            self._own_workdir = True
        else:
            self._workdir_arg.mkdir(parents=True, exist_ok=True)
            self.workdir = self._workdir_arg

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.02
        while True:
            code = _exit_status(self._proc.pid)
            if code is not None:
                raise ServerError(
                    f"{self.name} (pid {self._proc.pid}) exited with status {code} "
                    f"during start-up on {self.host}:{self.port}"
                )
            # the listener must be our process's (not a stranger already on the port),
            # accept TCP connections, and answer a request of the server's protocol
            if _owns_listener(self._proc.pid, self.port) is not False and _tcp_connectable(
                self.host, self.port
            ):
                with contextlib.suppress(Exception):
                    if self._protocol_ready():
                        return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} (pid {self._proc.pid}) did not become ready on "
                    f"{self.host}:{self.port} within {self.start_timeout:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._cleanup()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self.log_path = None


def no_proxy_opener() -> urllib.request.OpenerDirector:
    """An opener that ignores HTTP(S)_PROXY: a loopback server is never reached through one."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------- listening sockets (Linux)


def process_group(root: int) -> set[int]:
    """``root``, its descendants and every process of its process group (from /proc)."""
    parent_of: dict[int, int] = {}
    groups: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        parent_of[int(entry.name)], groups[int(entry.name)] = int(fields[1]), int(fields[2])
    pids = {pid for pid, group in groups.items() if group == groups.get(root, root)} | {root}
    grew = True
    while grew:
        children = {pid for pid, parent in parent_of.items() if parent in pids} - pids
        pids |= children
        grew = bool(children)
    return pids


def _decode_address(hex_address: str) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp{,6} print each 32-bit word of the address in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """``(pid, address, port)`` of the TCP sockets in LISTEN state that ``pids`` hold open."""
    listen: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, _, port = fields[1].partition(":")
            listen[fields[9]] = (_decode_address(address), int(port, 16))
    found = []
    for pid in sorted(pids):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        inodes = set()
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        found += [(pid, *listen[inode]) for inode in sorted(inodes) if inode in listen]
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address."""
    import ipaddress

    if address.startswith("::ffff:"):
        address = address[len("::ffff:") :]
    return ipaddress.ip_address(address).is_loopback
