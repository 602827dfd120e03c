"""How every mlaas4hep job ends, and how its summary is read back from its log.

A job prints its summary as one ``MLAAS4HEP_RESULT {json}`` line (status 0), or a
configuration or data error as one line on stderr (status 2).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from mlaas4hep.errors import MlaasError

RESULT_PREFIX = "MLAAS4HEP_RESULT "


def job_result(logs: str) -> dict[str, Any] | None:
    """The summary the job printed, or None if it printed none."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def process_seconds() -> float | None:
    """Seconds since this process started (its interpreter's start and imports, when a
    job asks first thing), or None where the system does not say."""
    try:
        import psutil  # with Ray, which every training job runs on
    except ImportError:
        return None
    return max(0.0, time.time() - psutil.Process().create_time())


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
