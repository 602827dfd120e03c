"""The event pipeline's logic: S3 events in, FileSpecs and DatasetSpecs out, retraining.

The three functions of ``functions/`` (``spec_file``, ``merge_specs``, ``retrain``) are
thin adapters over this module, so that Lambda, the local runtime and the tests run
exactly the same code:

- :func:`compute_and_store_file_spec` streams one new ROOT object into its FileSpec and
  writes it once per object version (``IfNoneMatch='*'``); an unreadable file leaves a
  quarantine record naming the error.
- :func:`merge_into_dataset` folds FileSpecs into a DatasetSpec with S3 conditional
  writes (``IfMatch`` on the ETag read, ``IfNoneMatch='*'`` for the first write) and
  retries on 412, so concurrent merges never lose an update, and a file already counted
  is never counted again.
- :func:`retrain_if_quiet` submits one training job per quiet period of a dataset to
  the Ray Jobs API (a trailing-edge debounce: while the DatasetSpec keeps changing, the
  check is postponed with a delayed SQS message to the function's own queue).
- :func:`handle_batch` runs one of those per SQS record and builds Lambda's partial
  batch response, so one bad message never fails its neighbours.

boto3 is imported on first use (:mod:`mlaas4hep.extras`); nothing here runs at import.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from mlaas4hep.errors import MlaasError, ReadError, SpecError
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec, FileSpec

log = logging.getLogger("mlaas4hep.pipeline")

DATASET_SPEC_NAME = "dataset.json"
RECHECK_KIND = "mlaas4hep.retrain-recheck"
MAX_SQS_DELAY = 900
ENV_PREFIX = "MLAAS4HEP_"


class PipelineError(MlaasError, RuntimeError):
    """The pipeline could not complete a step (e.g. a merge kept conflicting)."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PipelineConfig:
    """Where the pipeline reads and writes: buckets, prefixes and the retraining settings.

    Built from the ``MLAAS4HEP_*`` environment variables that Terraform gives every
    function (``infra/main.tf``, ``common_environment``).
    """

    data_bucket: str
    specs_bucket: str
    models_bucket: str = ""
    cache_bucket: str = ""
    data_prefix: str = "datasets/"
    file_specs_prefix: str = "files/"
    dataset_specs_prefix: str = "datasets/"
    quarantine_prefix: str = "quarantine/"
    retrain_state_prefix: str = "retrain/"
    lease_prefix: str = "leases/"
    spec_lease_seconds: float = 900.0
    ray_address: str = ""
    retrain_entrypoint: str = ""
    retrain_runtime_env: dict[str, Any] = field(default_factory=dict)
    retrain_debounce_seconds: float = 300.0
    retrain_queue_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PipelineConfig:
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str:
            value = env.get(ENV_PREFIX + name, default)
            if value is None:
                raise PipelineError(f"the environment variable {ENV_PREFIX}{name} is not set")
            return value

        runtime_env = get("RETRAIN_RUNTIME_ENV", "{}") or "{}"
        try:
            parsed_env = json.loads(runtime_env)
        except json.JSONDecodeError as err:
            raise PipelineError(f"{ENV_PREFIX}RETRAIN_RUNTIME_ENV is not JSON: {err}") from err
        return cls(
            data_bucket=get("DATA_BUCKET"),
            specs_bucket=get("SPECS_BUCKET"),
            models_bucket=get("MODELS_BUCKET", ""),
            cache_bucket=get("CACHE_BUCKET", ""),
            data_prefix=get("DATA_PREFIX", "datasets/"),
            file_specs_prefix=get("FILE_SPECS_PREFIX", "files/"),
            dataset_specs_prefix=get("DATASET_SPECS_PREFIX", "datasets/"),
            quarantine_prefix=get("QUARANTINE_PREFIX", "quarantine/"),
            retrain_state_prefix=get("RETRAIN_STATE_PREFIX", "retrain/"),
            lease_prefix=get("LEASE_PREFIX", "leases/"),
            spec_lease_seconds=float(get("SPEC_LEASE_SECONDS", "900")),
            ray_address=get("RAY_ADDRESS", ""),
            retrain_entrypoint=get("RETRAIN_ENTRYPOINT", ""),
            retrain_runtime_env=parsed_env if isinstance(parsed_env, dict) else {},
            retrain_debounce_seconds=float(get("RETRAIN_DEBOUNCE_SECONDS", "300")),
            retrain_queue_url=get("RETRAIN_QUEUE_URL", ""),
        )

    # Key layout. A data object <data_prefix><dataset>/<path>.root has its FileSpec at
    # <file_specs_prefix><dataset>/<path>.root@<version>.json in the specs bucket, and the
    # dataset's spec at <dataset_specs_prefix><dataset>/dataset.json.

    def locate(self, data_key: str) -> tuple[str, str]:
        """``(dataset, path within the dataset)`` of a data object; ValueError outside it."""
        if not data_key.startswith(self.data_prefix):
            raise ValueError(f"{data_key!r} is not under the data prefix {self.data_prefix!r}")
        dataset, sep, path = data_key[len(self.data_prefix) :].partition("/")
        if not sep or not dataset or not path:
            raise ValueError(f"{data_key!r} is not <data prefix><dataset>/<file>")
        return dataset, path

    def file_spec_key(self, dataset: str, path: str, version: str) -> str:
        return f"{self.file_specs_prefix}{dataset}/{path}@{_safe(version)}.json"

    def quarantine_key(self, dataset: str, path: str, version: str) -> str:
        return f"{self.quarantine_prefix}{dataset}/{path}@{_safe(version)}.json"

    def lease_key(self, dataset: str, path: str, version: str) -> str:
        """The claim on computing one object version's FileSpec (see :func:`claim_spec`)."""
        return f"{self.lease_prefix}{dataset}/{path}@{_safe(version)}.lease"

    def dataset_spec_key(self, dataset: str) -> str:
        return f"{self.dataset_specs_prefix}{dataset}/{DATASET_SPEC_NAME}"

    def dataset_of_file_spec(self, spec_key: str) -> str:
        if not spec_key.startswith(self.file_specs_prefix):
            raise ValueError(f"{spec_key!r} is not under {self.file_specs_prefix!r}")
        return spec_key[len(self.file_specs_prefix) :].split("/", 1)[0]

    def dataset_of_dataset_spec(self, spec_key: str) -> str:
        rest = spec_key[len(self.dataset_specs_prefix) :]
        if not spec_key.startswith(self.dataset_specs_prefix) or not rest.endswith(
            "/" + DATASET_SPEC_NAME
        ):
            raise ValueError(f"{spec_key!r} is not a dataset spec key")
        return rest[: -len(DATASET_SPEC_NAME) - 1]

    def retrain_state_key(self, dataset: str) -> str:
        return f"{self.retrain_state_prefix}{dataset}/state.json"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


# ----------------------------------------------------------------------- S3 events


@dataclass(frozen=True)
class S3ObjectEvent:
    """One object-created record of an S3 event notification (key already decoded)."""

    bucket: str
    key: str
    event_name: str = "ObjectCreated:Put"
    etag: str = ""
    version_id: str = ""
    size: int = 0
    sequencer: str = ""

    @property
    def version(self) -> str:
        """The object version this event is about: the version id, else the ETag."""
        return self.version_id or self.etag


def parse_s3_event(body: str | Mapping[str, Any]) -> list[S3ObjectEvent]:
    """The object records of an S3 notification (as SQS delivers it, or wrapped by SNS).

    Keys arrive URL-form-encoded (``+`` for a space) and are decoded here. S3's
    ``s3:TestEvent`` (sent when a notification is configured) gives no record.
    """
    data = json.loads(body) if isinstance(body, str | bytes) else dict(body)
    if "Message" in data and "Records" not in data and isinstance(data["Message"], str):
        data = json.loads(data["Message"])  # S3 -> SNS -> SQS
    if data.get("Event") == "s3:TestEvent":
        return []
    events = []
    for record in data.get("Records", []):
        if "s3" not in record:
            continue
        obj = record["s3"]["object"]
        events.append(
            S3ObjectEvent(
                bucket=record["s3"]["bucket"]["name"],
                key=unquote_plus(obj["key"]),
                event_name=record.get("eventName", ""),
                etag=str(obj.get("eTag", "")).strip('"'),
                version_id=str(obj.get("versionId") or ""),
                size=int(obj.get("size", 0) or 0),
                sequencer=str(obj.get("sequencer", "")),
            )
        )
    return events


# -------------------------------------------------------------------- AWS clients

_clients: dict[tuple[str, int], Any] = {}
_clients_lock = threading.Lock()


def aws_client(service: str) -> Any:
    """A boto3 client per service and process (boto3 clients are thread-safe).

    The endpoint comes from the standard ``AWS_ENDPOINT_URL`` (a moto server locally).
    """
    key = (service, os.getpid())
    with _clients_lock:
        if key not in _clients:
            from mlaas4hep.extras import boto3

            botocore_config = boto3().session.Config(
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=32,
            )
            _clients[key] = boto3().client(service, config=botocore_config)
        return _clients[key]


def _error_code(err: BaseException) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _http_status(err: BaseException) -> int:
    response = getattr(err, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_precondition_failure(err: BaseException) -> bool:
    # 412 PreconditionFailed: the ETag moved, or the object appeared meanwhile;
    # 409 ConditionalRequestConflict: another conditional write is in flight.
    return _http_status(err) in (409, 412) or _error_code(err) in (
        "PreconditionFailed",
        "ConditionalRequestConflict",
    )


def _is_missing(err: BaseException) -> bool:
    return _http_status(err) == 404 or _error_code(err) in ("NoSuchKey", "404", "NotFound")


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as err:
        if _is_missing(err):
            return False
        raise
    return True


# ------------------------------------------------------------------------ spec_file


@dataclass(frozen=True)
class FileSpecOutcome:
    """What :func:`compute_and_store_file_spec` did.

    ``status`` is ``written``, ``exists``, ``skipped`` or ``leased`` (another delivery of
    the same object version is computing its spec right now). ``seconds`` is the time
    spent computing the spec, ``checks_seconds`` the S3 round trips before it (version,
    existing spec, claim) and ``store_seconds`` those after it (write, release).
    """

    status: str
    source: str
    spec_key: str = ""
    entries: int = 0
    seconds: float = 0.0
    checks_seconds: float = 0.0
    store_seconds: float = 0.0


def claim_spec(
    config: PipelineConfig,
    dataset: str,
    path: str,
    version: str,
    owner: str,
    *,
    s3: Any = None,
    now: Callable[[], float] = time.time,
    max_attempts: int = 3,
) -> bool:
    """Claim the computation of one object version's FileSpec for ``owner``; True if held.

    S3 delivers an event at least once (moto even sends two for a multipart upload), and
    two workers computing the same spec at once waste a whole file read. The claim is a
    marker object created with ``IfNoneMatch='*'``, holding its owner and an expiry. A
    fresh claim of another owner means "someone is on it": the caller may treat its
    message as done, because the owner's own message is deleted only once the spec is
    stored, and SQS redelivers it otherwise. ``owner`` is the SQS message id, which stays
    the same across redeliveries, so the owner's retry after a crash takes its claim
    back at once; any other taker waits for the expiry (``spec_lease_seconds``, the
    function's timeout: an invocation cannot hold it longer).
    """
    s3 = s3 or aws_client("s3")
    key = config.lease_key(dataset, path, version)
    for _ in range(max_attempts):
        start = now()
        body = json.dumps(
            {
                "owner": owner,
                "acquired_at": start,
                "expires_at": start + config.spec_lease_seconds,
            }
        ).encode()
        put = {"Bucket": config.specs_bucket, "Key": key, "Body": body}
        try:
            s3.put_object(**put, ContentType="application/json", IfNoneMatch="*")
            return True
        except Exception as err:
            if not _is_precondition_failure(err):
                raise
        try:
            answer = s3.get_object(Bucket=config.specs_bucket, Key=key)
        except Exception as err:
            if _is_missing(err):
                continue  # released meanwhile: try to create it again
            raise
        if not lease_is_takeable(answer["Body"].read(), owner, now()):
            return False
        try:  # ours (a redelivery of the owner's message) or expired: take it over
            s3.put_object(**put, ContentType="application/json", IfMatch=answer["ETag"])
            return True
        except Exception as err:
            if not _is_precondition_failure(err):
                raise
    return False  # others keep claiming it at this very moment: they are on it


def lease_is_takeable(body: bytes | str, owner: str, now: float) -> bool:
    """Whether ``owner`` may take over a claim whose stored record is ``body``."""
    try:
        record = json.loads(body)
        holder, expires_at = str(record["owner"]), float(record["expires_at"])
    except (ValueError, KeyError, TypeError):
        return True  # unreadable: as good as expired
    return holder == owner or expires_at <= now


def release_spec_claim(
    config: PipelineConfig, dataset: str, path: str, version: str, *, s3: Any = None
) -> None:
    """Drop the claim once the spec is stored (best effort: a claim also expires).

    The claim is overwritten as expired rather than deleted: in a versioned bucket a
    delete leaves a delete marker per file, which moto then fails to empty on destroy.
    """
    s3 = s3 or aws_client("s3")
    try:
        s3.put_object(
            Bucket=config.specs_bucket,
            Key=config.lease_key(dataset, path, version),
            Body=json.dumps({"owner": "", "expires_at": 0, "released": True}).encode(),
            ContentType="application/json",
        )
    except Exception as err:
        log.warning("could not release the claim on %s@%s: %s", path, version, err)


def compute_and_store_file_spec(
    event: S3ObjectEvent,
    config: PipelineConfig,
    *,
    s3: Any = None,
    receive_count: int = 1,
    compute: Callable[[str], FileSpec] = compute_file_spec,
    owner: str = "",
    clock: Callable[[], float] = time.perf_counter,
) -> FileSpecOutcome:
    """Compute the FileSpec of a new data object and store it, once per object version.

    The spec is computed by streaming the object (memory bounded by the reader's step
    size, not by the file). A file that cannot be read raises
    :class:`~mlaas4hep.errors.ReadError` after writing a quarantine record with the
    error, so that the message is retried and finally lands in the dead-letter queue.

    With an ``owner`` (the SQS message id), the computation is first claimed
    (:func:`claim_spec`): a duplicate delivery of an object version whose spec another
    worker is computing returns ``leased`` at once instead of reading the file again.
    A failed computation keeps its claim, so that duplicates do not pile up in the
    dead-letter queue while the owner's message is retried.

    ``clock`` (seconds, default :func:`time.perf_counter`) times the outcome's
    ``seconds``, ``checks_seconds`` and ``store_seconds``.
    """
    s3 = s3 or aws_client("s3")
    source = f"s3://{event.bucket}/{event.key}"
    began = clock()
    try:
        dataset, path = config.locate(event.key)
    except ValueError as err:
        log.warning("ignoring %s: %s", source, err)
        return FileSpecOutcome("skipped", source)
    version = resolve_version(event, s3)
    leased = bool(owner and version)
    if version:
        expected = config.file_spec_key(dataset, path, version)
        if _exists(s3, config.specs_bucket, expected):
            return FileSpecOutcome("exists", source, expected)
        if leased:
            if not claim_spec(config, dataset, path, version, owner, s3=s3):
                return FileSpecOutcome("leased", source, expected)
            # The spec may have been stored (and its claim dropped) since the check above.
            if _exists(s3, config.specs_bucket, expected):
                release_spec_claim(config, dataset, path, version, s3=s3)
                return FileSpecOutcome("exists", source, expected)
    start = clock()
    try:
        spec = compute(source)
    except (ReadError, SpecError) as err:
        _write_quarantine(s3, config, event, dataset, path, err, receive_count)
        raise
    computed = clock()
    # Keyed by the version actually read, which may be newer than the event's.
    read = str(spec.identity.get("version_id") or spec.identity.get("etag") or version)
    spec_key = config.file_spec_key(dataset, path, read)
    try:
        s3.put_object(
            Bucket=config.specs_bucket,
            Key=spec_key,
            Body=spec.to_json().encode(),
            ContentType="application/json",
            IfNoneMatch="*",
            Metadata={"dataset": dataset, "entries": str(spec.entries)},
        )
        status = "written"
    except Exception as err:
        if not _is_precondition_failure(err):
            raise
        status = "exists"  # another delivery of the same version won the race
    _clear_quarantine(s3, config, dataset, path, event.version)
    if leased:
        release_spec_claim(config, dataset, path, version, s3=s3)
    return FileSpecOutcome(
        status,
        source,
        spec_key,
        spec.entries,
        seconds=computed - start,
        checks_seconds=start - began,
        store_seconds=clock() - computed,
    )


def resolve_version(event: S3ObjectEvent, s3: Any) -> str:
    """The version a FileSpec of the event's object would be keyed by.

    A FileSpec is keyed by the object's version id when the bucket is versioned, else by
    its ETag. S3 puts the version id in the event; an event without it (moto's, or from
    an unversioned bucket) costs one HEAD, so that the "already computed?" check and
    the claim use the same key as the stored spec. The HEAD may see a newer version
    than the event's: that is the one the spec would be computed from anyway.
    """
    if event.version_id:
        return event.version_id
    try:
        head = s3.head_object(Bucket=event.bucket, Key=event.key)
    except Exception as err:
        if _is_missing(err):
            return event.etag  # deleted meanwhile: reading it will fail and say so
        raise
    version_id = str(head.get("VersionId") or "")
    if version_id and version_id != "null":  # "null": written while unversioned
        return version_id
    return str(head.get("ETag") or event.etag).strip('"')


def _write_quarantine(
    s3: Any,
    config: PipelineConfig,
    event: S3ObjectEvent,
    dataset: str,
    path: str,
    error: BaseException,
    receive_count: int,
) -> None:
    record = {
        "source": f"s3://{event.bucket}/{event.key}",
        "dataset": dataset,
        "version": event.version,
        "size": event.size,
        "error": str(error),
        "error_type": type(error).__name__,
        "receive_count": receive_count,
        "recorded_at": time.time(),
    }
    s3.put_object(
        Bucket=config.specs_bucket,
        Key=config.quarantine_key(dataset, path, event.version or "unknown"),
        Body=json.dumps(record, indent=1).encode(),
        ContentType="application/json",
    )
    log.error("quarantined %s (delivery %d): %s", record["source"], receive_count, error)


def _clear_quarantine(
    s3: Any, config: PipelineConfig, dataset: str, path: str, version: str
) -> None:
    # A file that failed once (e.g. read while still being written) and now succeeds
    # is no longer quarantined. Deleting a missing key is a no-op in S3.
    try:
        s3.delete_object(
            Bucket=config.specs_bucket,
            Key=config.quarantine_key(dataset, path, version or "unknown"),
        )
    except Exception as err:  # best effort, the spec is already stored
        log.warning("could not clear the quarantine record of %s: %s", path, err)


def read_quarantine(config: PipelineConfig, dataset: str, *, s3: Any = None) -> list[dict]:
    """The quarantine records of a dataset (one per unreadable file version)."""
    s3 = s3 or aws_client("s3")
    records = []
    paginator = s3.get_paginator("list_objects_v2")
    prefix = f"{config.quarantine_prefix}{dataset}/"
    for page in paginator.paginate(Bucket=config.specs_bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=config.specs_bucket, Key=item["Key"])["Body"].read()
            records.append(json.loads(body))
    return records


# ---------------------------------------------------------------------- merge_specs


@dataclass(frozen=True)
class MergeOutcome:
    """Result of :func:`merge_into_dataset`: whether the spec changed, after how many tries."""

    changed: bool
    attempts: int
    files: int
    entries: int
    etag: str = ""


def read_dataset_spec(
    config: PipelineConfig, dataset: str, *, s3: Any = None
) -> tuple[DatasetSpec, str | None]:
    """The stored DatasetSpec of ``dataset`` and its ETag (an empty spec and None if absent)."""
    s3 = s3 or aws_client("s3")
    try:
        answer = s3.get_object(Bucket=config.specs_bucket, Key=config.dataset_spec_key(dataset))
    except Exception as err:
        if _is_missing(err):
            return DatasetSpec.empty(), None
        raise
    return DatasetSpec.from_json(answer["Body"].read()), answer["ETag"]


def fold_file_specs(
    dataset: DatasetSpec,
    specs: Iterable[FileSpec],
    current_identity: Callable[[str], dict[str, Any] | None] | None = None,
) -> DatasetSpec:
    """``dataset`` with ``specs`` added; a file already counted is left as it is.

    When a spec's file is known with another identity (the object was overwritten),
    the spec whose identity matches the object as it is now wins, so that late events
    about an old version never replace the new one; ``current_identity(source)`` gives
    that identity (None when unknown, in which case the incoming spec wins).
    """
    for spec in specs:
        if dataset.contains(spec):
            continue
        known = dataset.files.get(spec.key)
        if known is not None:
            now = current_identity(spec.key) if current_identity else None
            if now is not None and _same_version(known.identity, now):
                log.info("ignoring a stale spec of %s (%s)", spec.key, spec.identity)
                continue
            dataset = dataset.without(spec.key)
        dataset = dataset.merge(spec)
    return dataset


def _versions(dataset: DatasetSpec) -> dict[str, Any]:
    return {key: spec.identity for key, spec in dataset.files.items()}


def _same_version(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = [k for k in ("version_id", "etag") if a.get(k) and b.get(k)]
    return bool(keys) and all(a[k] == b[k] for k in keys)


def merge_into_dataset(
    config: PipelineConfig,
    dataset: str,
    specs: Iterable[FileSpec],
    *,
    s3: Any = None,
    max_attempts: int = 40,
    current_identity: Callable[[str], dict[str, Any] | None] | None = None,
) -> MergeOutcome:
    """Fold FileSpecs into the dataset's stored DatasetSpec, safely under concurrency.

    Read the spec and its ETag, merge in memory, write back only if the ETag is still
    the same (``IfMatch``; ``IfNoneMatch='*'`` when there is no spec yet). A 412 means
    another merge got there first: read again and retry, with jittered exponential
    backoff. Nothing is written when every spec is already counted.
    """
    s3 = s3 or aws_client("s3")
    specs = list(specs)
    key = config.dataset_spec_key(dataset)
    for attempt in range(1, max_attempts + 1):
        current, etag = read_dataset_spec(config, dataset, s3=s3)
        merged = fold_file_specs(current, specs, current_identity)
        if _versions(merged) == _versions(current):
            return MergeOutcome(False, attempt, len(current.files), current.entries, etag or "")
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            answer = s3.put_object(
                Bucket=config.specs_bucket,
                Key=key,
                Body=merged.to_json().encode(),
                ContentType="application/json",
                Metadata={"updated-at": f"{time.time():.6f}", "files": str(len(merged.files))},
                **condition,
            )
        except Exception as err:
            if not _is_precondition_failure(err):
                raise
            time.sleep(min(2.0, 0.02 * 2 ** min(attempt, 7)) * random.random())
            continue
        return MergeOutcome(
            True, attempt, len(merged.files), merged.entries, answer.get("ETag", "")
        )
    raise PipelineError(
        f"could not merge {len(specs)} file spec(s) into s3://{config.specs_bucket}/{key}: "
        f"{max_attempts} conflicting writes in a row"
    )


def s3_object_identity(s3: Any = None) -> Callable[[str], dict[str, Any] | None]:
    """``current_identity`` for :func:`fold_file_specs`: HEAD of an ``s3://`` source."""

    def identity(source: str) -> dict[str, Any] | None:
        if not source.startswith("s3://"):
            return None
        bucket, _, key = source[len("s3://") :].partition("/")
        client = s3 or aws_client("s3")
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except Exception as err:  # unknown means "let the new spec win"
            log.warning("cannot check the current version of %s: %s", source, err)
            return None
        return {"etag": head.get("ETag", "").strip('"'), "version_id": head.get("VersionId")}

    return identity


def load_file_spec(bucket: str, key: str, version_id: str = "", *, s3: Any = None) -> FileSpec:
    """A FileSpec stored in S3 (the exact version when ``version_id`` is given)."""
    s3 = s3 or aws_client("s3")
    extra = {"VersionId": version_id} if version_id else {}
    body = s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
    return FileSpec.from_json(body)


def merge_batch(event: Mapping[str, Any], config: PipelineConfig, *, s3: Any = None) -> dict:
    """The ``merge_specs`` step for one SQS batch: one conditional merge per dataset.

    Grouping the batch's FileSpecs by dataset makes one write per dataset instead of one
    per file (fewer conflicts); a dataset whose merge fails reports all its messages.
    """
    s3 = s3 or aws_client("s3")
    began = time.perf_counter()
    failed: list[str] = []
    by_dataset: dict[str, list[tuple[str, FileSpec]]] = {}
    queued = {r.get("messageId"): queued_seconds(r) for r in event.get("Records", [])}
    for record in event.get("Records", []):
        try:
            for item in parse_s3_event(record["body"]):
                dataset = config.dataset_of_file_spec(item.key)
                spec = load_file_spec(item.bucket, item.key, item.version_id, s3=s3)
                by_dataset.setdefault(dataset, []).append((record["messageId"], spec))
        except Exception as err:  # reported to SQS
            log.error("message %s: cannot load its file spec: %s", record.get("messageId"), err)
            failed.append(record["messageId"])
    for dataset, items in by_dataset.items():
        try:
            outcome = merge_into_dataset(
                config,
                dataset,
                [spec for _, spec in items],
                s3=s3,
                current_identity=s3_object_identity(s3),
            )
            log.info(
                "dataset %s: %s after %d attempt(s), %d files, %d entries "
                "(queued %.3f s, merged in %.3f s)",
                dataset,
                "updated" if outcome.changed else "unchanged",
                outcome.attempts,
                outcome.files,
                outcome.entries,
                max(queued.get(m, 0.0) for m, _ in items),
                time.perf_counter() - began,
            )
        except Exception as err:  # reported to SQS
            log.error("dataset %s: merge failed: %s", dataset, err)
            failed += [message_id for message_id, _ in items]
    return batch_response(failed)


# --------------------------------------------------------------------------- retrain


@dataclass(frozen=True)
class RetrainOutcome:
    """What :func:`retrain_if_quiet` did.

    ``status`` is ``submitted``, ``deferred``, ``up-to-date``, ``absent`` or ``disabled``.
    """

    status: str
    dataset: str
    submission_id: str = ""
    delay: int = 0


def submission_id_for(dataset: str, etag: str) -> str:
    """The Ray submission id of the job for one DatasetSpec version: deterministic, so a
    second submission of the same version is refused by Ray instead of run twice."""
    digest = re.sub(r"[^A-Za-z0-9]", "", etag)[:16] or "none"
    return f"mlaas4hep-retrain-{_safe(dataset)}-{digest}"


def submit_ray_job(
    address: str,
    entrypoint: str,
    submission_id: str,
    *,
    metadata: Mapping[str, str] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> tuple[str, bool]:
    """Submit a job through the Ray Jobs REST API; ``(submission_id, created)``.

    Plain HTTP (no Ray client in the function package). A job that already exists with
    the same submission id counts as submitted (``created`` False).
    """
    payload = {
        "entrypoint": entrypoint,
        "submission_id": submission_id,
        "metadata": dict(metadata or {}),
        "runtime_env": dict(runtime_env or {}),
    }
    request = urllib.request.Request(
        address.rstrip("/") + "/api/jobs/",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = json.loads(answer.read() or b"{}")
            return str(body.get("submission_id") or submission_id), True
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        if "already exists" in text or "already been used" in text:
            return submission_id, False
        raise PipelineError(f"Ray job submission to {address} failed ({err.code}): {text}") from err
    except OSError as err:
        raise PipelineError(f"Ray Jobs API at {address} unreachable: {err}") from err


def _updated_at(head: Mapping[str, Any]) -> float:
    meta = head.get("Metadata") or {}
    if "updated-at" in meta:
        return float(meta["updated-at"])
    return head["LastModified"].timestamp()


def retrain_if_quiet(
    config: PipelineConfig,
    dataset: str,
    *,
    s3: Any = None,
    sqs: Any = None,
    now: Callable[[], float] = time.time,
) -> RetrainOutcome:
    """Submit the training job of ``dataset`` once its DatasetSpec has been quiet long enough.

    Trailing-edge debounce: if the spec changed less than ``retrain_debounce_seconds``
    ago, a recheck message is sent to the retrain queue with the remaining delay;
    the check that finds the spec quiet submits. One job per spec version: the Ray
    submission id is derived from the spec's ETag, and the state record under the
    models bucket tells later checks that this version is done.
    """
    s3 = s3 or aws_client("s3")
    if not config.ray_address:
        return RetrainOutcome("disabled", dataset)
    try:
        head = s3.head_object(Bucket=config.specs_bucket, Key=config.dataset_spec_key(dataset))
    except Exception as err:
        if _is_missing(err):
            return RetrainOutcome("absent", dataset)
        raise
    etag = head["ETag"].strip('"')
    state = _read_state(s3, config, dataset)
    if state.get("dataset_etag") == etag:
        return RetrainOutcome("up-to-date", dataset, state.get("submission_id", ""))
    quiet = now() - _updated_at(head)
    if quiet < config.retrain_debounce_seconds:
        delay = min(MAX_SQS_DELAY, max(1, math.ceil(config.retrain_debounce_seconds - quiet)))
        (sqs or aws_client("sqs")).send_message(
            QueueUrl=config.retrain_queue_url,
            MessageBody=json.dumps({"kind": RECHECK_KIND, "dataset": dataset}),
            DelaySeconds=delay,
        )
        return RetrainOutcome("deferred", dataset, delay=delay)
    submission_id = submission_id_for(dataset, etag)
    spec_url = f"s3://{config.specs_bucket}/{config.dataset_spec_key(dataset)}"
    models_url = f"s3://{config.models_bucket}/{dataset}/"
    entrypoint = config.retrain_entrypoint.format(
        dataset=dataset, dataset_spec_url=spec_url, models_url=models_url
    )
    submission_id, created = submit_ray_job(
        config.ray_address,
        entrypoint,
        submission_id,
        metadata={"dataset": dataset, "dataset_spec": spec_url, "dataset_etag": etag},
        runtime_env=config.retrain_runtime_env,
    )
    state = {
        "dataset": dataset,
        "dataset_etag": etag,
        "dataset_spec": spec_url,
        "submission_id": submission_id,
        "entrypoint": entrypoint,
        "submitted_at": now(),
    }
    s3.put_object(
        Bucket=config.models_bucket,
        Key=config.retrain_state_key(dataset),
        Body=json.dumps(state, indent=1).encode(),
        ContentType="application/json",
    )
    log.info("retraining %s: %s (%s)", dataset, submission_id, "new" if created else "existing")
    return RetrainOutcome("submitted" if created else "up-to-date", dataset, submission_id)


def _read_state(s3: Any, config: PipelineConfig, dataset: str) -> dict[str, Any]:
    try:
        body = s3.get_object(Bucket=config.models_bucket, Key=config.retrain_state_key(dataset))
    except Exception as err:
        if _is_missing(err):
            return {}
        raise
    return json.loads(body["Body"].read())


def retrain_datasets_of(body: str, config: PipelineConfig) -> list[str]:
    """Datasets a retrain-queue message is about (a DatasetSpec event or a recheck)."""
    data = json.loads(body)
    if data.get("kind") == RECHECK_KIND:
        return [str(data["dataset"])]
    out = []
    for event in parse_s3_event(data):
        try:
            out.append(config.dataset_of_dataset_spec(event.key))
        except ValueError:
            log.warning("ignoring an event about %s", event.key)
    return out


# ------------------------------------------------------------------ SQS batches


def batch_response(failed_message_ids: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    """Lambda's partial batch response: the messages to deliver again."""
    return {"batchItemFailures": [{"itemIdentifier": m} for m in dict.fromkeys(failed_message_ids)]}


def receive_count(record: Mapping[str, Any]) -> int:
    """How many times SQS has delivered this record (1 on the first delivery)."""
    return int(record.get("attributes", {}).get("ApproximateReceiveCount", 1))


def queued_seconds(record: Mapping[str, Any], now: float | None = None) -> float:
    """How long the record waited in SQS before this delivery (0 when unknown)."""
    sent = record.get("attributes", {}).get("SentTimestamp")
    if not sent:
        return 0.0
    return max(0.0, (time.time() if now is None else now) - int(sent) / 1000)


def handle_batch(
    event: Mapping[str, Any], process: Callable[[Mapping[str, Any]], Any]
) -> dict[str, list[dict[str, str]]]:
    """Run ``process(record)`` for each SQS record; failures are reported, not raised."""
    failed = []
    for record in event.get("Records", []):
        try:
            process(record)
        except Exception as err:  # reported to SQS, which retries then dead-letters
            failed.append(record["messageId"])
            level = logging.WARNING if isinstance(err, ReadError) else logging.ERROR
            log.log(
                level,
                "message %s failed (delivery %d): %s",
                record.get("messageId"),
                receive_count(record),
                err,
                exc_info=not isinstance(err, ReadError),
            )
    return batch_response(failed)


def spec_batch(event: Mapping[str, Any], config: PipelineConfig, *, s3: Any = None) -> dict:
    """The ``spec_file`` step for one SQS batch: a FileSpec per new ROOT object."""
    s3 = s3 or aws_client("s3")

    def process(record: Mapping[str, Any]) -> None:
        waited = queued_seconds(record)
        for item in parse_s3_event(record["body"]):
            outcome = compute_and_store_file_spec(
                item,
                config,
                s3=s3,
                receive_count=receive_count(record),
                owner=str(record.get("messageId", "")),
            )
            log.info(
                "%s: %s %s (%s, queued %.3f s, checks %.3f s, computed in %.3f s, "
                "stored in %.3f s)",
                outcome.source,
                outcome.status,
                outcome.spec_key,
                item.event_name,
                waited,
                outcome.checks_seconds,
                outcome.seconds,
                outcome.store_seconds,
            )

    return handle_batch(event, process)


def retrain_batch(event: Mapping[str, Any], config: PipelineConfig, *, s3: Any = None) -> dict:
    """The ``retrain`` step for one SQS batch: one debounced check per dataset."""
    failed: list[str] = []
    by_dataset: dict[str, list[str]] = {}
    for record in event.get("Records", []):
        try:
            for dataset in retrain_datasets_of(record["body"], config):
                by_dataset.setdefault(dataset, []).append(record["messageId"])
        except Exception as err:  # reported to SQS
            log.error("message %s: unreadable: %s", record.get("messageId"), err)
            failed.append(record["messageId"])
    for dataset, message_ids in by_dataset.items():
        try:
            outcome = retrain_if_quiet(config, dataset, s3=s3)
            log.info("retrain %s: %s %s", dataset, outcome.status, outcome.submission_id)
        except Exception as err:  # reported to SQS
            log.error("retrain %s failed: %s", dataset, err)
            failed += message_ids
    return batch_response(failed)
