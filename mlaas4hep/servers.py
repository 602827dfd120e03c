"""Real local servers (XRootD and moto S3) for integration tests and the local stack.

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
import errno
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Self

__all__ = [
    "LOOPBACK",
    "ManagedServer",
    "MotoServer",
    "ServerError",
    "XRootDServer",
    "free_port",
    "tcp_listeners",
]

LOOPBACK = "127.0.0.1"
LOG_TAIL_LINES = 40
XROOTD_USER = "xrootd"
INSTALL_HINT = "run scripts/install_system_deps.sh (it apt-get installs xrootd-server)"


class ServerError(RuntimeError):
    """A local server could not be configured, started, or did not become ready."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now.

    The port is found by binding port 0 and closing the socket, so another process may
    take it before the caller binds it; :class:`ManagedServer` reports such a race as a
    start failure with the server's log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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


@atexit.register
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


# ---------------------------------------------------------------------------------------
# XRootD


# 127.0.0.1 in /proc/net/tcp (little-endian) and as IPv4-mapped/::1 in /proc/net/tcp6
_LOOPBACK_HEX = {
    "0100007F",
    "0000000000000000FFFF00000100007F",
    "00000000000000000000000001000000",
}


def _user_can_read_dir(path: Path, uid: int, gids: set[int]) -> str | None:
    """None if (uid, gids) can traverse every parent of ``path`` and list ``path``.

    Otherwise the first directory that blocks it. Mode bits only (no ACLs); root
    always passes.
    """
    if uid == 0:
        return None
    path = path.resolve()
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        need = 0o5 if directory == path else 0o1  # r-x on the target, --x above it
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 0o7
        elif st.st_gid in gids:
            bits = (st.st_mode >> 3) & 0o7
        else:
            bits = st.st_mode & 0o7
        if bits & need != need:
            return str(directory)
    return None


class XRootDServer(ManagedServer):
    """A standalone ``xrootd`` data server exporting one directory on 127.0.0.1.

    ``url_for("sub/file.root")`` gives ``root://127.0.0.1:PORT//<export>/sub/file.root``
    (XRootD paths are absolute: the exported directory is not a chroot).
    ``extra_config`` lines are appended to the generated configuration file.
    """

    name = "xrootd"

    def __init__(
        self,
        export_dir: str | os.PathLike[str],
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        *,
        extra_config: Iterable[str] = (),
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.export_dir = Path(export_dir).resolve()
        self.extra_config = list(extra_config)
        self.binary = shutil.which("xrootd")
        self.run_as: str | None = None
        self.config_path: Path | None = None
        self._listen_sock: socket.socket | None = None
        super().__init__(port, workdir, start_timeout=start_timeout, stop_timeout=stop_timeout)

    @property
    def url(self) -> str:
        return f"root://{self.host}:{self.port}"

    def url_for(self, path: str | os.PathLike[str] = "") -> str:
        """URL of ``path``, relative to the exported directory (absolute paths inside it
        are accepted too)."""
        target = (self.export_dir / path).resolve()
        if target != self.export_dir and self.export_dir not in target.parents:
            raise ValueError(f"{path} is not inside the exported directory {self.export_dir}")
        return f"{self.url}/{target.as_posix()}"

    # -- configuration --------------------------------------------------------------
    def _check_environment(self) -> None:
        if self.binary is None:
            raise ServerError(
                f"the xrootd daemon is not installed (no `xrootd` on PATH): {INSTALL_HINT}"
            )
        if not self.export_dir.is_dir():
            raise ServerError(f"XRootD export directory {self.export_dir} does not exist")
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(XROOTD_USER)
            except KeyError:
                raise ServerError(
                    f"xrootd refuses to run as root and there is no {XROOTD_USER!r} user to "
                    f"run it as: {INSTALL_HINT}, or run as an unprivileged user"
                ) from None
            self.run_as = XROOTD_USER
            gids = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
            blocked = _user_can_read_dir(self.export_dir, user.pw_uid, gids)
            if blocked is not None:
                raise ServerError(
                    f"XRootD export directory {self.export_dir} is not readable by the "
                    f"{XROOTD_USER!r} user the daemon runs as (blocked at {blocked}); pass a "
                    f"directory that user can read, e.g. a temporary directory with mode 0755 "
                    f"(files are never copied behind your back)"
                )
        elif not os.access(self.export_dir, os.R_OK | os.X_OK):
            raise ServerError(f"XRootD export directory {self.export_dir} is not readable")

    def _config_text(self, admin: Path, pids: Path) -> str:
        lines = [
            "# generated by mlaas4hep.servers.XRootDServer",
            f"xrd.port {self.port}",
            f"all.export {self.export_dir.as_posix()}",
            "xrootd.chksum adler32",
            f"all.adminpath {admin.as_posix()}",
            f"all.pidpath {pids.as_posix()}",
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _state_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "xrootd-state"

    def _cwd(self) -> Path | None:
        return self._state_dir()

    def _prepare(self) -> None:
        self._check_environment()
        assert self.workdir is not None
        if self._own_workdir:
            self.workdir.chmod(0o755)  # mkdtemp makes 0700; the daemon must traverse it
        # what the daemon writes (admin socket, pid file, core files) lives in a
        # directory of its own, owned by the user it runs as; the caller's workdir
        # itself is never chown-ed
        state = self._state_dir()
        admin, pids = state / "admin", state / "run"
        for directory in (state, admin, pids):
            directory.mkdir(exist_ok=True)
        if self.run_as is not None:
            user = pwd.getpwnam(self.run_as)
            for directory in (state, admin, pids):
                os.chown(directory, user.pw_uid, user.pw_gid)
            gids = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
            blocked = _user_can_read_dir(state, user.pw_uid, gids)
            if blocked is not None:
                raise ServerError(
                    f"XRootD work directory {self.workdir} is not reachable by the "
                    f"{self.run_as!r} user (blocked at {blocked}); pass a workdir under a "
                    f"world-traversable directory"
                )
        self.config_path = self.workdir / "xrootd.cfg"
        self.config_path.write_text(self._config_text(admin, pids))
        self.config_path.chmod(0o644)
        self._listen_sock = self._bind_loopback()

    def _bind_loopback(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # SO_REUSEADDR: a restart must not fail on connections in TIME_WAIT; a port
        # with a live listener still fails with EADDRINUSE
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            why = (
                "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc}"
            )
            raise ServerError(f"xrootd cannot start: {self.host}:{self.port} {why}") from None
        return sock

    def _command(self) -> list[str]:
        assert self.binary is not None and self.config_path is not None
        argv = [self.binary, "-c", str(self.config_path), "-I", "v4"]
        if self.run_as is not None:
            argv += ["-R", self.run_as]
        # The bound socket arrives on stdin; the shell moves it to fd 3 and sets
        # LISTEN_PID to its own pid, which `exec` hands on to xrootd (systemd's socket
        # activation protocol, which xrootd honours for its listening port).
        script = (
            "exec 3<&0 0</dev/null; LISTEN_FDS=1; LISTEN_PID=$$; export LISTEN_FDS LISTEN_PID; "
            'exec "$0" "$@"'
        )
        return ["/bin/sh", "-c", script, *argv]

    def _popen_kwargs(self) -> dict[str, Any]:
        assert self._listen_sock is not None
        return {"stdin": self._listen_sock.fileno()}

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(key, None)
        return env

    def _spawned(self) -> None:
        # the daemon has its copy as fd 3; ours must go, or the port would stay bound
        # (and accept connections nobody serves) after the daemon's death
        self._cleanup()

    def _cleanup(self) -> None:
        if self._listen_sock is not None:
            self._listen_sock.close()
            self._listen_sock = None

    # -- readiness ------------------------------------------------------------------
    def _protocol_ready(self) -> bool:
        # XRootD handshake: 12 zero bytes, then int32 4 and int32 2012 (big-endian).
        # A data server answers streamid=0, status=0 (kXR_ok), dlen=8, protover, flags.
        with socket.create_connection((self.host, self.port), timeout=2) as conn:
            conn.sendall(struct.pack(">iiiii", 0, 0, 0, 4, 2012))
            reply = b""
            while len(reply) < 16:
                chunk = conn.recv(16 - len(reply))
                if not chunk:
                    return False
                reply += chunk
        _streamid, status, dlen, _protover, _flags = struct.unpack(">HHiii", reply)
        if status != 0 or dlen != 8:
            return False
        return self._stat_export()

    def _stat_export(self) -> bool:
        """Stat the exported directory with the XRootD client, when it is installed."""
        try:
            from XRootD import client  # lazy: optional dependency
        except ImportError:
            return True
        status, info = client.FileSystem(self.url).stat(self.export_dir.as_posix(), timeout=5)
        return bool(status.ok and info is not None)

    def _after_ready(self) -> None:
        listeners = tcp_listeners(self.port)
        if listeners is None:  # no /proc (not Linux): trust the socket we handed over
            return
        exposed = [addr for addr, _inode in listeners if addr not in _LOOPBACK_HEX]
        if exposed:
            raise ServerError(
                f"xrootd listens on port {self.port} beyond 127.0.0.1 ({exposed}): this "
                f"build ignored the socket passed through LISTEN_FDS; refusing to run it"
            )

    def checksum(self, path: str | os.PathLike[str]) -> str:
        """``"adler32 <hex>"`` as answered by the server for a file of the export."""
        from XRootD import client  # lazy: optional dependency

        remote = self.url_for(path)[len(self.url) + 1 :]
        status, answer = client.FileSystem(self.url).query(
            client.flags.QueryCode.CHECKSUM, remote, timeout=10
        )
        if not status.ok:
            raise OSError(f"checksum query for {remote} failed: {status.message}")
        return answer.rstrip(b"\x00").decode().strip()


# ---------------------------------------------------------------------------------------
# moto (S3)


class MotoServer(ManagedServer):
    """moto's standalone server (S3 and the other AWS mocks) on 127.0.0.1."""

    name = "moto"
    access_key = "test"
    secret_key = "test"
    region = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """AWS_* variables that point boto3, s3fs and uproot's ``s3://`` at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, service: str = "s3", **kwargs: Any) -> Any:
        """A boto3 client bound to this server (boto3 is imported here, not at import)."""
        import boto3  # lazy: optional dependency

        params: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }
        params.update(kwargs)
        return boto3.client(service, **params)

    def reset(self) -> None:
        """Drop every mocked resource (buckets, objects) on the server."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with _no_proxy_opener().open(request, timeout=10) as resp:
            resp.read()

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _protocol_ready(self) -> bool:
        url = f"{self.endpoint_url}/moto-api/data.json"
        try:
            with _no_proxy_opener().open(url, timeout=2) as resp:
                body = resp.read()
                return resp.status == 200 and body.lstrip().startswith(b"{")
        except (urllib.error.URLError, OSError):
            return False


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # a loopback server must never be reached through an HTTP(S)_PROXY of the environment
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))
