"""ONNX graphs of trained models: export (Keras, PyTorch), checks, and a scoring session.

Every model the training job trains is exported to ``model.onnx`` with one fixed
signature: input ``features`` (float32 ``[n, F]``) and, for a model that takes the
padding mask, ``mask`` (bool ``[n, F]``); one output, the probability of each event
(``[n]`` or ``[n, 1]``). Keras models go through tf2onnx, PyTorch ones through
``torch.onnx`` (its TorchScript exporter). The graph is then scored with ONNX Runtime on
held-out rows and compared with the framework's own outputs (:func:`export_model`): an
export that fails, or differs by more than :data:`TOLERANCE`, fails the job with one line.

Serving scores the graph with :class:`OnnxForward`, so any architecture is served
without running its author's code. What it loads is checked first
(:func:`check_graph`): standard operator domains only (no custom-op libraries), no tensor
stored outside the file (an external-data path could name any file of the server), and
the inputs of the signature above, with the bundle's feature count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.model.frameworks import predict_arrays
from mlaas4hep.model.tasks import max_difference, shaped
from mlaas4hep.stream.batches import FEATURES, MASK, model_inputs

ONNX_FILE = "model.onnx"
OPSET = 17
#: Largest difference allowed between the framework's and ONNX Runtime's outputs
#: (relative for values beyond 1: :func:`~mlaas4hep.model.tasks.max_difference`).
TOLERANCE = 1e-5
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


class ExportError(ConfigError):
    """A trained model that cannot be exported to ONNX, or whose export disagrees."""


def export_model(
    model: Any,
    framework: str,
    with_mask: bool,
    directory: Path,
    X: np.ndarray,
    mask: np.ndarray,
    outputs: int = 1,
) -> dict[str, Any]:
    """Write ``directory/model.onnx``, check it on the held-out rows ``X``/``mask``
    against the framework's outputs (``outputs`` values per event: 1, or the classes),
    and return what the manifest records of it."""
    path = Path(directory) / ONNX_FILE
    n_features = X.shape[1]
    try:
        if framework == "torch":
            converter = _export_torch(model, with_mask, n_features, path, outputs)
        else:
            converter = _export_keras(model, with_mask, n_features, path)
    except ExportError:
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ExportError(
            f"the {framework} model could not be exported to ONNX: {type(err).__name__}: {first}"
        ) from None
    expected = predict_arrays(model, framework, X, mask, with_mask)  # (torch: in eval mode)
    if len(X) and expected.size != len(X) * outputs:
        raise ExportError(
            f"the {framework} model gives {expected.size / len(X):g} values per event; "
            f"its task expects {outputs}"
        )
    try:
        forward = OnnxForward(
            path.read_bytes(), n_features, with_mask, where=ONNX_FILE, outputs=outputs
        )
    except ConfigError as err:  # e.g. a model traced into constants: no inputs left
        raise ExportError(
            f"the ONNX export of the {framework} model is not usable: {err}"
        ) from None
    got = forward(X, mask).reshape(-1)
    worst = max_difference(got, expected)
    if not worst <= TOLERANCE:
        raise ExportError(
            f"the ONNX export of the {framework} model disagrees with it by {worst:.3g} on "
            f"{len(X)} held-out events (more than {TOLERANCE:g})"
        )
    ort = extras.require("onnxruntime")
    onnx = extras.require("onnx")
    return {
        "file": ONNX_FILE,
        "opset": OPSET,
        "inputs": [FEATURES, MASK] if with_mask else [FEATURES],
        "outputs": outputs,
        "converter": converter,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "checked_rows": len(X),
        "max_abs_diff": float(np.max(np.abs(got - expected))) if len(X) else 0.0,
        "max_rel_diff": worst,  # what is checked: relative beyond 1 (a value in GeV)
    }


def _export_torch(model: Any, with_mask: bool, n_features: int, path: Path, outputs: int) -> str:
    import warnings

    torch = extras.torch()

    class Signature(torch.nn.Module):
        """(features[, mask]) → scores ``[n]`` (or ``[n, C]``), whatever the model takes."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, features: Any, mask: Any = None) -> Any:
            out = self.model(model_inputs(features, mask, with_mask))
            return out.reshape(-1) if outputs == 1 else out.reshape(-1, outputs)

    example: tuple[Any, ...] = (torch.zeros(2, n_features),)
    names = [FEATURES]
    if with_mask:
        example += (torch.ones(2, n_features, dtype=torch.bool),)
        names.append(MASK)
    axes = {name: {0: "n"} for name in [*names, "scores"]}
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes
        torch.onnx.export(
            Signature().eval(), example, str(path), input_names=names, output_names=["scores"],
            dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    return f"torch.onnx {torch.__version__}"


def _export_keras(model: Any, with_mask: bool, n_features: int, path: Path) -> str:
    tf = extras.tensorflow()
    tf2onnx = extras.require("tf2onnx")
    signature = [tf.TensorSpec((None, n_features), tf.float32, name=FEATURES)]
    if with_mask:
        signature.append(tf.TensorSpec((None, n_features), tf.bool, name=MASK))
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET, output_path=str(path))
    return f"tf2onnx {tf2onnx.__version__}"


# ---------------------------------------------------------------------------- serving


def check_graph(
    data: bytes, n_features: int, with_mask: bool, where: str, outputs: int = 1
) -> None:
    """Refuse a graph serving must not load: custom-op domains, tensors stored outside
    the file, inputs other than the bundle's signature, or an output whose width is
    known and is not the task's (``outputs`` per event)."""
    onnx = extras.require("onnx")
    try:
        graph_model = onnx.load_from_string(data)
    except Exception as err:
        raise ConfigError(f"{where} is not an ONNX model ({type(err).__name__})") from None
    domains = {o.domain for o in graph_model.opset_import} | {
        n.domain for n in graph_model.graph.node
    }
    foreign = sorted(domains - STANDARD_DOMAINS)
    if foreign or graph_model.functions:
        raise ConfigError(
            f"{where} uses operators outside the standard ONNX domains "
            f"({', '.join(foreign) or 'model-local functions'}): refused"
        )
    for tensor in _tensors(graph_model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise ConfigError(f"{where} stores tensor {tensor.name!r} outside the file: refused")
    expected = {FEATURES: onnx.TensorProto.FLOAT}
    if with_mask:
        expected[MASK] = onnx.TensorProto.BOOL
    initializers = {t.name for t in graph_model.graph.initializer}
    inputs = {i.name: i for i in graph_model.graph.input if i.name not in initializers}
    if set(inputs) != set(expected):
        raise ConfigError(
            f"{where} takes inputs {sorted(inputs)}, not {sorted(expected)} as the bundle says"
        )
    for name, kind in expected.items():
        tensor_type = inputs[name].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if tensor_type.elem_type != kind or len(dims) != 2 or dims[1] != n_features:
            raise ConfigError(
                f"{where}: input {name!r} is not [n, {n_features}] of the expected type"
            )
    if len(graph_model.graph.output) != 1:
        raise ConfigError(f"{where} has {len(graph_model.graph.output)} outputs, not one")
    shape = graph_model.graph.output[0].type.tensor_type.shape.dim
    dims = [d.dim_value if d.HasField("dim_value") else None for d in shape]
    width = dims[1] if len(dims) == 2 else 1 if len(dims) == 1 else -1
    if width is not None and width != outputs:
        want = "[n]" if outputs == 1 else f"[n, {outputs}]"
        raise ConfigError(f"{where}: the output is {dims}, not {want} as the bundle's task says")


def _tensors(graph: Any) -> list[Any]:
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    found = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                found.append(attribute.t)
            found.extend(attribute.tensors)
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for sub in [*subgraphs, *attribute.graphs]:
                found.extend(_tensors(sub))
    return found


class OnnxForward:
    """The forward pass of a checked ONNX graph in ONNX Runtime: ``(X, mask) → scores``.

    One intra-op thread by default (a serving worker is one core, as for BLAS); the CUDA
    execution provider when ``onnxruntime-gpu`` sees a GPU, else the CPU. With
    ``bulk_threads`` > 1, blocks of :data:`BULK_ROWS` rows or more (a bulk request) run
    in a second session of that many threads, which do not spin while idle: one bulk
    request then uses the cores that one-event requests leave to the other workers.
    """

    def __init__(
        self,
        data: bytes,
        n_features: int,
        with_mask: bool,
        where: str,
        threads: int = 1,
        outputs: int = 1,
        bulk_threads: int = 1,
    ) -> None:
        check_graph(data, n_features, with_mask, where, outputs)
        self.outputs = outputs
        self.session = _session(data, threads)
        self.bulk = _session(data, bulk_threads, spin=False) if bulk_threads > 1 else None
        self.with_mask = with_mask
        self.providers = self.session.get_providers()

    def __call__(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return shaped(np.zeros(0, dtype=np.float32), self.outputs)
        feeds = {FEATURES: np.ascontiguousarray(X, dtype=np.float32)}
        if self.with_mask:
            feeds[MASK] = np.ascontiguousarray(mask, dtype=bool)
        session = self.bulk if self.bulk is not None and len(X) >= BULK_ROWS else self.session
        return shaped(session.run(None, feeds)[0], self.outputs)


#: Rows from which :class:`OnnxForward` scores in its bulk session.
BULK_ROWS = 16384


def _session(data: bytes, threads: int, spin: bool = True) -> Any:
    ort = extras.require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider",) if p in available]
    return ort.InferenceSession(
        data, sess_options=options, providers=[*providers, "CPUExecutionProvider"]
    )
