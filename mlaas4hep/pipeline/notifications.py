"""S3 notifications (object created or removed), as SQS or SNS delivers them.

The word *event* is kept for physics events; what S3 sends about an object is a
*notification*.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

log = logging.getLogger("mlaas4hep.pipeline")


@dataclass(frozen=True)
class S3Notification:
    """One record of an S3 notification (object created or removed; key already decoded)."""

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


def parse_s3_notifications(body: str | Mapping[str, Any]) -> list[S3Notification]:
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
            S3Notification(
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
