"""The registry's JSON: summarising a spec, JSON-safe values.

Model cards and listings are built from the documents a bundle holds (read with
:func:`mlaas4hep.model.manifest.read_document`); non-finite numbers become ``null``
(JSON has no NaN).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from mlaas4hep.errors import MlaasError


def spec_summary(spec: Mapping[str, Any], branches: Sequence[str]) -> dict[str, Any]:
    """Files, entries and the statistics of the model's branches from a DatasetSpec."""
    if not spec:
        return {}
    from mlaas4hep.spec.documents import DatasetSpec

    try:
        dataset = DatasetSpec.from_json(json.dumps(spec))
    except MlaasError as err:
        return {"error": str(err)}
    stats = {}
    for name in branches:
        with contextlib.suppress(MlaasError, KeyError):
            s = dataset.branch(name)
            stats[name] = {
                "kind": s.kind,
                "dtype": s.dtype,
                "min": finite_or_none(s.min),
                "max": finite_or_none(s.max),
                "mean": finite_or_none(s.mean),
                "std": finite_or_none(s.std),
                "max_length": s.max_length if s.kind == "jagged" else None,
            }
    return {"files": len(dataset.files), "entries": dataset.entries, "branches": stats}


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None
