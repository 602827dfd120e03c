"""Submit ``ray_jobs/train.py`` to a Ray cluster, the way ``ray job submit`` does.

``ray job submit --address … --working-dir . -- python ray_jobs/train.py --config
train.yaml``, from Python: the demo, the benchmarks and the tests use it. The job's
summary is read back from its log with :func:`~mlaas4hep.training.result.job_result`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from mlaas4hep import extras
from mlaas4hep.model.lineage import git_revision

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
    """Submit a training job; return its submission id.

    The working directory is uploaded by Ray's own client (the one part of the Jobs API
    that needs Ray installed: it zips and uploads the package); the job is then
    followed with :mod:`~mlaas4hep.pipeline.jobs_api`.
    """
    client = extras.require("ray.job_submission").JobSubmissionClient(address)
    env_vars = {"TF_USE_LEGACY_KERAS": "1", "RAY_USAGE_STATS_ENABLED": "0", **dict(env or {})}
    if "MLAAS4HEP_GIT_REVISION" not in env_vars:
        env_vars["MLAAS4HEP_GIT_REVISION"] = git_revision(working_dir)
    entrypoint = f"{python or os.path.basename(sys.executable)} ray_jobs/train.py"
    entrypoint += f" --config {config_path}"
    if run_name:
        entrypoint += f" --run-name {run_name}"
    return client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env_vars},
    )
