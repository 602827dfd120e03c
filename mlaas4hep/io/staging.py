"""Staging: copy ``root://`` files into a cache (an ``s3://`` prefix or a directory).

Reading XRootD over a wide-area network at every epoch is slow; a training job can
stage its inputs into a cache, in parallel Ray tasks (or threads without Ray), and
read the cached copies. Each copy carries the identity of its source (size and the
server's checksum, see :func:`mlaas4hep.io.identity.file_identity`): in S3 object metadata,
or in a ``<file>.identity.json`` next to a local copy, written only once the copy is
complete. A file whose cached identity matches its source is not copied again. The
bytes are checked while they stream (size, and adler32 when the server gives one), so
a truncated copy is never left as valid.

:func:`start_staging` starts the copies and returns at once, so training can begin on
the ``root://`` URLs (a job starts them once its spec pass is done: a process that forks
while one of its threads is inside the XRootD client hangs in the client's fork
handlers); a :class:`~mlaas4hep.stream.staged.StagedChunkStream` reads each file from its
cached copy
as soon as the copy is complete (it looks at the cache at most every ``check_seconds``
per file), keeping the original URL as the file's key: the train/validation/test split,
the labels and the lineage do not depend on where the bytes came from.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep.errors import ReadError
from mlaas4hep.io import s3, xrootd
from mlaas4hep.io.identity import file_identity
from mlaas4hep.io.location import normalize_url, scheme

BLOCK = 8 << 20
_META_KEY = "mlaas4hep-source-identity"


def cached_url(source: str, cache: str) -> str:
    """Where ``source`` (``root://host:port//path/file.root``) lands in ``cache``."""
    return f"{cache.rstrip('/')}/{xrootd.split(source)[1].lstrip('/')}"


def _s3_client() -> Any:
    from mlaas4hep import extras

    return extras.boto3().client("s3")


def _cached_identity(target: str) -> dict[str, Any] | None:
    if scheme(target) == "s3":
        bucket, key = s3.split(target)
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


def stage_file(source: str, cache: str, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy one file into the cache unless an identical copy is there already.

    ``identity`` is the source's, if already known: the copy is labelled with it.
    """
    source = normalize_url(source)
    target = cached_url(source, cache)
    identity = identity or _source_identity(source)
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
            bucket, key = s3.split(target)
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
    """Stage many files and wait: one record per source, in order."""
    return start_staging(sources, cache, parallel=parallel, use_ray=use_ray).wait()


def _ray_wanted(use_ray: bool | None) -> bool:
    if use_ray is not None:
        return use_ray
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))


class StagingRun:
    """Staging of ``sources`` into ``cache``: Ray tasks when Ray is at hand, else threads.

    Made, it asks every source for its identity and the cache for its copy's, so
    ``staged`` holds the files already in the cache. :meth:`start` starts the copies of
    the others in the background, at most ``parallel`` at a time; :meth:`wait` gives one
    record per source. The Ray tasks ask for no CPU: copying waits on the network and
    must not wait for the training workers to free their CPUs.
    """

    def __init__(
        self, sources: Sequence[str], cache: str, *, parallel: int = 4, use_ray: bool | None = None
    ) -> None:
        self.cache = cache
        self.parallel = parallel
        self.use_ray = use_ray
        self.sources = list(dict.fromkeys(normalize_url(s) for s in sources))
        self.targets = {s: cached_url(s, cache) for s in self.sources}
        with ThreadPoolExecutor(max(1, min(parallel, 8))) as pool:
            identities = list(pool.map(_source_identity, self.sources))
            cached = list(pool.map(_cached_identity, self.targets.values()))
        self.identities = dict(zip(self.sources, identities, strict=True))
        self.staged = {
            s for s, have in zip(self.sources, cached, strict=True) if have == self.identities[s]
        }
        self.pending = [s for s in self.sources if s not in self.staged]
        self._records: dict[str, Future[dict[str, Any]]] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> StagingRun:
        """Start copying the files not in the cache yet (once); return self."""
        if self._records is not None:
            return self
        self._records = {}
        if not self.pending:
            return self
        if _ray_wanted(self.use_ray):
            self._start_ray(self.parallel)
            return self
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="stage")
        for source in self.pending:
            self._records[source] = self._pool.submit(
                stage_file, source, self.cache, self.identities[source]
            )
        return self

    def _start_ray(self, parallel: int) -> None:
        import ray

        if not ray.is_initialized():
            ray.init()  # in a Ray job: the job's cluster (RAY_ADDRESS)
        remote = ray.remote(num_cpus=0, max_retries=2)(stage_file)
        futures: dict[str, Future[dict[str, Any]]] = {s: Future() for s in self.pending}
        self._records = futures

        def drive() -> None:  # at most ``parallel`` copies in flight
            running: dict[Any, str] = {}
            queue = list(self.pending)
            try:
                while queue or running:
                    while queue and len(running) < parallel:
                        source = queue.pop(0)
                        ref = remote.remote(source, self.cache, self.identities[source])
                        running[ref] = source
                    done, _ = ray.wait(list(running), num_returns=1)
                    source = running.pop(done[0])
                    try:
                        futures[source].set_result(ray.get(done[0]))
                    except Exception as err:  # kept for wait() to raise
                        futures[source].set_exception(err)
            except BaseException as err:  # Ray went away: no copy is left waiting forever
                for future in futures.values():
                    if not future.done():
                        future.set_exception(err)

        threading.Thread(target=drive, name="stage-ray", daemon=True).start()

    def table(self, check_seconds: float = 5.0) -> StagingTable:
        """What a :class:`StagedChunkStream` needs to switch files to their copies."""
        return StagingTable(
            dict(self.targets), dict(self.identities), set(self.staged), check_seconds
        )

    def wait(self, errors: str = "raise") -> list[dict[str, Any]]:
        """One record per source, in order (``skipped`` for copies already in the cache).

        A failed copy raises, or with ``errors="record"`` gives a record with its
        ``error`` (training that went on reading the source has lost nothing).
        """
        self.start()
        assert self._records is not None
        records = []
        try:
            for source in self.sources:
                target = self.targets[source]
                if source not in self._records:
                    records.append(
                        {"source": source, "cached": target, "skipped": True, "bytes": 0}
                    )
                    continue
                try:
                    records.append(self._records[source].result())
                except Exception as err:
                    if errors == "raise":
                        raise
                    records.append(
                        {"source": source, "cached": target, "skipped": False, "bytes": 0,
                         "error": f"{type(err).__name__}: {err}"}
                    )  # fmt: skip
                    continue
                self.staged.add(source)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False)  # all collected, or an error to raise
        return records


def start_staging(
    sources: Sequence[str], cache: str, *, parallel: int = 4, use_ray: bool | None = None
) -> StagingRun:
    """Start staging ``sources`` into ``cache`` and return at once (see :class:`StagingRun`)."""
    return StagingRun(sources, cache, parallel=parallel, use_ray=use_ray).start()


# --------------------------------------------------------------- reading while staging


@dataclass
class StagingTable:
    """Where each staged file's copy is, the identity a complete copy carries, and the
    files known to be complete already."""

    targets: dict[str, str] = field(default_factory=dict)
    identities: dict[str, dict[str, Any]] = field(default_factory=dict)
    staged: set[str] = field(default_factory=set)
    check_seconds: float = 5.0

    def is_complete(self, key: str) -> bool:
        """Whether the cache holds a complete copy of ``key`` now (never raises)."""
        try:
            return _cached_identity(self.targets[key]) == self.identities.get(key)
        except Exception:  # an unreachable cache: keep reading the source
            return False
