"""The registry's source of truth in object storage, shared by every serving replica,
and the local store as a cache of its versions (:class:`VersionCache`).

Deployed behind a load balancer, the service runs as several tasks, each with its own
local BentoML store: an upload or a promotion must reach all of them. So with a models
bucket configured, the :class:`~mlaas4hep.serve.registry.Registry` keeps its versions and
its aliases here, and its local store is only a cache keyed by version:

``<prefix>/blobs/sha256/<digest>``
    the bundles' files, content-addressed: each stored once under the SHA-256 of its
    bytes, whichever versions hold it, and never rewritten.
``<prefix>/versions/<name>/<version>/registry.json``
    one version's manifest: tag, creation time, labels, and every file of the bundle
    with its SHA-256 and size (``files``), summed up in one ``digest``. It is written
    after the blobs, with ``If-None-Match: *``: that marks the version complete and
    makes it immutable (a second push of one tag is refused by the bucket itself). A
    replica checks every file it fetches against the manifest, so a blob that was
    overwritten or damaged is refused by name instead of being served.
``<prefix>/aliases.json``
    the alias document (``{"aliases": {name: {alias: tag}}, "history": [...],
    "deleted": [...]}``), the same shape as the local alias file. Every change is a
    read-modify-write made conditional on the ETag it read (``If-Match``, or
    ``If-None-Match: *`` when there is none yet); a 412 (another writer won) or a 409
    (``ConditionalRequestConflict``: a write in flight) re-reads and re-applies the change,
    so no promotion is lost and the history keeps every one in the order they won.

Reads are cheap: the document is fetched with ``If-None-Match`` on the ETag last seen, so
a replica that polls every second gets a 304 until something changes. Deleting a version
deletes its manifest, then the blobs no manifest names any more (only those older than
:data:`BLOB_GRACE_SECONDS`, so a push in flight, whose manifest is not written yet, keeps
its blobs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from mlaas4hep.errors import ConfigError
from mlaas4hep.io.aws import aws_client, http_status, is_missing, is_precondition_failure
from mlaas4hep.io.s3 import split
from mlaas4hep.serve.registry_errors import ModelNotFound, RegistryConflict

log = logging.getLogger("mlaas4hep.serving")
T = TypeVar("T")
ALIASES_KEY = "aliases.json"
VERSION_RECORD = "registry.json"
CACHE_LOCK_FILE = "mlaas4hep-cache.lock"
SCHEMA_VERSION = 1
WRITE_ATTEMPTS = 25
#: Unreferenced blobs younger than this are kept: they may belong to a push in flight.
BLOB_GRACE_SECONDS = 3600
_SHA256 = re.compile(r"[0-9a-f]{64}")


def file_digest(path: Path) -> tuple[str, int]:
    """(SHA-256 hex digest, size in bytes) of a file, read in blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest(), path.stat().st_size


def manifest_digest(files: dict[str, dict[str, Any]]) -> str:
    """One digest of a whole bundle: of its sorted (path, SHA-256, size) entries."""
    entries = [[path, files[path]["sha256"], files[path]["size"]] for path in sorted(files)]
    return "sha256:" + hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def empty_document() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "aliases": {}, "history": [], "deleted": []}


class RegistryBucket:
    """Versions and the alias document of a registry under an ``s3://bucket/prefix``."""

    def __init__(self, url: str, client: Any = None) -> None:
        if not url.startswith("s3://"):
            raise ConfigError(f"the models bucket must be an s3:// URL, not {url!r}")
        self.url = url.rstrip("/")
        self.bucket, prefix = split(self.url)
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.s3 = client or aws_client("s3")
        self._etag: str | None = None
        self._document: dict[str, Any] = empty_document()

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    # --- the alias document -------------------------------------------------------
    def read_aliases(self) -> dict[str, Any]:
        """The alias document (fetched again only when its ETag changed)."""
        conditions = {"IfNoneMatch": self._etag} if self._etag else {}
        try:
            response = self.s3.get_object(
                Bucket=self.bucket, Key=self._key(ALIASES_KEY), **conditions
            )
        except Exception as err:
            if http_status(err) == 304:
                return self._document
            if is_missing(err):
                self._etag, self._document = None, empty_document()
                return self._document
            raise
        self._document = _checked(json.loads(response["Body"].read()), self.url)
        self._etag = response["ETag"]
        return self._document

    def update_aliases(self, change: Callable[[dict[str, Any]], T]) -> T:
        """Apply ``change`` (which edits the document it is given, or raises to refuse)
        to the latest alias document and write it conditionally; re-read and re-apply on
        a lost race. Returns what ``change`` returned."""
        for attempt in range(WRITE_ATTEMPTS):
            document, etag = self._latest()
            result = change(document)
            conditions = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                response = self.s3.put_object(
                    Bucket=self.bucket,
                    Key=self._key(ALIASES_KEY),
                    Body=json.dumps(document, indent=1).encode(),
                    ContentType="application/json",
                    **conditions,
                )
            except Exception as err:
                if is_precondition_failure(err) or (etag is not None and is_missing(err)):
                    time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
                    continue
                raise
            self._etag, self._document = response.get("ETag"), document
            return result
        raise RegistryConflict(
            f"the alias document {self.url}/{ALIASES_KEY} kept changing under "
            f"{WRITE_ATTEMPTS} attempts to update it; try again",
            field="alias",
        )

    def _latest(self) -> tuple[dict[str, Any], str | None]:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self._key(ALIASES_KEY))
        except Exception as err:
            if is_missing(err):
                return empty_document(), None
            raise
        return _checked(json.loads(response["Body"].read()), self.url), response["ETag"]

    # --- versions -----------------------------------------------------------------
    def _version_key(self, tag: str, *parts: str) -> str:
        name, _, version = tag.partition(":")
        return self._key("versions", name, version, *parts)

    def has(self, tag: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._version_key(tag, VERSION_RECORD))
        except Exception as err:
            if is_missing(err):
                return False
            raise
        return True

    def record(self, tag: str) -> dict[str, Any]:
        """The version's record (tag, created, labels), or ModelNotFound."""
        try:
            response = self.s3.get_object(
                Bucket=self.bucket, Key=self._version_key(tag, VERSION_RECORD)
            )
        except Exception as err:
            if is_missing(err):
                raise ModelNotFound(f"model {tag!r} is not in the registry", field="tag") from None
            raise
        return json.loads(response["Body"].read())

    def tags(self) -> list[str]:
        """Every complete version in the bucket."""
        paginator = self.s3.get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key("versions", "")):
            for item in page.get("Contents", []):
                parts = PurePosixPath(item["Key"][len(self.prefix) :]).parts
                if len(parts) == 4 and parts[3] == VERSION_RECORD:
                    found.append(f"{parts[1]}:{parts[2]}")
        return sorted(found)

    def _blob_key(self, digest: str) -> str:
        return self._key("blobs", "sha256", digest)

    def _has_blob(self, digest: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._blob_key(digest))
        except Exception as err:
            if is_missing(err):
                return False
            raise
        return True

    def push(self, tag: str, directory: Path, created: str, labels: dict[str, str]) -> bool:
        """Upload a version's bundle (its blobs the bucket lacks, then its manifest);
        False if the bucket holds that version already."""
        if self.has(tag):
            return False
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory).as_posix()
            if path.is_file() and not path.is_symlink() and relative != "model.yaml":
                digest, size = file_digest(path)
                files[relative] = {"sha256": digest, "size": size}
                if not self._has_blob(digest):
                    self.s3.upload_file(str(path), self.bucket, self._blob_key(digest))
        record = {
            "tag": tag,
            "created": created,
            "labels": labels,
            "digest": manifest_digest(files),
            "files": files,
        }
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self._version_key(tag, VERSION_RECORD),
                Body=json.dumps(record).encode(),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except Exception as err:
            if is_precondition_failure(err):
                return False  # another replica pushed it first: the same immutable version
            raise
        return True

    def fetch(self, tag: str, into: Path) -> dict[str, Any]:
        """Download a version's files into ``into``, each checked against the manifest;
        returns the manifest."""
        record = self.record(tag)
        for relative, entry in _manifest_files(record, tag):
            target = into.joinpath(*PurePosixPath(relative).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.s3.download_file(self.bucket, self._blob_key(entry["sha256"]), str(target))
            except Exception as err:
                if is_missing(err) or http_status(err) == 404:
                    raise ConfigError(
                        f"{relative} (blob {entry['sha256'][:12]}) is missing"
                    ) from None
                raise
            if file_digest(target) != (entry["sha256"], entry["size"]):
                raise ConfigError(
                    f"{relative} does not match the manifest (SHA-256 or size differ): "
                    "the blob was changed after the version was pushed"
                )
        return record

    def remove(self, tag: str) -> None:
        """Delete a version's manifest (it stops being complete), then the blobs no
        other version names."""
        self.s3.delete_object(Bucket=self.bucket, Key=self._version_key(tag, VERSION_RECORD))
        self.collect_blobs()

    def collect_blobs(self, grace_seconds: float = BLOB_GRACE_SECONDS) -> list[str]:
        """Delete the blobs no manifest names that are older than ``grace_seconds``;
        returns their digests."""
        named = set()
        for tag in self.tags():
            with contextlib.suppress(ModelNotFound, ConfigError):
                named |= {e["sha256"] for _, e in _manifest_files(self.record(tag), tag)}
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=grace_seconds)
        base = self._key("blobs", "sha256", "")
        unnamed = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                digest = item["Key"][len(base) :]
                if digest not in named and item["LastModified"] <= cutoff:
                    unnamed.append(digest)
        for start in range(0, len(unnamed), 1000):
            self.s3.delete_objects(
                Bucket=self.bucket,
                Delete={
                    "Objects": [{"Key": self._blob_key(d)} for d in unnamed[start : start + 1000]]
                },
            )
        return unnamed


def _manifest_files(record: dict[str, Any], tag: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(relative path, entry) of a manifest's files, each path and entry checked."""
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not files:
        raise ConfigError(f"the manifest of {tag} lists no files")
    for relative, entry in sorted(files.items()):
        path = PurePosixPath(relative)
        if (
            not relative
            or path.is_absolute()
            or ".." in path.parts
            or "\\" in relative
            or relative == VERSION_RECORD
        ):
            raise ConfigError(f"unsafe path {relative!r} in the manifest of {tag}")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not _SHA256.fullmatch(entry["sha256"])
            or not isinstance(entry.get("size"), int)
            or entry["size"] < 0
        ):
            raise ConfigError(f"the manifest entry of {relative!r} in {tag} is malformed")
        yield relative, entry


class VersionCache:
    """The local BentoML store as a cache of a bucket's versions, keyed by version.

    Versions are fetched on first use and copied in under an exclusive lock on the store
    (any thread or worker process of the replica), so a listing, which takes the lock
    shared, never meets a version half copied in.
    """

    def __init__(self, store: Any, root: Path, home: Path, bucket: RegistryBucket) -> None:
        self.store, self.root, self.home, self.bucket = store, root, home, bucket

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        with open(self.root / CACHE_LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def sync(self, here: set[str]) -> None:
        """Fetch the bucket's versions not in ``here``; drop the ones deleted there."""
        for tag in self.bucket.tags():
            if tag not in here:
                self.ensure(tag)
        for tag in self.bucket.read_aliases().get("deleted", []):
            if tag in here:
                self.forget(tag)

    def ensure(self, tag: str) -> None:
        """Copy the bucket's version ``tag`` into the store unless it is there."""
        from mlaas4hep.model.store import add_to_store
        from mlaas4hep.serve.registry_documents import as_date
        from mlaas4hep.serve.registry_errors import RegistryError

        staging = Path(tempfile.mkdtemp(prefix="fetch-", dir=self.home))
        try:
            record = self.bucket.fetch(tag, staging)
            created = as_date(record.get("created"), "created")
            with self.locked(exclusive=True):
                if self._listed(tag):
                    return  # another thread or worker copied it in meanwhile
                add_to_store(
                    staging,
                    tag,
                    labels=record.get("labels") or {},
                    store=self.store,
                    created=(lambda: created) if created else None,
                )
        except ConfigError as err:
            raise RegistryError(f"model {tag} in the models bucket: {err}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def publish(self, model: Any) -> None:
        """Push the store's version ``model`` to the bucket unless it is there."""
        from mlaas4hep.serve.registry_documents import utc

        tag = str(model.tag)
        if self.bucket.has(tag):
            return
        labels = {str(k): str(v) for k, v in (model.info.labels or {}).items()}
        created = utc(model.info.creation_time).isoformat()
        self.bucket.push(tag, Path(model.path), created, labels)

    def forget(self, tag: str) -> None:
        from bentoml.exceptions import NotFound

        with contextlib.suppress(NotFound):
            self.store.delete(tag)

    def _listed(self, tag: str) -> bool:
        from bentoml.exceptions import NotFound

        try:
            return bool(self.store.list(tag))
        except NotFound:
            return False


def _checked(document: Any, where: str) -> dict[str, Any]:
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            f"the alias document in {where} is not one this release reads (schema_version "
            f"{SCHEMA_VERSION})"
        )
    document.setdefault("deleted", [])
    return document
