"""S3 objects (``s3://bucket/key``) through fsspec's s3fs.

The endpoint comes from the standard ``AWS_ENDPOINT_URL`` (a moto server in tests and
on the local stack), credentials from the usual boto chain.
"""

from __future__ import annotations

from typing import Any

from mlaas4hep.extras import require
from mlaas4hep.io import names
from mlaas4hep.io.location import Location


def filesystem() -> Any:
    """A fresh ``s3fs.S3FileSystem`` (no instance cache: endpoints change in tests)."""
    return require("s3fs").S3FileSystem(skip_instance_cache=True)


def split(url: str) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key``."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


class S3Location(Location):
    """An S3 bucket: objects identified by size, ETag and version."""

    schemes = ("s3",)

    def identity(self, url: str) -> dict[str, Any]:
        info = filesystem().info(url)
        identity: dict[str, Any] = {
            "size": int(info["size"]),
            "etag": info.get("ETag", "").strip('"'),
        }
        if info.get("VersionId"):
            identity["version_id"] = info["VersionId"]
        return identity

    def expand(self, text: str) -> list[str]:
        """Every ``*.root`` under a prefix ending in ``/``, a glob's matches, or the URL."""
        if not (text.endswith("/") or names.is_pattern(text)):
            return [text]
        pattern = text if names.is_pattern(text) else text + "**/*.root"
        return sorted(f"s3://{p}" for p in filesystem().glob(pattern))

    def read_bytes(self, url: str) -> bytes:
        with filesystem().open(url, "rb") as handle:
            return handle.read()

    def write_bytes(self, url: str, data: bytes) -> None:
        with filesystem().open(url, "wb") as handle:
            handle.write(data)

    def put_tree(self, source, target: str) -> None:  # one client for every file
        fs = filesystem()
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            fs.put_file(str(path), f"{target}/{path.relative_to(source).as_posix()}")


S3 = S3Location()
