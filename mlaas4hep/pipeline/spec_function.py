"""The ``spec_file`` function's batches: S3 notifications about data objects and
manifests, and the manifest entries the function sent itself.

Each SQS record is one of: an S3 notification of a ROOT object (created: its FileSpec,
:mod:`mlaas4hep.pipeline.spec_step`; removed: its FileSpecs deleted), of a manifest
(created or removed: its entries brought in line, :mod:`mlaas4hep.pipeline.manifest_step`),
or one manifest entry to compute.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mlaas4hep.io.aws import aws_client
from mlaas4hep.pipeline.config import PipelineConfig
from mlaas4hep.pipeline.manifest_step import (
    apply_manifest,
    compute_manifest_entry,
    is_manifest_key,
    parse_entry_message,
)
from mlaas4hep.pipeline.notifications import parse_s3_notifications
from mlaas4hep.pipeline.spec_step import compute_and_store_file_spec, remove_file_specs
from mlaas4hep.pipeline.sqs import handle_batch, queued_seconds, receive_count

log = logging.getLogger("mlaas4hep.pipeline")


def spec_batch(
    event: Mapping[str, Any], config: PipelineConfig, *, s3: Any = None, sqs: Any = None
) -> dict:
    """The ``spec_file`` step for one SQS batch (failures reported per message)."""
    s3 = s3 or aws_client("s3")

    def process(record: Mapping[str, Any]) -> None:
        waited = queued_seconds(record)
        deliveries = receive_count(record)
        entry = parse_entry_message(record["body"])
        if entry is not None:
            done = compute_manifest_entry(entry, config, s3=s3, receive_count=deliveries)
            log.info(
                "%s (manifest entry of %s): %s %s (queued %.3f s, computed in %.3f s)",
                done.source,
                entry["dataset"],
                done.status,
                done.spec_key,
                waited,
                done.seconds,
            )
            return
        for item in parse_s3_notifications(record["body"]):
            if is_manifest_key(item.key):
                applied = apply_manifest(item, config, s3=s3, sqs=sqs, receive_count=deliveries)
                log.info(
                    "%s: %s, %d entries sent, %d dropped, %d kept (%s)",
                    applied.source,
                    applied.status,
                    len(applied.sent),
                    len(applied.dropped),
                    applied.kept,
                    item.event_name,
                )
                continue
            if item.event_name.startswith("ObjectRemoved"):
                removed = remove_file_specs(item, config, s3=s3)
                log.info("%s: %s (%s)", removed.source, removed.status, item.event_name)
                continue
            outcome = compute_and_store_file_spec(
                item,
                config,
                s3=s3,
                receive_count=deliveries,
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
