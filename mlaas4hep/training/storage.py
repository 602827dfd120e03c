"""Where a training run keeps its checkpoints: ``<output.location>/checkpoints``.

A local directory, or an ``s3://`` prefix through pyarrow's S3 filesystem (the endpoint
and region from the same ``AWS_*`` variables boto3 reads), for Ray Train's
``RunConfig`` and for the one-worker actor (:mod:`mlaas4hep.training.actor`) alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlaas4hep import extras
from mlaas4hep.io.location import scheme


def run_storage(output: str) -> tuple[str, Any]:
    """The checkpoints' path and pyarrow filesystem for an output location (None: local;
    the directory is created)."""
    if scheme(output) == "s3":
        fs = extras.require("pyarrow.fs")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            kwargs["scheme"] = endpoint.split("://", 1)[0]
        region = os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return output.removeprefix("s3://").rstrip("/") + "/checkpoints", fs.S3FileSystem(**kwargs)
    path = Path(output).resolve() / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return str(path), None
