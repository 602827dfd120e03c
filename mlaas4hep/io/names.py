"""One rule for matching names against names and glob patterns.

Branch selections, label maps, cache keys and dataset folders all take "a name or a
glob pattern"; they use :func:`is_pattern` and :func:`matches` so that ``Jet_*``,
``sig?.root`` and ``[ab]*`` mean the same everywhere (case-sensitive, ``fnmatch``
syntax).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

_GLOB_CHARS = frozenset("*?[")


def is_pattern(text: str) -> bool:
    """Whether ``text`` holds a glob character (``*``, ``?`` or ``[``)."""
    return bool(_GLOB_CHARS & set(text))


def matches(name: str, pattern: str) -> bool:
    """Whether ``name`` is ``pattern`` or matches it as a glob (case-sensitive)."""
    return name == pattern or (is_pattern(pattern) and fnmatch.fnmatchcase(name, pattern))


def select(names: Iterable[str], pattern: str) -> list[str]:
    """The ``names`` that ``pattern`` takes, in their order (an exact name: itself if
    present)."""
    names = list(names)
    if is_pattern(pattern):
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return [pattern] if pattern in names else []


def matches_file(url: str, pattern: str) -> bool:
    """Whether the file at ``url`` is what ``pattern`` names: the URL itself, its file
    name, a glob of either, or a trailing part of the path (``tth/signal.root``)."""
    name = url.rsplit("/", 1)[-1]
    return matches(url, pattern) or matches(name, pattern) or url.endswith("/" + pattern)
