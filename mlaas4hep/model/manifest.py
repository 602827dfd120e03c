"""The bundle manifest (``bundle.json``): the one place that reads and checks it.

The manifest names the bundle version, the framework, the number and names of the
features, whether the model takes the mask, the model (``default`` or user code), its
weights file, the task and its output names. The training job writes it; the bundle
loader, the predictor of the service and the registry (listing, model cards, uploaded
archives) read it here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlaas4hep.errors import ConfigError
from mlaas4hep.model.tasks import Task

MANIFEST = "bundle.json"
BUNDLE_VERSION = 1
KERAS_WEIGHTS = "model.weights.h5"
TORCH_WEIGHTS = "model.pt"
DEFAULT_MODEL = "default"
#: A file name inside a bundle: no folder, no leading dot (so no ``..`` nor absolute path).
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def weights_name(framework: str) -> str:
    """The weights file of a framework's model in a bundle or checkpoint."""
    return TORCH_WEIGHTS if framework == "torch" else KERAS_WEIGHTS


def check_manifest(manifest: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``manifest`` as a dict, if this release reads its bundle version (else ConfigError)."""
    if not isinstance(manifest, Mapping):
        raise ConfigError(f"{where}: the bundle manifest must be a JSON object")
    if manifest.get("bundle_version") != BUNDLE_VERSION:
        raise ConfigError(
            f"{where}: bundle version {manifest.get('bundle_version')!r} is not supported "
            f"(this release reads {BUNDLE_VERSION})"
        )
    for key in ("weights", "model"):  # file names inside the bundle, nothing else
        value = manifest.get(key)
        if value is not None and (not isinstance(value, str) or not _FILE_NAME.fullmatch(value)):
            raise ConfigError(f"{where}: {key} must name a file inside the bundle, not {value!r}")
    try:
        task_of(manifest)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    onnx = manifest.get("onnx")
    if onnx is not None and (
        not isinstance(onnx, Mapping)
        or not isinstance(onnx.get("file"), str)
        or not _FILE_NAME.fullmatch(onnx["file"])
    ):
        raise ConfigError(f"{where}: onnx.file must name a file inside the bundle, not {onnx!r}")
    return dict(manifest)


def read_manifest(directory: str | os.PathLike[str], *, check: bool = True) -> dict[str, Any]:
    """The manifest of the bundle in ``directory``, checked; ConfigError naming the
    directory when it is missing or malformed. ``check=False`` returns ``{}`` for a
    directory without one and skips the version check (listing foreign models)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        if not check:
            return {}
        raise ConfigError(f"{directory} is not a model bundle (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        if not check:
            return {}
        raise ConfigError(f"{directory}: malformed bundle manifest: {err}") from None
    return check_manifest(manifest, str(directory)) if check else manifest


def read_document(path: Path) -> dict[str, Any]:
    """A JSON object a bundle holds (metrics, lineage, …), or ``{}`` when it is missing,
    unreadable or not an object: a listing must not fail on one odd model."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_default_model(manifest: Mapping[str, Any]) -> bool:
    """Whether the bundle holds the default model (no user code)."""
    return manifest.get("model", DEFAULT_MODEL) in (None, DEFAULT_MODEL)


def task_of(manifest: Mapping[str, Any]) -> Task:
    """The task a manifest records (binary for bundles made before tasks)."""
    return Task.from_dict(manifest.get("task"))


def weights_of(manifest: Mapping[str, Any]) -> str:
    """The weights file a manifest names (the framework's default name if none)."""
    return str(manifest.get("weights") or weights_name(str(manifest.get("framework"))))
