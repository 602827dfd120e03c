"""Lazy imports of optional heavy dependencies, with an install hint when missing.

The core library must import without TensorFlow, PyTorch, Ray, BentoML or boto3; the
code paths that need one of them call the matching function here (as uproot.extras
does), so that a missing package gives an actionable message instead of a bare
ImportError deep inside a training job.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_HINTS = {
    "tensorflow": "tf",
    "torch": "torch",
    "ray": "ray",
    "bentoml": "serve",
    "boto3": "s3",
    "s3fs": "s3",
    "fsspec_xrootd": "xrootd",
    "XRootD": "xrootd",
    "matplotlib": "plots",
    "pyarrow": "serve",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "tf2onnx": "onnx",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = _HINTS.get(top, "all")
        raise ImportError(
            f"{module} is required for this feature but is not installed: "
            f"pip install 'mlaas4hep[{extra}]'"
        ) from err


def tensorflow() -> ModuleType:
    """TensorFlow, imported on first use."""
    return require("tensorflow")


def torch() -> ModuleType:
    """PyTorch, imported on first use."""
    return require("torch")


def boto3() -> ModuleType:
    """boto3, imported on first use."""
    return require("boto3")


def pyplot() -> ModuleType:
    """matplotlib.pyplot with the non-interactive Agg backend (no display on servers)."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=False)
    return require("matplotlib.pyplot")
