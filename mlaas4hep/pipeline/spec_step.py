"""The ``spec_file`` step: one new ROOT object → its FileSpec, once per object version.

A lease (a conditional write) keeps duplicate deliveries from computing the same spec
twice; an unreadable file leaves a quarantine record naming the error. A message on its
last delivery writes its record before the computation, so that a function killed on
it (memory or time: no Python code runs) still leaves one when the message is
dead-lettered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlaas4hep.errors import ReadError, SpecError
from mlaas4hep.io.aws import aws_client, is_missing, is_precondition_failure, object_exists
from mlaas4hep.pipeline.config import PipelineConfig, RejectedKey
from mlaas4hep.pipeline.notifications import S3Notification
from mlaas4hep.serve.protocol import JSON
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import FileSpec

log = logging.getLogger("mlaas4hep.pipeline")

#: The error of the record a last delivery writes before computing (see
#: :func:`compute_and_store_file_spec`); its ``error_type`` is ``LastReceive``.
LAST_RECEIVE_REASON = (
    "last delivery before the dead-letter queue; if no spec follows, the function was "
    "killed (memory or time)"
)


@dataclass(frozen=True)
class FileSpecOutcome:
    """What :func:`compute_and_store_file_spec` did.

    ``status`` is ``written``, ``exists``, ``skipped`` or ``leased`` (another delivery of
    the same object version is computing its spec right now); for a removed object,
    ``removed`` (its FileSpecs deleted) or ``superseded`` (the key holds an object
    again). ``seconds`` is the time spent computing the spec, ``checks_seconds`` the S3
    round trips before it (version, existing spec, claim) and ``store_seconds`` those
    after it (write, release).
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
            s3.put_object(**put, ContentType=JSON, IfNoneMatch="*")
            return True
        except Exception as err:
            if not is_precondition_failure(err):
                raise
        try:
            answer = s3.get_object(Bucket=config.specs_bucket, Key=key)
        except Exception as err:
            if is_missing(err):
                continue  # released meanwhile: try to create it again
            raise
        if not lease_is_takeable(answer["Body"].read(), owner, now()):
            return False
        try:  # ours (a redelivery of the owner's message) or expired: take it over
            s3.put_object(**put, ContentType=JSON, IfMatch=answer["ETag"])
            return True
        except Exception as err:
            if not is_precondition_failure(err):
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
            ContentType=JSON,
        )
    except Exception as err:
        log.warning("could not release the claim on %s@%s: %s", path, version, err)


def compute_and_store_file_spec(
    notification: S3Notification,
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

    On the message's last delivery (``receive_count`` reaching the queue's
    ``max_receive_count``, :meth:`PipelineConfig.is_last_receive`) a quarantine record
    with ``last_receive: true`` (:data:`LAST_RECEIVE_REASON`) is written before the
    computation starts: a function killed for its memory or its time runs no handler,
    and its message would otherwise reach the dead-letter queue without a word. A
    success clears it; a failure overwrites it with the error (any error on the last
    delivery, not only a ReadError, since the message is dead-lettered either way).

    ``clock`` (seconds, default :func:`time.perf_counter`) times the outcome's
    ``seconds``, ``checks_seconds`` and ``store_seconds``.
    """
    s3 = s3 or aws_client("s3")
    source = f"s3://{notification.bucket}/{notification.key}"
    began = clock()
    try:
        dataset, path = config.locate(notification.key)
    except RejectedKey as err:
        write_rejection(s3, config, notification, err)
        return FileSpecOutcome("rejected", source)
    except ValueError as err:
        log.warning("ignoring %s: %s", source, err)
        return FileSpecOutcome("skipped", source)
    version = resolve_version(notification, s3)
    leased = bool(owner and version)
    if version:
        done = _stored_or_taken(config, dataset, path, version, owner if leased else "", s3)
        if done is not None:
            return FileSpecOutcome(done[0], source, done[1])
    last = config.is_last_receive(receive_count)
    if last:
        _write_quarantine(
            s3, config, notification, dataset, path, None, receive_count, last_receive=True
        )
    start = clock()
    try:
        spec = compute(source)
    except (ReadError, SpecError) as err:
        _write_quarantine(
            s3, config, notification, dataset, path, err, receive_count, last_receive=last
        )
        raise
    except Exception as err:
        if last:  # dead-lettered next: the record names the error, not a kill
            _write_quarantine(
                s3, config, notification, dataset, path, err, receive_count, last_receive=True
            )
        raise
    computed = clock()
    spec_key, status = store_file_spec(s3, config, dataset, path, version, spec)
    clear_quarantine(s3, config, dataset, path, notification.version)
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


def _stored_or_taken(
    config: PipelineConfig, dataset: str, path: str, version: str, owner: str, s3: Any
) -> tuple[str, str] | None:
    """``(status, key)`` when the spec of this version need not be computed here: it is
    stored already (``exists``), or another worker holds its claim (``leased``). With an
    ``owner``, the claim is taken by this call when None is returned."""
    expected = config.file_spec_key(dataset, path, version)
    if object_exists(s3, config.specs_bucket, expected):
        return "exists", expected
    if not owner:
        return None
    if not claim_spec(config, dataset, path, version, owner, s3=s3):
        return "leased", expected
    # The spec may have been stored (and its claim dropped) since the check above.
    if object_exists(s3, config.specs_bucket, expected):
        release_spec_claim(config, dataset, path, version, s3=s3)
        return "exists", expected
    return None


def store_file_spec(
    s3: Any, config: PipelineConfig, dataset: str, path: str, version: str, spec: FileSpec
) -> tuple[str, str]:
    """Write the spec once (``IfNoneMatch='*'``); ``(key, "written" | "exists")``.

    Keyed by the version actually read, which may be newer than the notification's."""
    read = str(spec.identity.get("version_id") or spec.identity.get("etag") or version)
    spec_key = config.file_spec_key(dataset, path, read)
    try:
        s3.put_object(
            Bucket=config.specs_bucket,
            Key=spec_key,
            Body=spec.to_json().encode(),
            ContentType=JSON,
            IfNoneMatch="*",
            Metadata={"dataset": dataset, "entries": str(spec.entries)},
        )
    except Exception as err:
        if not is_precondition_failure(err):
            raise
        return spec_key, "exists"  # another delivery of the same version won the race
    return spec_key, "written"


def resolve_version(event: S3Notification, s3: Any) -> str:
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
        if is_missing(err):
            return event.etag  # deleted meanwhile: reading it will fail and say so
        raise
    version_id = str(head.get("VersionId") or "")
    if version_id and version_id != "null":  # "null": written while unversioned
        return version_id
    return str(head.get("ETag") or event.etag).strip('"')


def write_rejection(
    s3: Any, config: PipelineConfig, notification: S3Notification, error: RejectedKey
) -> None:
    """Record an object the pipeline refuses to read (its key), so that a person sees why
    an upload never reached a DatasetSpec."""
    record = {
        "source": f"s3://{notification.bucket}/{notification.key}",
        "key": notification.key,
        "version": notification.version,
        "error": str(error),
        "error_type": type(error).__name__,
        "recorded_at": time.time(),
    }
    s3.put_object(
        Bucket=config.specs_bucket,
        Key=config.rejected_key(notification.key),
        Body=json.dumps(record, indent=1).encode(),
        ContentType=JSON,
    )
    log.warning("rejected %s: %s", record["source"], error)


def _write_quarantine(
    s3: Any,
    config: PipelineConfig,
    event: S3Notification,
    dataset: str,
    path: str,
    error: BaseException | None,
    receive_count: int,
    *,
    last_receive: bool = False,
) -> None:
    """Record why an object version has no spec: ``error``, or (None) the warning of a
    last delivery written before its computation (:data:`LAST_RECEIVE_REASON`)."""
    record = {
        "source": f"s3://{event.bucket}/{event.key}",
        "dataset": dataset,
        "version": event.version,
        "size": event.size,
        "error": LAST_RECEIVE_REASON if error is None else str(error),
        "error_type": "LastReceive" if error is None else type(error).__name__,
        "receive_count": receive_count,
        "last_receive": last_receive,
        "recorded_at": time.time(),
    }
    put_quarantine(s3, config, dataset, path, event.version, record)
    if error is None:
        log.warning(
            "%s: last delivery (%d of %d), quarantine record written before computing",
            record["source"],
            receive_count,
            config.max_receive_count,
        )
    else:
        log.error("quarantined %s (delivery %d): %s", record["source"], receive_count, error)


def put_quarantine(
    s3: Any, config: PipelineConfig, dataset: str, path: str, version: str, record: dict
) -> None:
    """Store the quarantine ``record`` of one file version (why it has no spec)."""
    s3.put_object(
        Bucket=config.specs_bucket,
        Key=config.quarantine_key(dataset, path, version or "unknown"),
        Body=json.dumps(record, indent=1).encode(),
        ContentType=JSON,
    )


def clear_quarantine(
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


def remove_file_specs(
    notification: S3Notification, config: PipelineConfig, *, s3: Any = None
) -> FileSpecOutcome:
    """A data object was removed: delete the FileSpecs of every version of its key (and
    its quarantine records), so that the merge step, told of each deletion, takes the
    file out of the DatasetSpec and the retraining that follows never reads it.

    Nothing is deleted when the key holds an object again (removed, then uploaded anew,
    the notifications delivered out of order): that upload's own notification brings
    its spec, which replaces the old one.
    """
    s3 = s3 or aws_client("s3")
    source = f"s3://{notification.bucket}/{notification.key}"
    try:
        dataset, path = config.locate(notification.key)
    except ValueError as err:
        log.warning("ignoring the removal of %s: %s", source, err)
        return FileSpecOutcome("skipped", source)
    if object_exists(s3, notification.bucket, notification.key):
        return FileSpecOutcome("superseded", source)
    keys = delete_file_specs(s3, config, dataset, path)
    return FileSpecOutcome("removed", source, ", ".join(keys))


def delete_file_specs(s3: Any, config: PipelineConfig, dataset: str, path: str) -> list[str]:
    """Delete every version of the FileSpecs and quarantine records of one file of a
    dataset (its ``path`` within the dataset); the keys that were deleted."""
    # Every version of each (the specs bucket keeps versions): a deletion of the last
    # one is notified as ObjectRemoved:Delete, where a bare delete would leave a delete
    # marker, which not every S3 implementation notifies of.
    versions: list[dict[str, str]] = []
    paginator = s3.get_paginator("list_object_versions")
    for prefix in (
        config.file_spec_key(dataset, path, ""),
        config.quarantine_key(dataset, path, ""),
    ):
        stem = prefix.removesuffix(".json")  # <prefix><dataset>/<path>@
        for page in paginator.paginate(Bucket=config.specs_bucket, Prefix=stem):
            versions += [
                {"Key": item["Key"], "VersionId": item["VersionId"]}
                for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                # this file's (a version name holds neither), not "<path>@x.root"'s
                if not {"/", "@"} & set(item["Key"][len(stem) :])
            ]
    for start in range(0, len(versions), 1000):
        s3.delete_objects(
            Bucket=config.specs_bucket, Delete={"Objects": versions[start : start + 1000]}
        )
    return sorted({v["Key"] for v in versions})


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
