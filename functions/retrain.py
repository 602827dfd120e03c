"""Lambda handler: a DatasetSpec changed → (debounced) training job on the Ray Jobs API.

Triggered by the retrain queue (S3 notifications for ``dataset.json`` and the function's own
delayed recheck messages). A burst of new files gives one job, submitted once the
DatasetSpec has stopped changing for the configured quiet time.
"""

from __future__ import annotations

import logging
from typing import Any

from mlaas4hep.pipeline.config import PipelineConfig
from mlaas4hep.pipeline.retrain_step import retrain_batch

logging.getLogger("mlaas4hep").setLevel(logging.INFO)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return retrain_batch(event, PipelineConfig.from_env())
