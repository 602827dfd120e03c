"""Lineage: where a trained model comes from (code revision, library versions)."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str:
    """The checked-out commit (``+dirty`` when modified), or the value the job was given."""
    given = os.environ.get("MLAAS4HEP_GIT_REVISION")
    if given:
        return given
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions(names: Sequence[str]) -> dict[str, str]:
    """Python's version and each installed distribution's of ``names``."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
