"""File URLs from what a user writes: paths, directories, glob patterns and prefixes."""

from __future__ import annotations

import os
from collections.abc import Sequence

from mlaas4hep.io.schemes import location_of


def expand_sources(items: Sequence[str | os.PathLike[str]]) -> list[str]:
    """File URLs from paths, directories, glob patterns and ``s3://`` prefixes.

    A local directory or an ``s3://bucket/prefix/`` gives every ``*.root`` file under
    it; a glob is expanded; anything else (including ``root://`` URLs) is kept as is. An
    ``https://`` URL is one file: one that looks like a directory or a glob is a
    ConfigError (web servers list no directories). Each file appears once, in the order
    found.
    """
    found: list[str] = []
    for item in items:
        text = os.fspath(item)
        found += location_of(text).expand(text)
    return list(dict.fromkeys(found))
