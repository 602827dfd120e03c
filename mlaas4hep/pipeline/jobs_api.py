"""The one client of the Ray Jobs API: submit, list, status, logs, stop, wait.

Plain HTTP against the Ray dashboard (``/api/jobs/``), so that the retrain function,
``mlaas4hep jobs`` and the tests work from any machine that reaches the cluster, with
no Ray installed. Retraining jobs
are the ones the retrain function submitted (submission ids ``mlaas4hep-retrain-…``,
with the dataset in their metadata); a job that failed shows its status, its message
and the tail of its log, and the serving model is untouched by it.

On a cluster with Ray's token authentication (``RAY_AUTH_MODE=token``) every call sends
``Authorization: Bearer <token>``: the ``token`` argument, or by default
:func:`default_token` (``$MLAAS4HEP_RAY_TOKEN``, ``$RAY_AUTH_TOKEN``, the local stack's
``.stack/ray_token``); an empty token sends none.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlaas4hep.errors import MlaasError
from mlaas4hep.serve.protocol import JSON

RETRAIN_PREFIX = "mlaas4hep-retrain-"
#: The file of a local stack's state directory that holds its Ray head's token.
TOKEN_FILE = "ray_token"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobsError(MlaasError):
    """The Ray Jobs API could not be reached or answered an error."""


class JobsUnreachable(JobsError):
    """The Ray Jobs API could not be reached at all (refused, timed out, no route): a
    state that passes, unlike an error it answers."""


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
    exit_code: int | None = None  # the entrypoint's, once it ended (when Ray says)

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
            exit_code=_exit_code(data),
        )

    @property
    def retraining(self) -> bool:
        return self.submission_id.startswith(RETRAIN_PREFIX)


def _exit_code(data: dict[str, Any]) -> int | None:
    """The entrypoint's exit status: Ray's ``driver_exit_code``, or the one its message
    states ("... failed with exit code 2 ...")."""
    code = data.get("driver_exit_code")
    if isinstance(code, int):
        return code
    found = re.search(r"exit code (-?\d+)", str(data.get("message") or ""))
    return int(found.group(1)) if found else None


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


def default_token(state_dir: str | os.PathLike[str] | None = None) -> str:
    """The Ray token sent by default: ``$MLAAS4HEP_RAY_TOKEN``, ``$RAY_AUTH_TOKEN`` (Ray's
    own variable), or the local stack's (``<state dir>/ray_token``); "" when none."""
    for name in ("MLAAS4HEP_RAY_TOKEN", "RAY_AUTH_TOKEN"):
        if os.environ.get(name):
            return os.environ[name]
    path = Path(state_dir or ".stack") / TOKEN_FILE
    return path.read_text().strip() if path.is_file() else ""


def _headers(token: str | None) -> dict[str, str]:
    token = default_token() if token is None else token
    return {"Authorization": f"Bearer {token}"} if token else {}


def _refused(err: urllib.error.HTTPError, address: str) -> str:
    if err.code == 401:
        return f"the Ray Jobs API at {address} wants a token (token authentication is on)"
    if err.code == 403:
        return f"the Ray Jobs API at {address} refused the token sent"
    return ""


def _get(address: str, path: str, timeout: float = 10.0, token: str | None = None) -> Any:
    url = address.rstrip("/") + path
    request = urllib.request.Request(url, headers=_headers(token))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise JobsError(f"no such job at {url}") from err
        if refused := _refused(err, address):
            raise JobsError(refused) from err
        raise JobsError(f"Ray Jobs API {url} answered {err.code}: {err.read()[:300]!r}") from err
    except OSError as err:
        raise JobsUnreachable(f"Ray Jobs API at {address} unreachable: {err}") from err


def list_jobs(
    address: str,
    *,
    dataset: str | None = None,
    all_jobs: bool = False,
    token: str | None = None,
) -> list[JobInfo]:
    """Jobs of the cluster, newest first: retraining jobs only unless ``all_jobs``."""
    jobs = [JobInfo.from_api(item) for item in _get(address, "/api/jobs/", token=token)]
    if not all_jobs:
        jobs = [job for job in jobs if job.retraining]
    if dataset is not None:
        jobs = [job for job in jobs if job.dataset == dataset]
    return sorted(jobs, key=lambda job: job.start_time or 0.0, reverse=True)


def job_info(address: str, submission_id: str, token: str | None = None) -> JobInfo:
    quoted = urllib.parse.quote(submission_id, safe="")
    return JobInfo.from_api(_get(address, f"/api/jobs/{quoted}", token=token))


def job_logs(address: str, submission_id: str, token: str | None = None) -> str:
    quoted = urllib.parse.quote(submission_id, safe="")
    return str(_get(address, f"/api/jobs/{quoted}/logs", token=token).get("logs", ""))


def job_status(address: str, submission_id: str, token: str | None = None) -> str:
    """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``."""
    return job_info(address, submission_id, token).status


def stop_job(address: str, submission_id: str, token: str | None = None) -> bool:
    """Ask Ray to stop a job; whether it was running."""
    quoted = urllib.parse.quote(submission_id, safe="")
    request = urllib.request.Request(
        f"{address.rstrip('/')}/api/jobs/{quoted}/stop",
        data=b"",
        headers=_headers(token),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return bool(json.loads(answer.read() or b"{}").get("stopped", False))
    except OSError as err:
        raise JobsError(f"Ray Jobs API at {address}: cannot stop {submission_id}: {err}") from err


def wait_for_job(
    address: str,
    submission_id: str,
    timeout: float = 600.0,
    poll: float = 1.0,
    token: str | None = None,
) -> tuple[str, str]:
    """Poll until the job ends (stopping it after ``timeout`` s); its status and logs."""
    deadline = time.monotonic() + timeout
    while (status := job_status(address, submission_id, token)) not in TERMINAL:
        if time.monotonic() > deadline:
            stop_job(address, submission_id, token)
            raise TimeoutError(f"job {submission_id} still {status} after {timeout:.0f} s")
        time.sleep(poll)
    return status, job_logs(address, submission_id, token)


def submit_job(
    address: str,
    entrypoint: str,
    submission_id: str,
    *,
    metadata: Mapping[str, str] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    token: str | None = None,
) -> tuple[str, bool]:
    """Submit a job through the Ray Jobs REST API; ``(submission_id, created)``.

    ``runtime_env`` must name packages already on the cluster (a ``working_dir`` URI, as
    the retraining recipe does); :func:`mlaas4hep.pipeline.submission.submit_training`
    uploads a local directory first. A job that already exists with the same submission
    id counts as submitted (``created`` False).
    """
    payload = {
        "entrypoint": entrypoint,
        "submission_id": submission_id,
        "metadata": dict(metadata or {}),
        "runtime_env": dict(runtime_env or {}),
    }
    request = urllib.request.Request(
        address.rstrip("/") + "/api/jobs/",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": JSON, **_headers(token)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = json.loads(answer.read() or b"{}")
            return str(body.get("submission_id") or submission_id), True
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        if "already exists" in text or "already been used" in text:
            return submission_id, False
        if refused := _refused(err, address):
            raise JobsError(refused) from err
        raise JobsError(f"Ray job submission to {address} failed ({err.code}): {text}") from err
    except OSError as err:
        raise JobsUnreachable(f"Ray Jobs API at {address} unreachable: {err}") from err
