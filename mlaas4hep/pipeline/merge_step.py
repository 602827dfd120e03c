"""The ``merge_specs`` step: FileSpecs folded into the DatasetSpec with conditional writes.

``IfMatch`` on the ETag read (``IfNoneMatch='*'`` for the first write), retried on
412/409, so concurrent merges never lose an update and a file is counted once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlaas4hep.io.aws import (
    aws_client,
    first_key,
    is_missing,
    is_precondition_failure,
    object_exists,
)
from mlaas4hep.pipeline.config import PipelineConfig, PipelineError
from mlaas4hep.pipeline.notifications import parse_s3_notifications
from mlaas4hep.pipeline.sqs import batch_response, queued_seconds
from mlaas4hep.serve.protocol import JSON
from mlaas4hep.spec.documents import DatasetSpec, FileSpec

log = logging.getLogger("mlaas4hep.pipeline")


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
        if is_missing(err):
            return DatasetSpec.empty(), None
        raise
    return DatasetSpec.from_json(answer["Body"].read()), answer["ETag"]


def fold_file_specs(
    dataset: DatasetSpec,
    specs: Iterable[FileSpec],
    current_identity: Callable[[str], dict[str, Any] | None] | None = None,
    removed: Iterable[str] = (),
) -> DatasetSpec:
    """``dataset`` less the ``removed`` sources, with ``specs`` added; a file already
    counted is left as it is.

    When a spec's file is known with another identity (the object was overwritten),
    the spec whose identity matches the object as it is now wins, so that late events
    about an old version never replace the new one; ``current_identity(source)`` gives
    that identity (None when unknown, in which case the incoming spec wins).
    """
    gone = [source for source in removed if source in dataset.files]
    if gone:
        dataset = dataset.without(*gone)
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
    removed: Iterable[str] = (),
) -> MergeOutcome:
    """Fold FileSpecs into the dataset's stored DatasetSpec, safely under concurrency.

    Read the spec and its ETag, merge in memory, write back only if the ETag is still
    the same (``IfMatch``; ``IfNoneMatch='*'`` when there is no spec yet). A 412 means
    another merge got there first: read again and retry, with jittered exponential
    backoff. Nothing is written when every spec is already counted.
    """
    s3 = s3 or aws_client("s3")
    specs, removed = list(specs), list(removed)
    key = config.dataset_spec_key(dataset)
    for attempt in range(1, max_attempts + 1):
        current, etag = read_dataset_spec(config, dataset, s3=s3)
        merged = fold_file_specs(current, specs, current_identity, removed)
        if _versions(merged) == _versions(current):
            return MergeOutcome(False, attempt, len(current.files), current.entries, etag or "")
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            answer = s3.put_object(
                Bucket=config.specs_bucket,
                Key=key,
                Body=merged.to_json().encode(),
                ContentType=JSON,
                Metadata={"updated-at": f"{time.time():.6f}", "files": str(len(merged.files))},
                **condition,
            )
        except Exception as err:
            if not is_precondition_failure(err):
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
    per file (fewer conflicts); a dataset whose merge fails reports all its messages. A
    deleted FileSpec (its data object was removed) takes its file out of the DatasetSpec,
    and a FileSpec whose data object is gone by now is not added: a file that left is
    never trained on, whatever order the notifications arrive in.
    """
    s3 = s3 or aws_client("s3")
    began = time.perf_counter()
    failed: list[str] = []
    by_dataset: dict[str, list[tuple[str, FileSpec | str]]] = {}
    queued = {r.get("messageId"): queued_seconds(r) for r in event.get("Records", [])}
    for record in event.get("Records", []):
        try:
            for item in parse_s3_notifications(record["body"]):
                dataset = config.dataset_of_file_spec(item.key)
                if item.event_name.startswith("ObjectRemoved"):
                    change: FileSpec | str = config.source_of_file_spec(item.key)
                    if _still_listed(s3, config, item.key, change):
                        continue  # the key holds an object again: its own spec follows
                else:
                    change = load_file_spec(item.bucket, item.key, item.version_id, s3=s3)
                    if not _still_listed(s3, config, item.key, change.key):
                        log.info("not adding %s: the object is gone", change.key)
                        change = change.key
                by_dataset.setdefault(dataset, []).append((record["messageId"], change))
        except Exception as err:  # reported to SQS
            log.error("message %s: cannot load its file spec: %s", record.get("messageId"), err)
            failed.append(record["messageId"])
    for dataset, items in by_dataset.items():
        try:
            outcome = merge_into_dataset(
                config,
                dataset,
                [c for _, c in items if isinstance(c, FileSpec)],
                s3=s3,
                current_identity=s3_object_identity(s3),
                removed=[c for _, c in items if isinstance(c, str)],
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


def _still_listed(s3: Any, config: PipelineConfig, spec_key: str, source: str) -> bool:
    """Whether the file of a FileSpec belongs to the dataset now: its ``s3://`` data
    object exists, or, for a manifest entry (a remote URL), some FileSpec of the entry
    does (the manifest step deletes them all when the entry leaves the manifest)."""
    if source.startswith("s3://"):
        bucket, _, key = source[len("s3://") :].partition("/")
        return object_exists(s3, bucket, key)
    return bool(first_key(s3, config.specs_bucket, config.file_spec_stem(spec_key)))
