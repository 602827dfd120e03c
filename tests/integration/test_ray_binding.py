"""The Ray head of the local stack listens on loopback only, like every server we start.

``ray start`` turns ``--node-ip-address=127.0.0.1`` into the machine's routable address,
and Ray's servers then bind every interface; :class:`~mlaas4hep.local.stack.RayHead` keeps
the node on loopback (see its ``_child_env``). This checks the result from the kernel's
side: every TCP socket in LISTEN state held by the head's process tree.
"""

from __future__ import annotations

import sys
import time

import pytest

from mlaas4hep.local.processes import is_loopback, listening_sockets, process_group
from mlaas4hep.local.stack import RayHead

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def test_ray_head_listens_on_loopback_only():
    ray = RayHead().start()
    try:
        # The raylet and the agents come up after the head answers: wait for them
        deadline = time.monotonic() + 60
        sockets = ray.listening()
        while time.monotonic() < deadline and (
            len(sockets) < 3 or not {ray.port, ray.dashboard_port} <= {p for _, _, p in sockets}
        ):
            time.sleep(0.5)
            sockets = ray.listening()
        assert len(sockets) >= 3, sockets  # GCS, raylet, dashboard at least
        ports = {port for _, _, port in sockets}
        assert {ray.port, ray.dashboard_port} <= ports, sockets
        exposed = [s for s in sockets if not is_loopback(s[1])]
        assert not exposed, f"Ray listens beyond loopback: {exposed}"
    finally:
        ray.stop()


def test_listening_sockets_of_a_process_tree(tmp_path):
    import socket
    import subprocess

    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as ManagedServer starts servers
    )
    try:
        port = int(server.stdout.readline())
        other = socket.socket()  # ours, outside the server's process group: not counted
        other.bind(("127.0.0.1", 0))
        other.listen()
        try:
            found = listening_sockets(process_group(server.pid))
        finally:
            other.close()
        assert found == [(server.pid, "127.0.0.1", port)]
    finally:
        server.kill()
        server.wait()
