"""The BentoML model store as a cache of bundles: the one way a bundle becomes a version.

A version is a copy of a bundle directory under ``name:version``, labelled with its
framework and run and carrying its test AUC, feature count and code revision as
metadata (what listings and model cards show without opening the bundle). Both the
training job (the process-wide store) and the registry (its own store) register
bundles through :func:`add_to_store`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlaas4hep import extras
from mlaas4hep.model.manifest import read_document, read_manifest

#: The module BentoML records for bundles in its model store.
STORE_MODULE = "mlaas4hep.model.bundle"


def store_labels(
    manifest: Mapping[str, Any], metrics: Mapping[str, Any], lineage: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, Any]]:
    """The labels and metadata a version of this bundle carries in the store."""
    labels = {
        "framework": str(manifest.get("framework", "")),
        "run": str(lineage.get("run_name", "")),
    }
    auc = metrics.get("test_auc")
    metadata = {
        "test_auc": float(auc) if isinstance(auc, (int, float)) else float("nan"),
        "n_features": int(manifest.get("n_features") or 0),
        "git_revision": str(lineage.get("git_revision", "")),
    }
    return labels, metadata


@contextlib.contextmanager
def new_version(
    tag: str,
    labels: Mapping[str, str],
    metadata: Mapping[str, Any],
    *,
    store: Any = None,
    created: Callable[[], dt.datetime] | None = None,
) -> Iterator[Any]:
    """BentoML's model creation context (a staging folder, saved into the store on exit).

    ``store`` is a BentoML model store (the process-wide one if None); ``created`` gives
    the creation time (BentoML's own clock if None).
    """
    bentoml = extras.require("bentoml")
    options = {"_model_store": store} if store is not None else {}
    with bentoml.models.create(
        tag, labels=dict(labels), metadata=dict(metadata), module=STORE_MODULE, **options
    ) as model:
        if created is not None:  # BentoML takes no creation time; its info is frozen
            object.__setattr__(model.info, "creation_time", created())
        yield model


def add_to_store(
    directory: str | os.PathLike[str],
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    store: Any = None,
    created: Callable[[], dt.datetime] | None = None,
) -> str:
    """Copy the bundle in ``directory`` into the store as a new version of ``name``;
    return its tag (``name:version``)."""
    source = Path(directory)
    own, metadata = store_labels(
        read_manifest(source),
        read_document(source / "metrics.json"),
        read_document(source / "lineage.json"),
    )
    with new_version(
        name, {**own, **(labels or {})}, metadata, store=store, created=created
    ) as model:
        shutil.copytree(source, model.path, dirs_exist_ok=True)
    return str(model.tag)
