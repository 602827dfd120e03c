"""mlaas4hep: Machine Learning as a Service for High-Energy Physics.

Train ML models directly on ROOT files (local, XRootD ``root://`` or S3) and serve them
over HTTP. This package is the core library: reading, specs, transforms and streaming.
It imports no AWS, Ray, TensorFlow, PyTorch or BentoML code at import time, and its
public names are resolved lazily so that ``import mlaas4hep`` stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

__version__ = "0.1.0"

# The XRootD bindings crash the process when imported after TensorFlow (a clash of the
# native libraries they bundle), and any training or serving process may need both.
# Imported first, they are harmless and cheap (~30 ms), so they are loaded here.
with contextlib.suppress(ImportError):  # the [xrootd] extra is optional
    import XRootD.client  # noqa: F401

_EXPORTS = {
    "ChunkStream": "mlaas4hep.stream.chunks",
    "DatasetSpec": "mlaas4hep.spec.documents",
    "FileSpec": "mlaas4hep.spec.documents",
    "compute_file_spec": "mlaas4hep.spec.compute",
    "Vectorizer": "mlaas4hep.transform.vectorizer",
    "open_tree": "mlaas4hep.io.tree",
    "MlaasError": "mlaas4hep.errors",
    "ReadError": "mlaas4hep.errors",
    "SpecError": "mlaas4hep.errors",
    "SchemaVersionError": "mlaas4hep.errors",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlaas4hep' has no attribute {name!r}")
