"""The ``spec_file`` step for manifests: a manifest's entries fanned out, one FileSpec each.

A new version of ``<data prefix><dataset>/files.txt`` (or ``files.json``, see
:mod:`mlaas4hep.pipeline.manifests`) is read and checked whole; the FileSpecs of entries
it no longer lists are deleted (the merge step then drops them from the DatasetSpec),
and each entry without a FileSpec yet is sent as one message to the spec function's own
queue, so that a manifest of thousands of files is computed by as many invocations as
the queue's concurrency allows, each retried and dead-lettered on its own. A deleted
manifest deletes the FileSpecs of all its entries.

Each entry message carries the manifest's ETag: an entry whose manifest has changed
since (or is gone) is not computed, and a spec computed meanwhile is not stored, since
the new version's own messages stand for the entries it still lists.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlaas4hep.errors import ReadError, SpecError
from mlaas4hep.io.aws import aws_client, first_key, is_missing, object_exists
from mlaas4hep.pipeline.config import (
    PipelineConfig,
    PipelineError,
    RejectedKey,
    check_dataset_name,
)
from mlaas4hep.pipeline.manifests import (
    ENTRY_KIND,
    MAX_MANIFEST_BYTES,
    ManifestError,
    check_url,
    entry_folder,
    entry_path,
    identity_version,
    is_manifest,
    parse_manifest,
    url_of_entry_path,
)
from mlaas4hep.pipeline.notifications import S3Notification
from mlaas4hep.pipeline.spec_step import (
    LAST_RECEIVE_REASON,
    FileSpecOutcome,
    clear_quarantine,
    delete_file_specs,
    put_quarantine,
    store_file_spec,
    write_rejection,
)
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import FileSpec

log = logging.getLogger("mlaas4hep.pipeline")

#: The quarantine version of a manifest entry's record (an entry has one at a time).
ENTRY_RECORD_VERSION = "entry"


@dataclass(frozen=True)
class ManifestOutcome:
    """What :func:`apply_manifest` did: ``status`` is ``applied``, ``removed`` (the
    manifest was deleted), ``superseded`` (deleted, but the key holds one again),
    ``quarantined`` (malformed: nothing used), ``rejected`` or ``skipped``; the URLs of
    the entries ``sent`` to be computed, ``dropped`` (FileSpecs deleted) and ``kept``."""

    status: str
    source: str
    sent: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    kept: int = 0


def is_manifest_key(key: str) -> bool:
    """Whether an object key names a manifest (by its file name; where it lies is
    checked by :func:`apply_manifest`)."""
    return is_manifest(key.rsplit("/", 1)[-1])


def entry_message(dataset: str, manifest: str, etag: str, url: str) -> str:
    """The body of the message that has one manifest entry computed."""
    return json.dumps(
        {"kind": ENTRY_KIND, "dataset": dataset, "manifest": manifest, "etag": etag, "url": url}
    )


def parse_entry_message(body: str | bytes) -> dict[str, str] | None:
    """The fields of a manifest entry message; None for any other body (S3's)."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != ENTRY_KIND:
        return None
    return {k: str(data.get(k, "")) for k in ("dataset", "manifest", "etag", "url")}


def apply_manifest(
    notification: S3Notification,
    config: PipelineConfig,
    *,
    s3: Any = None,
    sqs: Any = None,
    receive_count: int = 1,
) -> ManifestOutcome:
    """Bring a dataset's manifest entries in line with a new (or deleted) manifest.

    Entries that lost their place have their FileSpecs deleted; new entries are sent to
    the spec function's queue (``MLAAS4HEP_SPEC_QUEUE_URL``), ten per request. A
    malformed manifest is quarantined (the record names the line) and changes nothing.
    """
    s3 = s3 or aws_client("s3")
    source = f"s3://{notification.bucket}/{notification.key}"
    try:
        dataset, path = config.locate(notification.key)
    except RejectedKey as err:
        write_rejection(s3, config, notification, err)
        return ManifestOutcome("rejected", source)
    except ValueError as err:
        log.warning("ignoring %s: %s", source, err)
        return ManifestOutcome("skipped", source)
    if not is_manifest(path):
        log.warning("ignoring %s: a manifest lies directly in its dataset's folder", source)
        return ManifestOutcome("skipped", source)
    removed = notification.event_name.startswith("ObjectRemoved")
    if removed:
        if object_exists(s3, notification.bucket, notification.key):
            return ManifestOutcome("superseded", source)
        wanted: list[str] = []
        etag = ""
    else:
        try:
            wanted, etag = _read_manifest(s3, notification, path, source)
        except ManifestError as err:
            record = {
                "source": source,
                "dataset": dataset,
                "version": notification.version,
                "error": str(err),
                "error_type": type(err).__name__,
                "receive_count": receive_count,
                "recorded_at": time.time(),
            }
            put_quarantine(s3, config, dataset, path, notification.version, record)
            log.error("quarantined the manifest %s: %s", source, err)
            return ManifestOutcome("quarantined", source)
        if etag is None:  # deleted since the notification: its removal follows
            return ManifestOutcome("skipped", source)
    stored = _stored_entries(s3, config, dataset, path)
    listed = set(wanted)
    dropped = sorted(url for url in stored if url not in listed)
    for url in dropped:
        delete_file_specs(s3, config, dataset, entry_path(path, url))
    new = [url for url in wanted if url not in stored]
    if new:
        _send_entries(sqs or aws_client("sqs"), config, dataset, path, etag, new)
    if not removed:
        clear_quarantine(s3, config, dataset, path, notification.version)
    return ManifestOutcome(
        "removed" if removed else "applied",
        source,
        sent=tuple(new),
        dropped=tuple(dropped),
        kept=len(wanted) - len(new),
    )


def _read_manifest(
    s3: Any, notification: S3Notification, path: str, source: str
) -> tuple[list[str], str | None]:
    """``(urls, etag)`` of the manifest as it is now (``etag`` None: it is gone)."""
    try:
        head = s3.head_object(Bucket=notification.bucket, Key=notification.key)
    except Exception as err:
        if is_missing(err):
            return [], None
        raise
    if int(head.get("ContentLength", 0)) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: larger than {MAX_MANIFEST_BYTES} bytes")
    etag = str(head.get("ETag", "")).strip('"')
    try:
        answer = s3.get_object(Bucket=notification.bucket, Key=notification.key, IfMatch=etag)
    except Exception as err:
        if is_missing(err):
            return [], None
        raise
    body = answer["Body"].read(MAX_MANIFEST_BYTES + 1)
    return parse_manifest(body, path, source), etag


def _stored_entries(s3: Any, config: PipelineConfig, dataset: str, manifest: str) -> set[str]:
    """The URLs of a manifest's entries that have a FileSpec (any version)."""
    folder = f"{config.file_specs_prefix}{dataset}/"
    urls = set()
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(
        Bucket=config.specs_bucket, Prefix=folder + entry_folder(manifest)
    ):
        for item in page.get("Contents", []):
            path = item["Key"][len(folder) :].rpartition("@")[0]
            url = url_of_entry_path(path)
            if url is not None:
                urls.add(url)
    return urls


def _send_entries(
    sqs: Any, config: PipelineConfig, dataset: str, manifest: str, etag: str, urls: list[str]
) -> None:
    if not config.spec_queue_url:
        raise PipelineError(
            "MLAAS4HEP_SPEC_QUEUE_URL is not set: a manifest's entries are sent to the spec "
            "function's own queue"
        )
    for start in range(0, len(urls), 10):
        batch = urls[start : start + 10]
        answer = sqs.send_message_batch(
            QueueUrl=config.spec_queue_url,
            Entries=[
                {"Id": str(i), "MessageBody": entry_message(dataset, manifest, etag, url)}
                for i, url in enumerate(batch)
            ],
        )
        if answer.get("Failed"):
            raise PipelineError(
                f"could not send {len(answer['Failed'])} entries of {dataset}/{manifest} to "
                f"the spec queue: {answer['Failed'][0].get('Message', '')}"
            )


def compute_manifest_entry(
    entry: Mapping[str, str],
    config: PipelineConfig,
    *,
    s3: Any = None,
    receive_count: int = 1,
    compute: Callable[[str], FileSpec] = compute_file_spec,
) -> FileSpecOutcome:
    """Compute and store the FileSpec of one manifest entry (a message of
    :func:`apply_manifest`), unless it has one or its manifest has changed.

    An unreadable file raises :class:`~mlaas4hep.errors.ReadError` after writing a
    quarantine record naming the URL and the manifest, so that the message is retried
    and finally dead-lettered; as for data objects, the last delivery writes its record
    before computing.
    """
    s3 = s3 or aws_client("s3")
    url = entry.get("url", "")
    try:
        dataset = check_dataset_name(entry.get("dataset", ""), url)
        if not is_manifest(entry.get("manifest", "")):
            raise ManifestError(f"{entry.get('manifest')!r} is not a manifest name")
        check_url(url, "a manifest entry message")
    except ValueError as err:
        log.error("ignoring a malformed manifest entry message: %s", err)
        return FileSpecOutcome("skipped", url)
    manifest = entry["manifest"]
    path = entry_path(manifest, url)
    manifest_key = f"{config.data_prefix}{dataset}/{manifest}"
    if not _manifest_is(s3, config, manifest_key, entry["etag"]):
        return FileSpecOutcome("superseded", url)
    any_version = config.file_spec_key(dataset, path, "")
    stored = first_key(s3, config.specs_bucket, config.file_spec_stem(any_version))
    if stored:
        return FileSpecOutcome("exists", url, stored)
    record = {
        "source": url,
        "dataset": dataset,
        "manifest": f"s3://{config.data_bucket}/{manifest_key}",
        "version": entry["etag"],
        "receive_count": receive_count,
    }
    last = config.is_last_receive(receive_count)
    if last:
        put_quarantine(
            s3,
            config,
            dataset,
            path,
            ENTRY_RECORD_VERSION,
            {
                **record,
                "error": LAST_RECEIVE_REASON,
                "error_type": "LastReceive",
                "last_receive": True,
                "recorded_at": time.time(),
            },
        )
    began = time.perf_counter()
    try:
        spec = compute(url)
    except Exception as err:
        if isinstance(err, ReadError | SpecError) or last:
            put_quarantine(
                s3,
                config,
                dataset,
                path,
                ENTRY_RECORD_VERSION,
                {
                    **record,
                    "error": str(err),
                    "error_type": type(err).__name__,
                    "last_receive": last,
                    "recorded_at": time.time(),
                },
            )
            log.error(
                "quarantined %s of %s (delivery %d): %s", url, manifest_key, receive_count, err
            )
        raise
    seconds = time.perf_counter() - began
    if not _manifest_is(s3, config, manifest_key, entry["etag"]):
        return FileSpecOutcome("superseded", url, seconds=seconds)
    spec_key, status = store_file_spec(
        s3, config, dataset, path, identity_version(dict(spec.identity)), spec
    )
    clear_quarantine(s3, config, dataset, path, ENTRY_RECORD_VERSION)
    return FileSpecOutcome(status, url, spec_key, spec.entries, seconds=seconds)


def _manifest_is(s3: Any, config: PipelineConfig, key: str, etag: str) -> bool:
    """Whether the manifest at ``key`` still has the ETag ``etag``."""
    try:
        head = s3.head_object(Bucket=config.data_bucket, Key=key)
    except Exception as err:
        if is_missing(err):
            return False
        raise
    return str(head.get("ETag", "")).strip('"') == etag
