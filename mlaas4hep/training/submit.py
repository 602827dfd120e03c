"""Submit ``ray_jobs/train.py`` to a Ray cluster through the Jobs API, and wait for it.

The same call that ``ray job submit --address … --working-dir . -- python
ray_jobs/train.py --config train.yaml`` makes, from Python: the retrain function, the
demo and the tests use it. The job's summary is read back from its log (the line that
``ray_jobs/train.py`` prints with the ``MLAAS4HEP_RESULT`` prefix).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlaas4hep import extras
from mlaas4hep.errors import MlaasError

RESULT_PREFIX = "MLAAS4HEP_RESULT "
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXCLUDES = [".venv", ".venv-tools", ".git", ".stack", "data", "build", "*.root", "*.nbi", "*.nbc"]


def submit_training(
    address: str,
    config_path: str,
    *,
    working_dir: str = ".",
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    run_name: str | None = None,
) -> str:
    """Submit a training job; return its submission id."""
    client = extras.require("ray.job_submission").JobSubmissionClient(address)
    env_vars = {"TF_USE_LEGACY_KERAS": "1", "RAY_USAGE_STATS_ENABLED": "0", **dict(env or {})}
    if "MLAAS4HEP_GIT_REVISION" not in env_vars:
        from mlaas4hep.model.lineage import git_revision

        env_vars["MLAAS4HEP_GIT_REVISION"] = git_revision(working_dir)
    entrypoint = f"{python or os.path.basename(sys.executable)} ray_jobs/train.py"
    entrypoint += f" --config {config_path}"
    if run_name:
        entrypoint += f" --run-name {run_name}"
    return client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env_vars},
    )


def wait_for_job(address: str, job_id: str, timeout: float = 600.0) -> tuple[str, str]:
    """Wait until the job ends; return its status and logs."""
    client = extras.require("ray.job_submission").JobSubmissionClient(address)
    deadline = time.monotonic() + timeout
    status = str(client.get_job_status(job_id))
    while not any(status.endswith(t) for t in TERMINAL):
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"training job {job_id} still {status} after {timeout:.0f} s")
        time.sleep(1.0)
        status = str(client.get_job_status(job_id))
    return status.rsplit(".", 1)[-1], client.get_job_logs(job_id)


def job_result(logs: str) -> dict[str, Any] | None:
    """The summary the job printed, or None if it printed none."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def report(body: Callable[[], dict[str, Any]]) -> int:
    """Run a job's body and end it as every mlaas4hep job ends: its summary printed as one
    ``MLAAS4HEP_RESULT`` line (status 0), or a configuration or data error as one line
    on stderr (status 2) — what :func:`job_result` and a person reading the log expect."""
    try:
        summary = body()
    except (MlaasError, OSError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 2
    print(RESULT_PREFIX + json.dumps(summary), flush=True)
    return 0
