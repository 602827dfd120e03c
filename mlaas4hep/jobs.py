"""The retraining jobs, as the Ray Jobs API reports them: list, status, logs.

Plain HTTP against the Ray dashboard (``GET /api/jobs/``), so that ``mlaas4hep jobs``
works from any machine that reaches the cluster, with no Ray installed. Retraining jobs
are the ones the retrain function submitted (submission ids ``mlaas4hep-retrain-…``,
with the dataset in their metadata); a job that failed shows its status, its message
and the tail of its log, and the serving model is untouched by it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlaas4hep.errors import MlaasError

RETRAIN_PREFIX = "mlaas4hep-retrain-"


class JobsError(MlaasError):
    """The Ray Jobs API could not be reached or answered an error."""


@dataclass(frozen=True)
class JobInfo:
    """One Ray job, in the fields a person asks about."""

    submission_id: str
    status: str
    dataset: str
    entrypoint: str
    message: str
    start_time: float | None
    end_time: float | None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> JobInfo:
        def seconds(value: Any) -> float | None:
            return float(value) / 1000.0 if value else None

        return cls(
            submission_id=str(data.get("submission_id") or data.get("job_id") or ""),
            status=str(data.get("status", "")),
            dataset=str((data.get("metadata") or {}).get("dataset", "")),
            entrypoint=str(data.get("entrypoint", "")),
            message=str(data.get("message") or ""),
            start_time=seconds(data.get("start_time")),
            end_time=seconds(data.get("end_time")),
        )

    @property
    def retraining(self) -> bool:
        return self.submission_id.startswith(RETRAIN_PREFIX)


def default_address(state_dir: str | os.PathLike[str] | None = None) -> str:
    """The Ray Jobs API address: ``$MLAAS4HEP_RAY_ADDRESS``, ``$RAY_ADDRESS`` (http form),
    or the local stack's Ray head (``.stack/stack.json``)."""
    for name in ("MLAAS4HEP_RAY_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith("http"):
            return value
    record = Path(state_dir or ".stack") / "stack.json"
    if record.exists():
        return json.loads(record.read_text())["ray"]["address"]
    raise JobsError(
        "no Ray address: pass --address http://HOST:8265, set MLAAS4HEP_RAY_ADDRESS, "
        "or start the local stack"
    )


def _get(address: str, path: str, timeout: float = 10.0) -> Any:
    url = address.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise JobsError(f"no such job at {url}") from err
        raise JobsError(f"Ray Jobs API {url} answered {err.code}: {err.read()[:300]!r}") from err
    except OSError as err:
        raise JobsError(f"Ray Jobs API at {address} unreachable: {err}") from err


def list_jobs(address: str, *, dataset: str | None = None, all_jobs: bool = False) -> list[JobInfo]:
    """Jobs of the cluster, newest first: retraining jobs only unless ``all_jobs``."""
    jobs = [JobInfo.from_api(item) for item in _get(address, "/api/jobs/")]
    if not all_jobs:
        jobs = [job for job in jobs if job.retraining]
    if dataset is not None:
        jobs = [job for job in jobs if job.dataset == dataset]
    return sorted(jobs, key=lambda job: job.start_time or 0.0, reverse=True)


def job_info(address: str, submission_id: str) -> JobInfo:
    quoted = urllib.parse.quote(submission_id, safe="")
    return JobInfo.from_api(_get(address, f"/api/jobs/{quoted}"))


def job_logs(address: str, submission_id: str) -> str:
    quoted = urllib.parse.quote(submission_id, safe="")
    return str(_get(address, f"/api/jobs/{quoted}/logs").get("logs", ""))
