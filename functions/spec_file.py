"""Lambda handler: new ROOT objects in the data bucket → their FileSpecs in the specs bucket.

Triggered by the spec_file queue (S3 ``ObjectCreated`` events for ``*.root`` under the
data prefix). Each object is streamed, never loaded whole, so files larger than the
function's memory work; an unreadable file is quarantined and its message reported as
failed, to be retried and then dead-lettered, while the rest of the batch succeeds. On
a message's last delivery (``MLAAS4HEP_MAX_RECEIVE_COUNT``) the quarantine record is
written before the computation, so that a function killed for memory or time leaves one.
"""

from __future__ import annotations

import logging
from typing import Any

from mlaas4hep.pipeline.config import PipelineConfig
from mlaas4hep.pipeline.spec_function import spec_batch

logging.getLogger("mlaas4hep").setLevel(logging.INFO)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return spec_batch(event, PipelineConfig.from_env())
