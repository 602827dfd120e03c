"""Where the pipeline keeps things: its configuration and the layout of its keys.

One :class:`PipelineConfig` read from the environment (``MLAAS4HEP_*``, set by
Terraform), and the key layout of the data, specs and models buckets derived from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlaas4hep.errors import MlaasError
from mlaas4hep.pipeline.manifests import ENTRY_FOLDER, url_of_entry_path

log = logging.getLogger("mlaas4hep.pipeline")


DATASET_SPEC_NAME = "dataset.json"
RECHECK_KIND = "mlaas4hep.retrain-recheck"
MAX_SQS_DELAY = 900
ENV_PREFIX = "MLAAS4HEP_"


#: What a dataset name may be: it becomes part of keys, job ids and a command line.
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class RejectedKey(ValueError):
    """An object key the pipeline refuses (a dataset name outside :data:`DATASET_NAME`)."""


def check_dataset_name(name: str, key: str) -> str:
    """``name`` if it is a valid dataset name; else :class:`RejectedKey` naming ``key``."""
    if not DATASET_NAME.fullmatch(name):
        raise RejectedKey(
            f"{key!r}: the dataset name {name!r} is not allowed (letters, digits, '.', '_' "
            "and '-', starting with a letter or digit, at most 63 characters)"
        )
    return name


class PipelineError(MlaasError, RuntimeError):
    """The pipeline could not complete a step (e.g. a merge kept conflicting)."""


@dataclass(frozen=True)
class PipelineConfig:
    """Where the pipeline reads and writes: buckets, prefixes and the retraining settings.

    Built from the ``MLAAS4HEP_*`` environment variables that Terraform gives every
    function (``infra/main.tf``, ``common_environment``).
    """

    data_bucket: str
    specs_bucket: str
    models_bucket: str = ""
    cache_bucket: str = ""
    data_prefix: str = "datasets/"
    file_specs_prefix: str = "files/"
    dataset_specs_prefix: str = "datasets/"
    quarantine_prefix: str = "quarantine/"
    retrain_state_prefix: str = "retrain/"
    lease_prefix: str = "leases/"
    spec_lease_seconds: float = 900.0
    #: Deliveries of a spec_file message before SQS moves it to the dead-letter queue
    #: (the queue's ``maxReceiveCount``): the last one writes a quarantine record first.
    max_receive_count: int = 3
    ray_address: str = ""
    retrain_entrypoint: str = ""
    retrain_runtime_env: dict[str, Any] = field(default_factory=dict)
    retrain_debounce_seconds: float = 300.0
    retrain_queue_url: str = ""
    #: Submissions of one DatasetSpec version at most: a job that fails (other than with
    #: the configuration/data error status, 2) is submitted again under a new id.
    retrain_max_attempts: int = 3
    #: How often a submitted job is checked, and the first retry's delay (doubling per
    #: attempt, as the re-arm while Ray cannot be reached does; both capped by SQS).
    retrain_retry_seconds: float = 60.0
    #: The Secrets Manager secret (ARN or name) holding the Ray cluster's token; "" for a
    #: cluster without token authentication.
    ray_token_secret: str = ""
    #: The spec function's own queue: a manifest's entries are sent there, one message
    #: each (:mod:`mlaas4hep.pipeline.manifests`).
    spec_queue_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PipelineConfig:
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str:
            value = env.get(ENV_PREFIX + name, default)
            if value is None:
                raise PipelineError(f"the environment variable {ENV_PREFIX}{name} is not set")
            return value

        runtime_env = get("RETRAIN_RUNTIME_ENV", "{}") or "{}"
        try:
            parsed_env = json.loads(runtime_env)
        except json.JSONDecodeError as err:
            raise PipelineError(f"{ENV_PREFIX}RETRAIN_RUNTIME_ENV is not JSON: {err}") from err
        return cls(
            data_bucket=get("DATA_BUCKET"),
            specs_bucket=get("SPECS_BUCKET"),
            models_bucket=get("MODELS_BUCKET", ""),
            cache_bucket=get("CACHE_BUCKET", ""),
            data_prefix=get("DATA_PREFIX", "datasets/"),
            file_specs_prefix=get("FILE_SPECS_PREFIX", "files/"),
            dataset_specs_prefix=get("DATASET_SPECS_PREFIX", "datasets/"),
            quarantine_prefix=get("QUARANTINE_PREFIX", "quarantine/"),
            retrain_state_prefix=get("RETRAIN_STATE_PREFIX", "retrain/"),
            lease_prefix=get("LEASE_PREFIX", "leases/"),
            spec_lease_seconds=float(get("SPEC_LEASE_SECONDS", "900")),
            max_receive_count=_whole(get, "MAX_RECEIVE_COUNT", "3"),
            ray_address=get("RAY_ADDRESS", ""),
            retrain_entrypoint=get("RETRAIN_ENTRYPOINT", ""),
            retrain_runtime_env=parsed_env if isinstance(parsed_env, dict) else {},
            retrain_debounce_seconds=float(get("RETRAIN_DEBOUNCE_SECONDS", "300")),
            retrain_queue_url=get("RETRAIN_QUEUE_URL", ""),
            retrain_max_attempts=_whole(get, "RETRAIN_MAX_ATTEMPTS", "3"),
            retrain_retry_seconds=float(get("RETRAIN_RETRY_SECONDS", "60")),
            ray_token_secret=get("RAY_TOKEN_SECRET", ""),
            spec_queue_url=get("SPEC_QUEUE_URL", ""),
        )

    def retry_delay(self, attempt: int) -> int:
        """Seconds before check or retry number ``attempt`` (1, 2, …): the base doubled
        per attempt, at least 1 and at most SQS's longest delay."""
        delay = self.retrain_retry_seconds * 2 ** max(0, min(attempt, 16) - 1)
        return int(min(MAX_SQS_DELAY, max(1, math.ceil(delay))))

    def is_last_receive(self, receive_count: int) -> bool:
        """Whether a delivery that SQS counts ``receive_count`` is the message's last one:
        if it fails too (or the function is killed), the message goes to the DLQ."""
        return receive_count >= self.max_receive_count

    # Key layout. A data object <data_prefix><dataset>/<path>.root has its FileSpec at
    # <file_specs_prefix><dataset>/<path>.root@<version>.json in the specs bucket, and the
    # dataset's spec at <dataset_specs_prefix><dataset>/dataset.json.

    def locate(self, data_key: str) -> tuple[str, str]:
        """``(dataset, path within the dataset)`` of a data object; ValueError outside it."""
        if not data_key.startswith(self.data_prefix):
            raise ValueError(f"{data_key!r} is not under the data prefix {self.data_prefix!r}")
        dataset, sep, path = data_key[len(self.data_prefix) :].partition("/")
        if not sep or not dataset or not path:
            raise ValueError(f"{data_key!r} is not <data prefix><dataset>/<file>")
        check_dataset_name(dataset, data_key)
        if path.split("/", 1)[0] == ENTRY_FOLDER:
            raise RejectedKey(
                f"{data_key!r}: {ENTRY_FOLDER}/ within a dataset is kept for the entries "
                "of its manifest; store the file elsewhere in the dataset"
            )
        return dataset, path

    def file_spec_key(self, dataset: str, path: str, version: str) -> str:
        return f"{self.file_specs_prefix}{dataset}/{path}@{safe_name(version)}.json"

    def file_spec_stem(self, spec_key: str) -> str:
        """What the keys of every version of one file's FileSpec start with
        (``<prefix><dataset>/<path>@``), from any one of them."""
        return spec_key.rpartition("@")[0] + "@"

    def source_of_file_spec(self, spec_key: str) -> str:
        """The URL of the file a FileSpec key was computed from: the ``s3://`` data
        object, or the URL of a manifest entry."""
        dataset = self.dataset_of_file_spec(spec_key)
        rest = spec_key[len(self.file_specs_prefix) + len(dataset) + 1 :]
        path, sep, _ = rest.rpartition("@")
        if not sep or not path:
            raise ValueError(f"{spec_key!r} is not <file specs prefix><dataset>/<file>@<version>")
        url = url_of_entry_path(path)
        if url is not None:
            return url
        return f"s3://{self.data_bucket}/{self.data_prefix}{dataset}/{path}"

    def quarantine_key(self, dataset: str, path: str, version: str) -> str:
        return f"{self.quarantine_prefix}{dataset}/{path}@{safe_name(version)}.json"

    def rejected_key(self, key: str) -> str:
        """Where the record of a refused object key goes (named by a hash of the key: the
        key itself is not fit to be part of another)."""
        import hashlib

        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return f"{self.quarantine_prefix}_rejected/{digest}.json"

    def lease_key(self, dataset: str, path: str, version: str) -> str:
        """The claim on computing one object version's FileSpec (see :func:`claim_spec`)."""
        return f"{self.lease_prefix}{dataset}/{path}@{safe_name(version)}.lease"

    def dataset_spec_key(self, dataset: str) -> str:
        return f"{self.dataset_specs_prefix}{dataset}/{DATASET_SPEC_NAME}"

    def dataset_of_file_spec(self, spec_key: str) -> str:
        if not spec_key.startswith(self.file_specs_prefix):
            raise ValueError(f"{spec_key!r} is not under {self.file_specs_prefix!r}")
        return check_dataset_name(
            spec_key[len(self.file_specs_prefix) :].split("/", 1)[0], spec_key
        )

    def dataset_of_dataset_spec(self, spec_key: str) -> str:
        rest = spec_key[len(self.dataset_specs_prefix) :]
        if not spec_key.startswith(self.dataset_specs_prefix) or not rest.endswith(
            "/" + DATASET_SPEC_NAME
        ):
            raise ValueError(f"{spec_key!r} is not a dataset spec key")
        return check_dataset_name(rest[: -len(DATASET_SPEC_NAME) - 1], spec_key)

    def retrain_state_key(self, dataset: str) -> str:
        return f"{self.retrain_state_prefix}{dataset}/state.json"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _whole(get: Any, name: str, default: str) -> int:
    """A whole number of at least 1 from the environment, or a PipelineError naming it."""
    text = get(name, default)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise PipelineError(
            f"{ENV_PREFIX}{name} must be a whole number of at least 1, not {text!r}"
        )
    return value
