"""The ``retrain`` step: one training job per quiet period of a dataset.

A trailing-edge debounce: while the DatasetSpec keeps changing, the check is postponed
with a delayed SQS message to the function's own queue; a quiet dataset gets one job
submitted to the Ray Jobs API under a deterministic submission id.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlaas4hep.io.aws import aws_client, is_missing
from mlaas4hep.pipeline import jobs_api
from mlaas4hep.pipeline.config import (
    MAX_SQS_DELAY,
    RECHECK_KIND,
    PipelineConfig,
    safe_name,
)
from mlaas4hep.pipeline.notifications import parse_s3_notifications
from mlaas4hep.pipeline.sqs import batch_response
from mlaas4hep.serve.protocol import JSON

log = logging.getLogger("mlaas4hep.pipeline")


@dataclass(frozen=True)
class RetrainOutcome:
    """What :func:`retrain_if_quiet` did.

    ``status`` is ``submitted``, ``deferred``, ``up-to-date``, ``absent`` or ``disabled``.
    """

    status: str
    dataset: str
    submission_id: str = ""
    delay: int = 0


def submission_id_for(dataset: str, etag: str) -> str:
    """The Ray submission id of the job for one DatasetSpec version: deterministic, so a
    second submission of the same version is refused by Ray instead of run twice."""
    digest = re.sub(r"[^A-Za-z0-9]", "", etag)[:16] or "none"
    return f"{jobs_api.RETRAIN_PREFIX}{safe_name(dataset)}-{digest}"


def _updated_at(head: Mapping[str, Any]) -> float:
    meta = head.get("Metadata") or {}
    if "updated-at" in meta:
        return float(meta["updated-at"])
    return head["LastModified"].timestamp()


def retrain_command(template: str, dataset: str, spec_url: str, models_url: str) -> str:
    """The retraining entrypoint for one dataset, every value shell-quoted.

    The Ray Jobs API runs an entrypoint through a shell and takes no argv, so each value
    formatted into the template is quoted with :func:`shlex.quote` (and dataset names are
    checked where keys are parsed): no name or URL can add a word or a command.
    """
    return template.format(
        dataset=shlex.quote(dataset),
        dataset_spec_url=shlex.quote(spec_url),
        models_url=shlex.quote(models_url),
    )


def retrain_if_quiet(
    config: PipelineConfig,
    dataset: str,
    *,
    s3: Any = None,
    sqs: Any = None,
    now: Callable[[], float] = time.time,
) -> RetrainOutcome:
    """Submit the training job of ``dataset`` once its DatasetSpec has been quiet long enough.

    Trailing-edge debounce: if the spec changed less than ``retrain_debounce_seconds``
    ago, a recheck message is sent to the retrain queue with the remaining delay;
    the check that finds the spec quiet submits. One job per spec version: the Ray
    submission id is derived from the spec's ETag, and the state record under the
    models bucket tells later checks that this version is done. (The debounce's
    decisions, in the order they are taken, read best as one function.)
    """
    s3 = s3 or aws_client("s3")
    if not config.ray_address:
        return RetrainOutcome("disabled", dataset)
    try:
        head = s3.head_object(Bucket=config.specs_bucket, Key=config.dataset_spec_key(dataset))
    except Exception as err:
        if is_missing(err):
            return RetrainOutcome("absent", dataset)
        raise
    etag = head["ETag"].strip('"')
    state = _read_state(s3, config, dataset)
    if state.get("dataset_etag") == etag:
        return RetrainOutcome("up-to-date", dataset, state.get("submission_id", ""))
    quiet = now() - _updated_at(head)
    if quiet < config.retrain_debounce_seconds:
        delay = min(MAX_SQS_DELAY, max(1, math.ceil(config.retrain_debounce_seconds - quiet)))
        (sqs or aws_client("sqs")).send_message(
            QueueUrl=config.retrain_queue_url,
            MessageBody=json.dumps({"kind": RECHECK_KIND, "dataset": dataset}),
            DelaySeconds=delay,
        )
        return RetrainOutcome("deferred", dataset, delay=delay)
    submission_id = submission_id_for(dataset, etag)
    spec_url = f"s3://{config.specs_bucket}/{config.dataset_spec_key(dataset)}"
    models_url = f"s3://{config.models_bucket}/{dataset}/"
    entrypoint = retrain_command(config.retrain_entrypoint, dataset, spec_url, models_url)
    submission_id, created = jobs_api.submit_job(
        config.ray_address,
        entrypoint,
        submission_id,
        metadata={"dataset": dataset, "dataset_spec": spec_url, "dataset_etag": etag},
        runtime_env=config.retrain_runtime_env,
    )
    state = {
        "dataset": dataset,
        "dataset_etag": etag,
        "dataset_spec": spec_url,
        "submission_id": submission_id,
        "entrypoint": entrypoint,
        "submitted_at": now(),
    }
    s3.put_object(
        Bucket=config.models_bucket,
        Key=config.retrain_state_key(dataset),
        Body=json.dumps(state, indent=1).encode(),
        ContentType=JSON,
    )
    log.info("retraining %s: %s (%s)", dataset, submission_id, "new" if created else "existing")
    return RetrainOutcome("submitted" if created else "up-to-date", dataset, submission_id)


def _read_state(s3: Any, config: PipelineConfig, dataset: str) -> dict[str, Any]:
    try:
        body = s3.get_object(Bucket=config.models_bucket, Key=config.retrain_state_key(dataset))
    except Exception as err:
        if is_missing(err):
            return {}
        raise
    return json.loads(body["Body"].read())


def retrain_datasets_of(body: str, config: PipelineConfig) -> list[str]:
    """Datasets a retrain-queue message is about (a DatasetSpec notification or a recheck)."""
    data = json.loads(body)
    if data.get("kind") == RECHECK_KIND:
        return [str(data["dataset"])]
    out = []
    for notification in parse_s3_notifications(data):
        try:
            out.append(config.dataset_of_dataset_spec(notification.key))
        except ValueError:
            log.warning("ignoring a notification about %s", notification.key)
    return out


def retrain_batch(event: Mapping[str, Any], config: PipelineConfig, *, s3: Any = None) -> dict:
    """The ``retrain`` step for one SQS batch: one debounced check per dataset."""
    failed: list[str] = []
    by_dataset: dict[str, list[str]] = {}
    for record in event.get("Records", []):
        try:
            for dataset in retrain_datasets_of(record["body"], config):
                by_dataset.setdefault(dataset, []).append(record["messageId"])
        except Exception as err:  # reported to SQS
            log.error("message %s: unreadable: %s", record.get("messageId"), err)
            failed.append(record["messageId"])
    for dataset, message_ids in by_dataset.items():
        try:
            outcome = retrain_if_quiet(config, dataset, s3=s3)
            log.info("retrain %s: %s %s", dataset, outcome.status, outcome.submission_id)
        except Exception as err:  # reported to SQS
            log.error("retrain %s failed: %s", dataset, err)
            failed += message_ids
    return batch_response(failed)
