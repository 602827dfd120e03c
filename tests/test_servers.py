"""Integration tests of mlaas4hep.local: real xrootd and moto processes on loopback."""

from __future__ import annotations

import os
import socket
import tempfile
import zlib
from pathlib import Path

import pytest

from mlaas4hep.local.moto import MotoServer
from mlaas4hep.local.processes import (
    ManagedServer,
    ServerError,
    free_port,
    free_ports,
    tcp_listeners,
)
from mlaas4hep.local.xrootd import XRootDServer

pytestmark = pytest.mark.integration

HZZ = "uproot-HZZ.root"
HZZ_ENTRIES = 2421


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (TIME_WAIT leftovers do not count)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        pass
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    return True


def _only_loopback_listeners(port: int) -> None:
    listeners = tcp_listeners(port)
    if listeners is None:
        pytest.skip("no /proc/net/tcp on this system")
    assert listeners, f"nothing listens on port {port}"
    assert {addr for addr, _inode in listeners} == {"0100007F"}  # 127.0.0.1 only


@pytest.fixture
def export_dir():
    path = Path(tempfile.mkdtemp(prefix="mlaas4hep-test-export-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _assert_start_stop(server: ManagedServer) -> None:
    assert server.pid is None and not server.is_running()
    server.start()
    pid, port = server.pid, server.port
    try:
        assert pid is not None and server.is_running()
        assert server.log_path is not None and server.log_path.exists()
        assert os.getpgid(pid) == pid  # own process group, so stop() can signal it
        _only_loopback_listeners(port)
    finally:
        server.stop()
    assert not server.is_running()
    assert _pid_gone(pid) and _group_gone(pid)
    assert _port_free(port)
    server.stop()  # idempotent


def test_free_ports_are_distinct_and_avoid_the_ones_given():
    for _ in range(50):  # one at a time, the kernel may hand the same port back twice
        first = free_port()
        ports = free_ports(5, avoid=[first])
        assert len(set(ports)) == 5 and first not in ports


def test_free_port_is_bindable():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_xrootd_start_stop(export_dir):
    _assert_start_stop(XRootDServer(export_dir))


def test_moto_start_stop():
    _assert_start_stop(MotoServer())


def test_context_manager_and_urls(export_dir):
    with XRootDServer(export_dir) as server:
        assert server.is_running()
        assert server.url == f"root://127.0.0.1:{server.port}"
        expected = f"root://127.0.0.1:{server.port}/{export_dir.resolve().as_posix()}/a/b.root"
        assert server.url_for("a/b.root") == expected
        assert server.url_for("a/b.root").count("//") == 2  # root://host:port//abs/path
        with pytest.raises(ValueError):
            server.url_for("../outside.root")
    assert not server.is_running()
    env = MotoServer(port=12345).env()
    assert env == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:12345",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_uproot_reads_through_xrootd(xrootd_server, publish_to_xrootd, shared_data):
    url = publish_to_xrootd(shared_data / HZZ)
    assert url.startswith(f"root://127.0.0.1:{xrootd_server.port}//")
    import uproot

    with uproot.open(url) as f:
        assert f["events"].num_entries == HZZ_ENTRIES


def test_xrootd_answers_adler32_checksum(xrootd_server, publish_to_xrootd, shared_data):
    publish_to_xrootd(shared_data / HZZ)
    expected = zlib.adler32((shared_data / HZZ).read_bytes()) & 0xFFFFFFFF
    assert xrootd_server.checksum(HZZ) == f"adler32 {expected:08x}"


def test_uproot_reads_through_moto_s3(moto_server, publish_to_s3, shared_data):
    assert os.environ["AWS_ENDPOINT_URL"] == moto_server.endpoint_url
    url = publish_to_s3(shared_data / HZZ, bucket="servers-test", key=f"data/{HZZ}")
    keys = moto_server.client("s3").list_objects_v2(Bucket="servers-test")["Contents"]
    assert [k["Key"] for k in keys] == [f"data/{HZZ}"]
    import uproot

    with uproot.open(url) as f:
        assert f["events"].num_entries == HZZ_ENTRIES


def test_moto_on_a_taken_port_fails_with_its_log():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = MotoServer(port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"(?s)exited with status.*moto log.*in use"):
            server.start()
        assert not server.is_running()
        assert _pid_gone(server.pid)


def test_xrootd_on_a_taken_port_fails(export_dir):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = XRootDServer(export_dir, port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match="already in use"):
            server.start()
        assert server.pid is None


def test_xrootd_config_error_fails_with_its_log(export_dir):
    server = XRootDServer(export_dir, extra_config=["all.export relative/path"])
    with pytest.raises(ServerError, match=r"(?s)xrootd log.*non-absolute export path"):
        server.start()
    assert _pid_gone(server.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="the xrootd user only matters when run as root")
def test_xrootd_refuses_an_export_its_user_cannot_read():
    private = Path(tempfile.mkdtemp(prefix="mlaas4hep-private-"))  # mode 0700
    try:
        with pytest.raises(RuntimeError, match="not readable by the 'xrootd' user"):
            XRootDServer(private).start()
    finally:
        private.rmdir()


def test_missing_xrootd_binary_says_how_to_install(export_dir, monkeypatch):
    monkeypatch.setenv("PATH", str(export_dir))  # a directory without xrootd
    with pytest.raises(RuntimeError, match=r"xrootd-server"):
        XRootDServer(export_dir).start()
