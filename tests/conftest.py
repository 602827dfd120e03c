"""Shared pytest fixtures: the real ROOT test files and real local servers.

* ``shared_data``: directory of the real ROOT files (``<project root>/../shared/data``).
* ``moto_server``: a moto S3 server on a free loopback port for the whole session; the
  ``AWS_*`` variables that point boto3/s3fs/uproot at it are set for the session and
  restored afterwards.
* ``xrootd_export_dir`` / ``xrootd_server``: an ``xrootd`` daemon exporting a session
  temporary directory (mode 0755, so that the unprivileged ``xrootd`` user can read it).
* ``publish_to_xrootd`` / ``publish_to_s3``: put a local file on either server and get
  its ``root://`` or ``s3://`` URL.

Tests that use a server fixture are marked ``integration`` automatically
(``pytest -m "not integration"`` skips them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from mlaas4hep.local.moto import MotoServer
from mlaas4hep.local.xrootd import XRootDServer

# No timing windows in unit tests: a property test's first example may import or compile
# (numba, TensorFlow) and take longer than hypothesis' default deadline on a busy machine.
settings.register_profile("mlaas4hep", deadline=None)
settings.load_profile("mlaas4hep")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (PROJECT_ROOT.parent / "shared" / "data").resolve()

SERVER_FIXTURES = frozenset({"moto_server", "xrootd_server", "publish_to_xrootd", "publish_to_s3"})

# variables that would point AWS clients at real credentials or another endpoint
_AWS_AMBIENT = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory holding the real ROOT files (uproot-HZZ.root, ...)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def hzz(shared_data: Path) -> tuple[Any, Any]:
    """The spec and the whole chunk of uproot-HZZ.root (flat and jagged branches)."""
    from mlaas4hep.io.tree import open_tree
    from mlaas4hep.spec.compute import compute_file_spec
    from mlaas4hep.spec.documents import DatasetSpec

    spec = DatasetSpec([compute_file_spec(shared_data / "uproot-HZZ.root")])
    with open_tree(shared_data / "uproot-HZZ.root") as tree:
        chunk = tree.arrays(tree.select())
    return spec, chunk


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A running moto server; AWS_* env vars point at it for the whole session."""
    with pytest.MonkeyPatch.context() as mp, MotoServer() as server:
        for name in _AWS_AMBIENT:
            mp.delenv(name, raising=False)
        for name, value in server.env().items():
            mp.setenv(name, value)
        if any(os.environ.get(v) for v in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY")):
            for var in ("NO_PROXY", "no_proxy"):
                current = os.environ.get(var, "")
                mp.setenv(var, ",".join(filter(None, [current, server.host, "localhost"])))
        yield server


@pytest.fixture(scope="session")
def xrootd_export_dir() -> Iterator[Path]:
    """A temporary directory (mode 0755) exported by ``xrootd_server``."""
    path = Path(tempfile.mkdtemp(prefix="mlaas4hep-xrootd-export-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def xrootd_server(xrootd_export_dir: Path) -> Iterator[XRootDServer]:
    """A running xrootd daemon exporting ``xrootd_export_dir`` on 127.0.0.1."""
    with XRootDServer(xrootd_export_dir) as server:
        yield server


@pytest.fixture(scope="session")
def publish_to_xrootd(xrootd_server: XRootDServer, xrootd_export_dir: Path) -> Callable[..., str]:
    """``publish(src, name=None) -> root:// URL``: copy a file into the export."""

    def publish(src: str | os.PathLike[str], name: str | None = None) -> str:
        target = xrootd_export_dir / (name or Path(src).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        target.chmod(0o644)  # readable by the daemon's unprivileged user
        return xrootd_server.url_for(target.relative_to(xrootd_export_dir))

    return publish


@pytest.fixture(scope="session")
def publish_to_s3(moto_server: MotoServer) -> Callable[..., str]:
    """``publish(src, bucket="mlaas4hep-test", key=None) -> s3:// URL``: upload a file."""
    client = moto_server.client("s3")
    buckets: set[str] = set()

    def publish(
        src: str | os.PathLike[str], bucket: str = "mlaas4hep-test", key: str | None = None
    ) -> str:
        if bucket not in buckets:
            client.create_bucket(Bucket=bucket)
            buckets.add(bucket)
        key = key or Path(src).name
        client.upload_file(str(src), bucket, key)
        return f"s3://{bucket}/{key}"

    return publish
