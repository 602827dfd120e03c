"""AWS clients (one per service and process) and reading botocore's errors."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger("mlaas4hep.aws")


_clients: dict[tuple[str, int], Any] = {}
_clients_lock = threading.Lock()


def aws_client(service: str) -> Any:
    """A boto3 client per service and process (boto3 clients are thread-safe).

    The endpoint comes from the standard ``AWS_ENDPOINT_URL`` (a moto server locally).
    """
    key = (service, os.getpid())
    with _clients_lock:
        if key not in _clients:
            from mlaas4hep.extras import boto3

            botocore_config = boto3().session.Config(
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=32,
            )
            _clients[key] = boto3().client(service, config=botocore_config)
        return _clients[key]


def error_code(err: BaseException) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def http_status(err: BaseException) -> int:
    response = getattr(err, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_precondition_failure(err: BaseException) -> bool:
    # 412 PreconditionFailed: the ETag moved, or the object appeared meanwhile;
    # 409 ConditionalRequestConflict: another conditional write is in flight.
    return http_status(err) in (409, 412) or error_code(err) in (
        "PreconditionFailed",
        "ConditionalRequestConflict",
    )


def is_missing(err: BaseException) -> bool:
    return http_status(err) == 404 or error_code(err) in ("NoSuchKey", "404", "NotFound")


def secret_string(client: Any, secret_id: str) -> str:
    """The current string value of a Secrets Manager secret, stripped; "" when the secret
    exists without a value yet (or does not exist), so that the caller can say how to put
    one. Other errors (access denied, throttling) are raised."""
    try:
        value = client.get_secret_value(SecretId=secret_id).get("SecretString") or ""
    except Exception as err:
        if error_code(err) != "ResourceNotFoundException":  # no secret or no value
            raise
        return ""
    return value.strip()


def first_key(s3: Any, bucket: str, prefix: str) -> str:
    """The first key under ``prefix`` in ``bucket`` (one LIST of one key), "" if none."""
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    return found["Contents"][0]["Key"] if found.get("Contents") else ""


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as err:
        if is_missing(err):
            return False
        raise
    return True
