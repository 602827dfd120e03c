"""Labels per file: which label each file of a stream gets, from names or patterns."""

from __future__ import annotations

from collections.abc import Mapping

from mlaas4hep.errors import ConfigError
from mlaas4hep.io import names
from mlaas4hep.io.location import normalize_url


def resolve_labels(files: list[str], labels: Mapping[str, float]) -> dict[str, float]:
    """Match each file to a label: by full URL, by file name, or else by the first
    pattern that :func:`~mlaas4hep.io.names.matches_file` accepts."""
    normalized = {
        k if names.is_pattern(k) else normalize_url(k): float(v) for k, v in labels.items()
    }
    resolved = {}
    for url in files:
        name = url.rsplit("/", 1)[-1]
        if url in normalized:
            resolved[url] = normalized[url]
        elif name in labels:
            resolved[url] = float(labels[name])
        else:
            match = [v for k, v in labels.items() if names.matches_file(url, k)]
            if not match:
                raise ConfigError(f"no label given for file {url}")
            resolved[url] = float(match[0])
    return resolved
