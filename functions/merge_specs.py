"""Lambda handler: new FileSpecs → the dataset's DatasetSpec, with S3 conditional writes.

Triggered by the merge_specs queue (S3 events for FileSpec objects). Concurrent merges
never lose an update (``IfMatch``/``IfNoneMatch`` and retry on 412) and a file whose
event arrives twice is counted once.
"""

from __future__ import annotations

import logging
from typing import Any

from mlaas4hep.pipeline.config import PipelineConfig
from mlaas4hep.pipeline.merge_step import merge_batch

logging.getLogger("mlaas4hep").setLevel(logging.INFO)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return merge_batch(event, PipelineConfig.from_env())
