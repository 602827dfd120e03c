"""Staging: copy ``root://`` files into a cache (an ``s3://`` prefix or a directory).

Reading XRootD over a wide-area network at every epoch is slow; a training job can
stage its inputs first, in parallel Ray tasks (or threads without Ray), and read the
cached copies. Each copy carries the identity of its source (size and the server's
checksum, see :func:`mlaas4hep.sources.file_identity`): in S3 object metadata, or in a
``<file>.identity.json`` next to a local copy. A file whose cached identity matches
its source is not copied again. The bytes are checked while they stream (size, and
adler32 when the server gives one), so a truncated copy is never left as valid.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlaas4hep.errors import ReadError
from mlaas4hep.sources import file_identity, normalize_url, scheme

BLOCK = 8 << 20
_META_KEY = "mlaas4hep-source-identity"


def cached_url(source: str, cache: str) -> str:
    """Where ``source`` (``root://host:port//path/file.root``) lands in ``cache``."""
    path = source.partition("//")[2].partition("/")[2].lstrip("/")
    return f"{cache.rstrip('/')}/{path}"


def _s3_client() -> Any:
    from mlaas4hep import extras

    return extras.boto3().client("s3")


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def _cached_identity(target: str) -> dict[str, Any] | None:
    if scheme(target) == "s3":
        bucket, key = _split_s3(target)
        try:
            head = _s3_client().head_object(Bucket=bucket, Key=key)
        except Exception as err:  # botocore's ClientError: 404 when not cached yet
            if "404" in str(err) or "Not Found" in str(err):
                return None
            raise
        text = head.get("Metadata", {}).get(_META_KEY)
        return json.loads(text) if text else None
    sidecar = Path(target + ".identity.json")
    if not Path(target).exists() or not sidecar.exists():
        return None
    return json.loads(sidecar.read_text())


def _source_identity(source: str, tries: int = 3) -> dict[str, Any]:
    """The source's identity, asking again when the server's checksum query failed.

    Under concurrent queries the XRootD server sometimes answers the checksum query with
    an error, and :func:`file_identity` falls back to the modification time; an
    identity without its checksum would make an unchanged file look changed.
    """
    identity = file_identity(source)
    for attempt in range(1, tries):
        if scheme(source) != "root" or "mtime" not in identity:
            break
        time.sleep(0.2 * attempt)
        identity = file_identity(source)
    return identity


def stage_file(source: str, cache: str) -> dict[str, Any]:
    """Copy one file into the cache unless an identical copy is there already."""
    source = normalize_url(source)
    target = cached_url(source, cache)
    identity = _source_identity(source)
    if identity and _cached_identity(target) == identity:
        return {"source": source, "cached": target, "skipped": True, "bytes": 0}
    import fsspec

    to_s3 = scheme(target) == "s3"
    local = Path(tempfile.mkstemp(prefix="mlaas4hep-stage-")[1]) if to_s3 else Path(target)
    if not to_s3:
        local.parent.mkdir(parents=True, exist_ok=True)
        Path(target + ".identity.json").unlink(missing_ok=True)
    try:
        adler, size = 1, 0
        with fsspec.open(source, "rb") as reader, open(local, "wb") as writer:
            while block := reader.read(BLOCK):
                adler = zlib.adler32(block, adler)
                size += len(block)
                writer.write(block)
        expected = identity.get("adler32")
        if size != identity.get("size", size) or (expected and int(expected, 16) != adler):
            local.unlink(missing_ok=True)
            raise ReadError(source, f"staged copy differs from the source ({size} bytes read)")
        if to_s3:
            bucket, key = _split_s3(target)
            _s3_client().upload_file(
                str(local), bucket, key, ExtraArgs={"Metadata": {_META_KEY: json.dumps(identity)}}
            )
        else:
            Path(target + ".identity.json").write_text(json.dumps(identity))
    finally:
        if to_s3:
            local.unlink(missing_ok=True)
    return {"source": source, "cached": target, "skipped": False, "bytes": size}


def stage_files(
    sources: Sequence[str], cache: str, *, parallel: int = 4, use_ray: bool | None = None
) -> list[dict[str, Any]]:
    """Stage many files: Ray tasks when Ray is initialised (or asked), threads otherwise."""
    if not sources:
        return []
    if use_ray is None:
        try:
            import ray

            use_ray = ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))
        except ImportError:
            use_ray = False
    if use_ray:
        import ray

        remote = ray.remote(num_cpus=0.25, max_retries=2)(stage_file)
        pending = []
        results: list[dict[str, Any]] = []
        for source in sources:  # at most ``parallel`` copies in flight
            if len(pending) >= parallel:
                done, pending = ray.wait(pending, num_returns=1)
                results += ray.get(done)
            pending.append(remote.remote(source, cache))
        return results + ray.get(pending)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda s: stage_file(s, cache), sources))
