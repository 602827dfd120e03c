"""SQS batches as Lambda receives them: one record at a time, partial batch responses.

One bad message never fails its neighbours: each failure is reported to SQS, which
delivers it again and finally dead-letters it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mlaas4hep.errors import ReadError

log = logging.getLogger("mlaas4hep.pipeline")


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
