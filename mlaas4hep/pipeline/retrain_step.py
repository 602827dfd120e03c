"""The ``retrain`` step: one training job per quiet period of a dataset, followed to
its end.

A trailing-edge debounce: while the DatasetSpec keeps changing, the check is postponed
with a delayed SQS message to the function's own queue; a quiet dataset gets one job
submitted to the Ray Jobs API under a deterministic submission id. Delayed rechecks
then watch the job: a failed attempt is submitted again (bounded, with backoff, a new
submission id each, every attempt in the state document), and while the Jobs API
cannot be reached the step re-arms itself instead of losing the DatasetSpec version.
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

from mlaas4hep.io.aws import aws_client, is_missing, secret_string
from mlaas4hep.pipeline import jobs_api
from mlaas4hep.pipeline.config import (
    MAX_SQS_DELAY,
    RECHECK_KIND,
    PipelineConfig,
    PipelineError,
    safe_name,
)
from mlaas4hep.pipeline.notifications import parse_s3_notifications
from mlaas4hep.pipeline.sqs import batch_response
from mlaas4hep.serve.protocol import JSON

log = logging.getLogger("mlaas4hep.pipeline")


@dataclass(frozen=True)
class RetrainOutcome:
    """What :func:`retrain_if_quiet` did.

    ``status`` is ``submitted``, ``deferred``, ``up-to-date``, ``absent``, ``disabled``,
    or, for a version already submitted, ``running``, ``succeeded``, ``retrying`` or
    ``failed``.
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
    """Submit the training job of ``dataset`` once its DatasetSpec has been quiet long
    enough, and follow that job until it succeeds or its attempts run out.

    Trailing-edge debounce: if the spec changed less than ``retrain_debounce_seconds``
    ago, a recheck message is sent to the retrain queue with the remaining delay;
    the check that finds the spec quiet submits. One job per spec version: the Ray
    submission id is derived from the spec's ETag, and the state record under the
    models bucket tells later checks what became of this version. Later checks of the
    same version follow it (:func:`_follow`): the job is watched with delayed rechecks,
    a failed one is retried with backoff, and while Ray cannot be reached the step
    re-arms itself, so a version is never dropped.
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
        return _follow(config, dataset, state, s3=s3, sqs=sqs, now=now)
    quiet = now() - _updated_at(head)
    if quiet < config.retrain_debounce_seconds:
        delay = min(MAX_SQS_DELAY, max(1, math.ceil(config.retrain_debounce_seconds - quiet)))
        _recheck(config, dataset, delay, sqs)
        return RetrainOutcome("deferred", dataset, delay=delay)
    fresh = {"dataset": dataset, "dataset_etag": etag, "attempts": []}
    return _submit(config, fresh, s3=s3, sqs=sqs, now=now)


_TOKENS: dict[str, str] = {}


def ray_token(config: PipelineConfig, secrets: Any = None) -> str:
    """The Ray cluster's token from Secrets Manager (``ray_token_secret``), read once per
    process; "" when none is configured. A secret without a value is a PipelineError that
    says how to put one (the retrain message is then retried, and dead-lettered)."""
    name = config.ray_token_secret
    if not name:
        return ""
    if name not in _TOKENS:
        value = secret_string(secrets or aws_client("secretsmanager"), name)
        if not value:
            raise PipelineError(
                f"the Ray token secret {name} has no value: put the cluster's token "
                "(RAY_AUTH_TOKEN) with `aws secretsmanager put-secret-value`"
            )
        _TOKENS[name] = value
    return _TOKENS[name]


def _recheck(config: PipelineConfig, dataset: str, delay: int, sqs: Any) -> None:
    """A recheck of ``dataset`` in ``delay`` seconds, through the function's own queue."""
    (sqs or aws_client("sqs")).send_message(
        QueueUrl=config.retrain_queue_url,
        MessageBody=json.dumps({"kind": RECHECK_KIND, "dataset": dataset}),
        DelaySeconds=delay,
    )


def _write_state(s3: Any, config: PipelineConfig, state: dict[str, Any]) -> None:
    s3.put_object(
        Bucket=config.models_bucket,
        Key=config.retrain_state_key(state["dataset"]),
        Body=json.dumps(state, indent=1).encode(),
        ContentType=JSON,
    )


def _submit(
    config: PipelineConfig, state: dict[str, Any], *, s3: Any, sqs: Any, now: Callable[[], float]
) -> RetrainOutcome:
    """Submit the next attempt of ``state``'s version; then watch it. Ray out of reach:
    the state says so and a recheck comes back later (doubling delays) to try again."""
    dataset, etag = state["dataset"], state["dataset_etag"]
    attempts: list[dict[str, Any]] = state["attempts"]
    attempt = len(attempts) + 1
    submission_id = submission_id_for(dataset, etag) + ("" if attempt == 1 else f"-a{attempt}")
    spec_url = f"s3://{config.specs_bucket}/{config.dataset_spec_key(dataset)}"
    models_url = f"s3://{config.models_bucket}/{dataset}/"
    entrypoint = retrain_command(config.retrain_entrypoint, dataset, spec_url, models_url)
    try:
        submission_id, created = jobs_api.submit_job(
            config.ray_address,
            entrypoint,
            submission_id,
            metadata={"dataset": dataset, "dataset_spec": spec_url, "dataset_etag": etag},
            runtime_env=config.retrain_runtime_env,
            token=ray_token(config),
        )
    except jobs_api.JobsUnreachable as err:
        unreachable = int(state.get("unreachable", 0)) + 1
        delay = config.retry_delay(unreachable)
        _write_state(s3, config, {**state, "status": "unreachable", "unreachable": unreachable})
        _recheck(config, dataset, delay, sqs)
        log.warning("retraining %s: %s; trying again in %d s", dataset, err, delay)
        return RetrainOutcome("deferred", dataset, submission_id, delay)
    submitted_at = now()
    state = {
        "dataset": dataset,
        "dataset_etag": etag,
        "dataset_spec": spec_url,
        "submission_id": submission_id,
        "entrypoint": entrypoint,
        "submitted_at": submitted_at,
        "status": "submitted",
        "attempts": [*attempts, {"submission_id": submission_id, "submitted_at": submitted_at}],
    }
    _write_state(s3, config, state)
    _recheck(config, dataset, config.retry_delay(1), sqs)  # the watch
    log.info("retraining %s: %s (%s)", dataset, submission_id, "new" if created else "existing")
    return RetrainOutcome("submitted" if created else "up-to-date", dataset, submission_id)


def _follow(
    config: PipelineConfig,
    dataset: str,
    state: dict[str, Any],
    *,
    s3: Any,
    sqs: Any,
    now: Callable[[], float],
) -> RetrainOutcome:
    """A later check of a version already in hand: watch its job, retry it, or say it
    is settled. A state from before attempts were recorded counts as settled.

    A job that ends with status 2 (the job's configuration or data error) is not
    retried: the next attempt would fail the same way. Any other failure, and a job Ray
    no longer knows (a head restarted without its job table), is submitted again under
    a new id after ``retry_delay``, up to ``retrain_max_attempts`` submissions.
    """
    status = state.get("status", "succeeded")
    submission_id = state.get("submission_id", "")
    state.setdefault("attempts", [])
    if status in ("succeeded", "failed"):
        return RetrainOutcome("up-to-date", dataset, submission_id)
    if status == "unreachable":
        return _submit(config, state, s3=s3, sqs=sqs, now=now)
    if status == "retry-pending":
        wait = math.ceil(float(state.get("retry_at", 0)) - now())
        if wait <= 0:
            return _submit(config, state, s3=s3, sqs=sqs, now=now)
        _recheck(config, dataset, min(MAX_SQS_DELAY, wait), sqs)
        return RetrainOutcome("deferred", dataset, submission_id, min(MAX_SQS_DELAY, wait))
    try:
        info = jobs_api.job_info(config.ray_address, submission_id, token=ray_token(config))
        ended, exit_code, message = info.status, info.exit_code, info.message
    except jobs_api.JobsUnreachable:
        _recheck(config, dataset, config.retry_delay(1), sqs)
        return RetrainOutcome("running", dataset, submission_id)
    except jobs_api.JobsError as err:  # Ray answered that it has no such job
        ended, exit_code, message = "LOST", None, str(err)
    if ended not in (*jobs_api.TERMINAL, "LOST"):
        _recheck(config, dataset, config.retry_delay(1), sqs)
        return RetrainOutcome("running", dataset, submission_id)
    if not state["attempts"]:
        state["attempts"].append({"submission_id": submission_id})
    state["attempts"][-1].update(
        status=ended, exit_code=exit_code, message=message[-500:], checked_at=now()
    )
    tried = len(state["attempts"])
    if ended == "SUCCEEDED":
        _write_state(s3, config, {**state, "status": "succeeded"})
        return RetrainOutcome("succeeded", dataset, submission_id)
    if exit_code == 2 or tried >= config.retrain_max_attempts:
        why = "a configuration or data error" if exit_code == 2 else f"{tried} attempt(s)"
        _write_state(s3, config, {**state, "status": "failed"})
        log.error("retraining %s: %s %s, given up after %s", dataset, submission_id, ended, why)
        return RetrainOutcome("failed", dataset, submission_id)
    delay = config.retry_delay(tried)
    _write_state(s3, config, {**state, "status": "retry-pending", "retry_at": now() + delay})
    _recheck(config, dataset, delay, sqs)
    log.warning("retraining %s: %s %s, attempt %d in %d s", dataset, submission_id, ended,
                tried + 1, delay)  # fmt: skip
    return RetrainOutcome("retrying", dataset, submission_id, delay)


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
