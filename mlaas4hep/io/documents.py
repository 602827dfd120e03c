"""Small documents (specs, configs, summaries, bundles) at a local path or a URL."""

from __future__ import annotations

import os
from pathlib import Path

from mlaas4hep.io.schemes import location_of


def read_text(url: str) -> str:
    """The text of a small document (a spec, a config) at a local path or ``s3://`` URL."""
    return location_of(url).read_bytes(url).decode()


def write_text(url: str, text: str) -> None:
    """Write a small document to a local path (parents created) or an ``s3://`` URL."""
    location_of(url).write_bytes(url, text.encode())


def copy_tree(source: str | os.PathLike[str], target: str) -> None:
    """Copy a local directory to a local path or an ``s3://`` prefix."""
    location_of(target).put_tree(Path(source), target)
