"""Loading a model bundle for serving, safely, and scoring events fast.

Why not :meth:`ModelBundle.load`: it rebuilds the model from its code, and a bundle may
hold a user's ``model.py``, which is arbitrary code. The serving side loads, by default,
only what cannot run code:

* the default architecture (dense 128 → 64 → the task's head: a sigmoid, a softmax over
  the classes, or the scaled regression value; dropout is the identity at inference)
  from its weights: the Keras ``.weights.h5`` file read with h5py, or the PyTorch state
  dict read with ``torch.load(weights_only=True)``. The network is then evaluated with
  numpy (float32 ``matmul``), which costs microseconds per batch where a framework call
  costs milliseconds, and is checked at load time against the scores the training job
  recorded in ``reference.npz``;
* any architecture, the user's included, from the bundle's ``model.onnx`` (every model
  the training job trains is exported and checked,
  :mod:`~mlaas4hep.model.onnx_graph`), scored by ONNX Runtime: the graph is data, checked
  before it is loaded (standard operators only, no tensor outside the file), so no user
  code runs. This is the path every bundle the job writes takes; the numpy one stays for
  bundles from before ONNX, or a server without onnxruntime;
* a bundle with user code and no graph only when the service is configured to trust it
  (``trust_user_code``); otherwise :class:`UnsafeBundleError` says how to allow it. The
  default image model (a CNN) without a graph is rebuilt by its framework: it is the
  project's own code.

:class:`Predictor` holds the Vectorizer and the forward pass of one model version; it
turns event columns (from :mod:`mlaas4hep.serve.payloads`) into the model's outputs: one
probability per event, one per class (``[n, C]``), or the regressed value.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.model.manifest import is_default_model, read_manifest, task_of, weights_of
from mlaas4hep.model.tasks import BINARY, Task, max_difference
from mlaas4hep.serve.payloads import EventColumns
from mlaas4hep.transform.vectorizer import Vectorizer

#: Hidden widths of the default model (mlaas4hep.model.architectures.default_keras_model);
#: the last layer has the task's outputs.
DEFAULT_WIDTHS = (128, 64)
#: Scores of the reference rows must agree with the training job's within this.
REFERENCE_TOLERANCE = 1e-5
#: Rows per block of the numpy forward pass (bounds the hidden-layer memory).
BLOCK_ROWS = 16384
#: Events vectorised and scored together by Predictor.score.
SCORE_ROWS = 131072

Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]


class UnsafeBundleError(ConfigError):
    """A bundle holds user code and the service is not configured to trust it."""


@dataclass
class DenseNetwork:
    """The default model's forward pass in numpy: ReLU hidden layers, then the task's
    head (:func:`~mlaas4hep.model.architectures.keras_head`)."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    with_mask: bool = False
    task: Task = BINARY

    def __call__(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        task = self.task
        out = np.empty((len(X), task.outputs) if task.outputs > 1 else len(X), dtype=np.float32)
        last = len(self.layers) - 1
        for start in range(0, len(X), BLOCK_ROWS):  # blocks of rows, not events one by one
            stop = min(start + BLOCK_ROWS, len(X))
            h = X[start:stop]
            if self.with_mask:
                h = h * mask[start:stop]
            for index, (weight, bias) in enumerate(self.layers):
                h = h @ weight
                h += bias
                if index < last:
                    np.maximum(h, 0.0, out=h)
            out[start:stop] = _head(h, task)
        return out


def _head(h: np.ndarray, task: Task) -> np.ndarray:
    if task.kind == "multiclass":
        h = h - h.max(axis=1, keepdims=True)
        np.exp(h, out=h)
        return h / h.sum(axis=1, keepdims=True)
    if task.kind == "regression":
        return h[:, 0] * np.float32(task.scale) + np.float32(task.offset)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-h[:, 0]))


def keras_dense_layers(
    path: Path, n_features: int, outputs: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (kernel, bias) pairs of the default model from a Keras weights file (h5py)."""
    h5py = extras.require("h5py")
    found: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def visit(name: str, group: Any) -> None:
        if not isinstance(group, h5py.Group):
            return
        for member in group:  # only what the file itself holds: no link to elsewhere
            if not isinstance(group.get(member, getlink=True), h5py.HardLink):
                raise ConfigError(f"{path}: {name}/{member} is a link; weights files hold none")
        arrays = [v for v in group.values() if isinstance(v, h5py.Dataset)]
        for array in arrays:  # data stored outside the file (another file, /proc …)
            if array.is_virtual or array.external:
                raise ConfigError(f"{path}: {array.name} keeps its data outside the file")
        kernels = [a for a in arrays if a.ndim == 2]
        biases = [a for a in arrays if a.ndim == 1]
        if len(kernels) == 1 and len(biases) == 1 and len(arrays) == 2:
            kernel, bias = kernels[0], biases[0]
            if kernel.shape[1] == bias.shape[0]:
                found[tuple(kernel.shape)] = (
                    np.asarray(kernel, dtype=np.float32),
                    np.asarray(bias, dtype=np.float32),
                )

    with h5py.File(path, "r") as weights:
        weights.visititems(visit)
    return _default_chain(found, n_features, outputs, path)


def torch_dense_layers(
    path: Path, n_features: int, outputs: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same from a PyTorch state dict, read with ``weights_only=True`` (no code runs)."""
    torch = extras.torch()
    state = torch.load(path, map_location="cpu", weights_only=True)
    found: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            bias = state.get(key[: -len("weight")] + "bias")
            if bias is not None:
                kernel = value.detach().cpu().numpy().astype(np.float32).T
                found[tuple(kernel.shape)] = (kernel, bias.detach().cpu().numpy())
    return _default_chain(found, n_features, outputs, path)


def _default_chain(
    found: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    n_features: int,
    outputs: int,
    path: Path,
) -> list[tuple[np.ndarray, np.ndarray]]:
    widths = (n_features, *DEFAULT_WIDTHS, outputs)
    shapes = list(itertools.pairwise(widths))
    if set(found) != set(shapes):
        raise ConfigError(
            f"{path} does not hold the default model's layers {shapes} "
            f"(found {sorted(found)}): was it trained with a user model?"
        )
    return [(np.ascontiguousarray(found[s][0]), found[s][1].astype(np.float32)) for s in shapes]


@dataclass
class Predictor:
    """One model version ready to score: its tag, Vectorizer and forward pass."""

    tag: str
    vectorizer: Vectorizer
    forward: Forward
    mode: str  # "onnx" (the graph), "numpy" (the default model's weights), "framework"
    manifest: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    task: Task = BINARY

    @classmethod
    def load(
        cls,
        directory: str | Path,
        tag: str,
        trust_user_code: bool = False,
        engine: str = "auto",
        bulk_threads: int = 1,
    ) -> Predictor:
        """Load a bundle directory; refuse user code unless ``trust_user_code``.

        ``engine``: ``auto`` (the graph when there is one and ONNX Runtime is installed,
        else the numpy pass of the default model, else the framework), or ``onnx`` /
        ``numpy`` alone, refusing a bundle that this engine cannot score.
        ``bulk_threads``: ONNX Runtime's threads for blocks of a bulk request
        (:class:`~mlaas4hep.model.onnx_graph.OnnxForward`)."""
        path = Path(directory)
        try:
            manifest = read_manifest(path)
            vectorizer = Vectorizer.from_dict(json.loads((path / "vectorizer.json").read_text()))
        except ConfigError as err:
            raise ConfigError(f"model {tag}: {err}") from err
        except FileNotFoundError as err:
            raise ConfigError(
                f"model {tag} is not a model bundle ({err.filename} missing)"
            ) from err
        except json.JSONDecodeError as err:
            raise ConfigError(f"model {tag}: malformed vectorizer.json: {err}") from err
        task = task_of(manifest)
        graph = manifest.get("onnx")
        numpy_ok = is_default_model(manifest) and vectorizer.image is None
        if engine == "onnx" and (graph is None or not _has_onnxruntime()):
            raise ConfigError(
                f"model {tag}: engine 'onnx' needs the bundle's ONNX graph and onnxruntime "
                f"({'no graph in the bundle' if graph is None else 'onnxruntime missing'})"
            )
        if engine == "numpy" and not numpy_ok:
            raise ConfigError(
                f"model {tag}: engine 'numpy' scores only the default dense model, and this "
                "bundle holds another architecture (use engine 'auto' or 'onnx')"
            )
        if graph is not None and _has_onnxruntime() and engine != "numpy":
            from mlaas4hep.model.onnx_graph import OnnxForward

            try:
                data = (path / graph["file"]).read_bytes()
            except OSError as err:
                raise ConfigError(f"model {tag}: {graph['file']} unreadable ({err})") from None
            forward: Forward = OnnxForward(
                data,
                vectorizer.n_features,
                bool(manifest.get("with_mask", False)),
                where=f"model {tag}: {graph['file']}",
                outputs=task.outputs,
                bulk_threads=bulk_threads,
            )
            mode = "onnx"
        elif numpy_ok:
            n = vectorizer.n_features
            if manifest.get("framework") == "torch":
                layers = torch_dense_layers(path / weights_of(manifest), n, task.outputs)
            else:
                layers = keras_dense_layers(path / weights_of(manifest), n, task.outputs)
            forward = DenseNetwork(layers, bool(manifest.get("with_mask", False)), task)
            mode = "numpy"
        elif not trust_user_code and not is_default_model(manifest):
            raise UnsafeBundleError(
                f"model {tag} holds user code (model.py) and no ONNX graph; loading it "
                "would run arbitrary code on the server, so safe mode refuses it. Train it "
                "again (the job exports model.onnx, which is served safely), or, only if "
                "you trust its author, set MLAAS4HEP_SERVE_TRUST_USER_CODE=1 "
                "(trust_user_code: true)"
            )
        else:  # the user's code, trusted; or the default image model (the project's code)
            from mlaas4hep.model.bundle import ModelBundle

            bundle = ModelBundle.load(path)
            forward = bundle.predict_vectorized
            mode = "framework"
        predictor = cls(tag, vectorizer, forward, mode, manifest, task=task)
        predictor.check_reference(path)
        return predictor

    def check_reference(self, directory: Path) -> None:
        """Score the job's reference rows; refuse the model if they disagree."""
        reference = directory / "reference.npz"
        if reference.exists():
            try:  # no pickles: a reference is three plain arrays
                with np.load(reference, allow_pickle=False) as data:
                    X, mask, expected = data["X"], data["mask"], data["scores"]
                got = self.forward(X, mask)
                if got.shape != expected.shape:
                    raise ValueError(f"scores {got.shape} where the job recorded {expected.shape}")
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                raise ConfigError(
                    f"model {self.tag}: reference.npz is not three arrays X, mask and scores "
                    f"that fit the model ({type(err).__name__}: {err})"
                ) from None
            worst = max_difference(got, expected)
            if not worst <= REFERENCE_TOLERANCE:
                raise ConfigError(
                    f"model {self.tag}: scores of the reference rows differ from the "
                    f"training job's by {worst:.3g} (> {REFERENCE_TOLERANCE:g})"
                )
        # the first calls compile/load the Vectorizer's kernels (for writable inputs, and
        # read-only ones as Arrow gives): pay it now, not in the first requests
        self.vectorizer.transform(_empty_event(self.vectorizer, writeable=True))
        self.vectorizer.transform(_empty_event(self.vectorizer, writeable=False))

    @property
    def branches(self) -> list[str]:
        return self.vectorizer.branches

    def _out(self, n: int) -> np.ndarray:
        outputs = self.task.outputs
        return np.empty((n, outputs) if outputs > 1 else n, dtype=np.float32)

    def score(self, events: EventColumns) -> np.ndarray:
        """The outputs (float32: ``[n]``, or ``[n, C]`` for multiclass) of the events, in
        slices of ``SCORE_ROWS`` events.

        Slicing keeps the Vectorizer's output and the hidden layers in cache and reuses
        the same buffers from slice to slice: a million events cost half as much as in
        one piece.
        """
        n = len(events)
        if n <= SCORE_ROWS:
            return self._score(events.columns)
        out = self._out(n)
        for start in range(0, n, SCORE_ROWS):
            stop = min(start + SCORE_ROWS, n)
            out[start:stop] = self._score({k: c[start:stop] for k, c in events.columns.items()})
        return out

    def score_features(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The outputs of rows of already vectorised features (and their mask)."""
        out = self._out(len(X))
        for start in range(0, len(X), SCORE_ROWS):
            stop = min(start + SCORE_ROWS, len(X))
            out[start:stop] = self.forward(X[start:stop], mask[start:stop])
        return out

    def _score(self, columns: Mapping[str, Any]) -> np.ndarray:
        out = self.vectorizer.transform(columns)
        return np.asarray(self.forward(out.X, out.mask), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "mode": self.mode,
            "framework": self.manifest.get("framework"),
            "branches": self.branches,
            "n_features": self.vectorizer.n_features,
            "task": self.task.kind,
            "outputs": self.task.output_names,
            "loaded_at": self.loaded_at,
        }


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _empty_event(vectorizer: Vectorizer, writeable: bool) -> dict[str, Any]:
    """One event with every branch present (flat zeros, empty lists)."""
    from mlaas4hep.io.columns import JaggedView

    def array(n: int, dtype: Any) -> np.ndarray:
        values = np.zeros(n, dtype=dtype)
        values.flags.writeable = writeable
        return values

    events: dict[str, Any] = {}
    for block in vectorizer.inputs:
        if block.kind == "flat":
            events[block.name] = array(1, block.dtype)
        else:
            events[block.name] = JaggedView(array(2, np.int64), array(0, block.dtype))
    return events
