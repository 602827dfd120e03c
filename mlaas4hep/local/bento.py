"""``bentoml serve`` as a managed child process on a loopback port (tests, benchmarks).

Like the XRootD and moto servers of :mod:`mlaas4hep.local.processes`, the service is started in
its own session on a free port of 127.0.0.1, is ready once it answers ``/livez`` from a
listener that belongs to it, and is stopped by process group (the BentoML arbiter and
its worker processes together). Its environment (``BENTOML_HOME``, the
``MLAAS4HEP_SERVE_*`` settings) is given explicitly, so that a test session can run a
service on its own model store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlaas4hep.local.processes import ManagedServer, no_proxy_opener
from mlaas4hep.local.project import project_dir

SERVICE = "serving.service:Inference"


class BentoServer(ManagedServer):
    """``bentoml serve <target>`` bound to 127.0.0.1 on a free port."""

    name = "bentoml"

    def __init__(
        self,
        target: str = SERVICE,
        env: Mapping[str, str] | None = None,
        working_dir: str | os.PathLike[str] | None = None,
        python: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("start_timeout", 120.0)
        super().__init__(**kwargs)
        self.target = target
        self.env = dict(env or {})
        self.working_dir = Path(working_dir if working_dir is not None else project_dir()).resolve()
        self.python = Path(python or sys.executable)  # whose environment's bentoml serves

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        bentoml = self.python.parent / "bentoml"
        return [
            str(bentoml), "serve", self.target, "--host", self.host, "--port", str(self.port),
            "--working-dir", str(self.working_dir),
        ]  # fmt: skip

    def _cwd(self) -> Path | None:
        return self.working_dir

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return env

    def _protocol_ready(self) -> bool:
        return self.get_status("/livez") == 200

    def processes(self) -> list[int]:
        """The arbiter's PID and those of its worker processes (each in its own session)."""
        if self.pid is None:
            return []
        return [self.pid, *_children(self.pid)]

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the arbiter and its workers."""
        total = 0
        for pid in self.processes():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Stop the arbiter's group, then any worker it left behind (by PID)."""
        workers = [(pid, _start_time(pid)) for pid in self.processes()[1:]]
        super().stop()
        for pid, started in workers:
            if started is not None and _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def get_status(self, path: str, timeout: float = 2.0) -> int:
        """The HTTP status of ``GET path`` (0 when the server does not answer)."""
        try:
            with no_proxy_opener().open(f"{self.url}{path}", timeout=timeout) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return 0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _start_time(pid: int) -> int | None:
    """The start time of a process (in clock ticks since boot): tells a reused PID apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
