"""The model bundle: everything serving needs to turn raw events into a prediction.

A bundle is a directory:

=====================  ==============================================================
``bundle.json``        manifest: schema version, framework, n_features, feature names,
                       whether the model takes the mask, the model's file names, the
                       task (:mod:`~mlaas4hep.model.tasks`) and its output names
``model.weights.h5``   Keras weights, or ``model.pt`` (a PyTorch state dict)
``model.py``           the user's ``build_model(n_features)`` (absent: the default model)
``model.onnx``         the model as an ONNX graph (:mod:`~mlaas4hep.model.onnx_graph`),
                       checked against the framework on held-out rows; what serving runs
``vectorizer.json``    :meth:`Vectorizer.to_dict` — the exact preprocessing of training
``dataset_spec.json``  the DatasetSpec it was trained with
``metrics.json``       per-unit history, the task's test metrics, timings
``lineage.json``       files and their identities, config, git revision, versions
``reference.npz``      a few test rows (X, mask) and the scores the job computed
``plots/*.png``        ROC curve, loss curves, input features (signal vs background)
=====================  ==============================================================

The model is rebuilt from its code and loaded with its weights, so custom layers need
nothing else. :meth:`ModelBundle.save_to_store` puts the directory in the BentoML model
store under ``name:version``; :meth:`ModelBundle.export` copies it to the output
location and the models bucket (plus the ``.bentomodel`` archive), so the serving side
loads it by tag with :meth:`ModelBundle.from_store` or from the bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.io.documents import copy_tree
from mlaas4hep.model import architectures
from mlaas4hep.model.frameworks import load_weights, predict_arrays, save_weights
from mlaas4hep.model.manifest import (
    BUNDLE_VERSION,
    DEFAULT_MODEL,
    MANIFEST,
    is_default_model,
    read_manifest,
    task_of,
)
from mlaas4hep.model.store import add_to_store
from mlaas4hep.model.tasks import BINARY, Task
from mlaas4hep.spec.documents import DatasetSpec
from mlaas4hep.transform.vectorizer import Vectorizer

REFERENCE_ROWS = 64


# ---------------------------------------------------------------------------- bundle


@dataclass
class ModelBundle:
    """A trained model with its preprocessing, metrics and lineage."""

    framework: str
    vectorizer: Vectorizer
    spec: DatasetSpec
    with_mask: bool = False
    model_code: str | None = None
    task: Task = BINARY
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    #: Held-out rows (X, mask) to export the model to ONNX and check it on when saved.
    onnx_check: tuple[np.ndarray, np.ndarray] | None = None
    onnx: dict[str, Any] | None = None

    # --- prediction ---------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.vectorizer.n_features

    def predict_vectorized(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The model's outputs (``[n]``, or ``[n, C]`` for multiclass) for rows already
        vectorised with this bundle's Vectorizer."""
        if self.model is None:
            raise ConfigError("this bundle holds no model (load it with ModelBundle.load)")
        out = predict_arrays(self.model, self.framework, X, mask, self.with_mask)
        return self.task.shaped(out)

    def predict(self, events: Any) -> np.ndarray:
        """The model's outputs for raw events (a dict of branch arrays or an awkward
        record array)."""
        out = self.vectorizer.transform(events)
        return self.predict_vectorized(out.X, out.mask)

    # --- persistence --------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], extra_files: Sequence[Path] = ()) -> Path:
        """Write the bundle directory (created; existing files replaced)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        weights = save_weights(self.model, self.framework, path)
        if self.model_code is not None:
            (path / "model.py").write_text(self.model_code)
        if self.onnx_check is not None:
            from mlaas4hep.model.onnx_graph import export_model

            X, mask = self.onnx_check
            self.onnx = export_model(
                self.model, self.framework, self.with_mask, path, X, mask, self.task.outputs
            )
        manifest = {
            "bundle_version": BUNDLE_VERSION,
            "framework": self.framework,
            "n_features": self.n_features,
            "feature_names": self.vectorizer.feature_names,
            "branches": self.vectorizer.branches,
            "with_mask": self.with_mask,
            "weights": weights,
            "model": "model.py" if self.model_code is not None else DEFAULT_MODEL,
            "task": self.task.to_dict(),
            "outputs": self.task.output_names,
        }
        if self.onnx is not None:
            manifest["onnx"] = self.onnx
        _write_json(path / MANIFEST, manifest)
        _write_json(path / "vectorizer.json", self.vectorizer.to_dict())
        (path / "dataset_spec.json").write_text(self.spec.to_json())
        _write_json(path / "metrics.json", self.metrics)
        _write_json(path / "lineage.json", self.lineage)
        if self.reference:
            np.savez(path / "reference.npz", **self.reference)
        for extra in extra_files:
            target = path / "plots" / Path(extra).name
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(extra, target)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ModelBundle:
        """Read a bundle directory and rebuild its model."""
        path = Path(directory)
        manifest = read_manifest(path)
        code = None if is_default_model(manifest) else (path / "model.py").read_text()
        vectorizer = Vectorizer.from_dict(json.loads((path / "vectorizer.json").read_text()))
        framework = manifest["framework"]
        task = task_of(manifest)
        model = architectures.build_model(
            code,
            framework,
            vectorizer.n_features,
            manifest["with_mask"],
            image=vectorizer.image_input,
            task=task,
        )
        load_weights(model, framework, path)
        reference = {}
        if (path / "reference.npz").exists():
            with np.load(path / "reference.npz") as data:
                reference = {key: data[key] for key in data.files}
        return cls(
            framework=framework,
            vectorizer=vectorizer,
            spec=DatasetSpec.from_json((path / "dataset_spec.json").read_text()),
            with_mask=manifest["with_mask"],
            model_code=code,
            task=task,
            metrics=json.loads((path / "metrics.json").read_text()),
            lineage=json.loads((path / "lineage.json").read_text()),
            model=model,
            reference=reference,
            onnx=manifest.get("onnx"),
        )

    # --- BentoML store and buckets ------------------------------------------------
    def save_to_store(self, name: str, directory: str | os.PathLike[str]) -> str:
        """Copy a saved bundle directory into the BentoML model store; return ``name:version``."""
        return add_to_store(directory, name)

    @classmethod
    def from_store(cls, tag: str) -> ModelBundle:
        """Load a bundle from the BentoML model store by tag (``name:version`` or ``name``)."""
        bentoml = extras.require("bentoml")
        return cls.load(bentoml.models.get(tag).path)

    def export(
        self,
        directory: str | os.PathLike[str],
        output: str,
        run_name: str,
        models_bucket: str | None = None,
        tag: str | None = None,
    ) -> dict[str, str]:
        """Copy the bundle to ``<output>/<run>/bundle`` and to ``<bucket>/<name>/<run>/``."""
        places = {"output": f"{output.rstrip('/')}/{run_name}/bundle"}
        copy_tree(directory, places["output"])
        if models_bucket:
            name = self.lineage.get("config", {}).get("output", {}).get("name", "model")
            places["models_bucket"] = f"{models_bucket.rstrip('/')}/{name}/{run_name}"
            copy_tree(directory, places["models_bucket"])
        return places


def workspace(run_name: str) -> Path:
    """A fresh local directory for the driver's files of one run."""
    return Path(tempfile.mkdtemp(prefix=f"mlaas4hep-{run_name}-"))


def write_plots(
    directory: Path,
    history: list[dict[str, Any]],
    arrays: Mapping[str, np.ndarray],
    vectorizer: Vectorizer,
    task: Task = BINARY,
) -> list[Path]:
    """The task's plots of the test split (ROC curve; per-class ROC curves and the
    confusion matrix; residuals and resolution), the loss and metric curves, and the
    input-feature distributions by class (or by target quantile), as PNG files."""
    from mlaas4hep.model import plots

    directory.mkdir(parents=True, exist_ok=True)
    y, s, w = arrays["labels"], arrays["scores"], arrays.get("weights")
    if task.kind == "binary":
        made = [plots.roc_plot(directory / "roc.png", arrays["fpr"], arrays["tpr"])]
    elif task.kind == "multiclass":
        made = [
            plots.multiclass_roc_plot(directory / "roc.png", y, s, task.classes, w),
            plots.confusion_plot(directory / "confusion.png", y, s, task.classes, w),
        ]
    else:
        made = [plots.regression_plot(directory / "residuals.png", y, s, w)]
    held = len(arrays["X"])
    made += [
        plots.loss_plot(directory / "loss.png", history, task),
        plots.feature_plot(
            directory / "features.png",
            arrays["X"],
            arrays["mask"],
            y[:held],
            vectorizer.feature_names,
            task,
            None if w is None else w[:held],
        ),
    ]
    return made


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
