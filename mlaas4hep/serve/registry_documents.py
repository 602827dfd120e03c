"""The registry's JSON: summarising a spec, JSON-safe values, redaction for open reads.

Model cards and listings are built from the documents a bundle holds (read with
:func:`mlaas4hep.model.manifest.read_document`); non-finite numbers become ``null``
(JSON has no NaN). A caller without the token gets them :func:`redact`-ed: where the
data lives (bucket paths, XRootD hosts, local paths) and anything credential-like in the
training configuration is not for everyone who can reach the service.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlaas4hep.errors import MlaasError
from mlaas4hep.serve.registry_errors import RegistryError


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


#: The test metrics (``metrics.json``, without the ``test_`` prefix) a card shows for
#: each task, in this order.
TASK_METRICS = {
    "binary": ("auc", "loss", "signal_fraction"),
    "multiclass": ("auc", "auc_per_class", "accuracy", "confusion", "class_fractions", "loss"),
    "regression": ("rmse", "bias", "mae", "resolution", "loss"),
}


def task_summary(manifest: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What a model card says of the task: its kind, class names, output names, loss,
    (regression) the target's offset and scale, and the task's test metrics from
    ``metrics.json`` (``test_auc_per_class``, ``test_confusion``, ``test_rmse`` …, keyed
    without the prefix; absent ones left out). A manifest whose task cannot be read
    (one stored unchecked) gets ``kind`` None and the reason, not an exception: a card
    still renders."""
    from mlaas4hep.model.manifest import task_of

    try:
        task = task_of(manifest)
    except MlaasError as err:
        return {"kind": None, "error": str(err)}
    out: dict[str, Any] = {
        "kind": task.kind,
        "classes": list(task.classes),
        "outputs": task.output_names,
        "loss": task.loss,
    }
    if task.kind == "regression":
        out["target"] = {"offset": task.offset, "scale": task.scale}
    out["metrics"] = {
        name: metrics[f"test_{name}"]
        for name in TASK_METRICS[task.kind]
        if metrics.get(f"test_{name}") is not None
    }
    return out


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


REDACTED = "<redacted>"
#: Keys whose values are secrets whatever they hold.
_SECRET_KEY = re.compile(
    r"(token|secret|passw|credential|access.?key|api.?key|private|session|signature|auth"
    r"|^key$)",
    re.IGNORECASE,
)
#: Strings that say where something lives: a URL, an absolute or home path, a drive.
_LOCATION = re.compile(r"^\s*(?:[A-Za-z][A-Za-z0-9+.-]*://|/|~|[A-Za-z]:[\\/]|\\\\)")


def redact(value: Any) -> Any:
    """``value`` without locations and secrets: a location keeps only its last path
    component (``s3://bucket/ttH/a.root`` → ``<redacted>/a.root``, so a reader still sees
    which files), a secret-like key's value becomes ``<redacted>``; dict keys that are
    locations are redacted the same way."""
    if isinstance(value, str):
        return _redacted_location(value) if _LOCATION.match(value) else value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _redacted_location(key) if isinstance(key, str) and _LOCATION.match(key) else key
            if name != key:  # two files of one name in two places stay two entries
                name = (
                    next(
                        f"{name} ({i})"
                        for i in range(1, len(out) + 2)
                        if f"{name} ({i})" not in out
                    )
                    if name in out
                    else name
                )
            secret = isinstance(key, str) and _SECRET_KEY.search(key)
            out[name] = REDACTED if secret and item not in (None, False, True) else redact(item)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value


def _redacted_location(text: str) -> str:
    path = re.sub(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://[^/]*", "", text)  # never the host
    last = re.split(r"[/\\]", path.rstrip("/\\"))[-1] if path.strip("/\\") else ""
    return (
        f"{REDACTED}/{last}" if last and not _LOCATION.match(last) and ":" not in last else REDACTED
    )


# ------------------------------------------------------------ listing filters

CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+)\s*$")
OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
}


def metric_condition(text: str) -> tuple[str, str, float]:
    match = CONDITION.match(text)
    if not match:
        raise RegistryError(
            f"metric condition {text!r}: write it as <metric><op><number>, e.g. test_auc>=0.8",
            field="metric",
        )
    try:
        return match.group(1), match.group(2), float(match.group(3))
    except ValueError:
        raise RegistryError(f"metric condition {text!r}: not a number", field="metric") from None


def as_date(value: str | dt.datetime | None, field: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise RegistryError(
                f"{field} {value!r}: an ISO 8601 date such as 2025-01-31 or "
                "2025-01-31T12:00:00+00:00",
                field=field,
            ) from None
    return utc(value)


def utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
