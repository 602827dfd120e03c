"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST protocol) for the served model.

Routes (in :mod:`mlaas4hep.serve.http_api`): ``GET /v2`` (server metadata),
``GET /v2/health/live`` and ``/v2/health/ready``, ``GET /v2/models/{name}[/versions/{v}]``
(model metadata), ``GET /v2/models/{name}[/versions/{v}]/ready`` and
``POST /v2/models/{name}[/versions/{v}]/infer``. ``name`` is the served model's name
(``tth`` for ``tth:3fa9…``) and ``v`` its version; another name or version is a 404, since
a replica serves the one version its alias points to.

An inference request holds its inputs in one of two forms:

features
    the Vectorizer's output: ``features`` (FP32, ``[n, F]``) and, optionally, ``mask``
    (BOOL, ``[n, F]``; all true when absent). What a client that vectorises itself sends.
raw branches
    the events as they are in the ROOT file, one named tensor per branch: a flat branch
    as ``[n]``; a jagged branch as its flat content (``Jet_pt``, ``[sum(nJet)]``) plus the
    number of items per event in the tensor its collection's counter is named by
    (:func:`counts_name`: ``nJet`` for ``Jet_*``, as in NanoAOD). A counter that is also a
    flat branch of the model is sent once. The model metadata lists every tensor by name,
    datatype and shape, and each jagged branch names its counts tensor.

Tensors come as JSON (``data``, flat or nested, row-major) or, with the binary tensor
extension, as raw little-endian bytes after the JSON header (``parameters.binary_data_size``
per input, the header's length in ``Inference-Header-Content-Length``). The answer holds one
output, ``scores`` (FP32): ``[n]`` for a binary model (the probabilities) or a regression
(the values, in the target's units), ``[n, C]`` for a multiclass one (row-major: the C
probabilities of each event in the order of the classes, which the model metadata lists
in the output's ``parameters.classes``). It comes as JSON or as binary when the request
asks for it (``binary_data`` on the output, or ``binary_data_output`` on the request:
tritonclient's default). Every refusal is a 4xx ``{"error", "field", "problem"}`` naming
the input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlaas4hep.model.tasks import BINARY, Task
from mlaas4hep.serve.payloads import (
    EventColumns,
    RequestError,
    check_event_count,
    decimal_length,
    typed_column,
)
from mlaas4hep.transform.vectorizer import Vectorizer

FEATURES, MASK, SCORES = "features", "mask", "scores"
HEADER_LENGTH = "inference-header-content-length"
#: KServe v2 datatypes of numeric tensors (BYTES, strings, is not an event's value).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAMES = {dtype.newbyteorder("="): name for name, dtype in DATATYPES.items()}


def datatype_of(dtype: Any) -> str:
    """The v2 datatype name of a numpy dtype (``float32`` → ``FP32``)."""
    return _NAMES[np.dtype(dtype).newbyteorder("=")]


def counts_name(branch: str) -> str:
    """The tensor holding the items per event of jagged ``branch``: ``n`` + its collection
    (``Jet_pt`` → ``nJet``, the NanoAOD convention; ``pt`` → ``npt``)."""
    return "n" + branch.split("_", 1)[0]


@dataclass
class InferRequest:
    """A parsed inference request: its tensors by name and how to answer."""

    id: str | None
    tensors: dict[str, np.ndarray]
    binary_output: bool


def model_metadata(tag: str, vectorizer: Vectorizer, task: Task = BINARY) -> dict[str, Any]:
    """The v2 model metadata of the served version: raw-branch inputs, the features form,
    and the ``scores`` output (:func:`scores_metadata`)."""
    name, _, version = tag.partition(":")
    inputs: list[dict[str, Any]] = []
    flat = {b.name for b in vectorizer.inputs if b.kind == "flat"}
    listed: set[str] = set()
    for block in vectorizer.inputs:
        entry: dict[str, Any] = {"name": block.name, "datatype": datatype_of(block.dtype)}
        if block.kind == "flat":
            entry["shape"] = [-1]
        else:
            counts = counts_name(block.name)
            entry.update(shape=[-1], parameters={"counts": counts, "content_of": "jagged"})
            if counts not in flat and counts not in listed:
                inputs.append({"name": counts, "datatype": "INT64", "shape": [-1]})
                listed.add(counts)
        inputs.append(entry)
    n = vectorizer.n_features
    return {
        "name": name,
        "versions": [version],
        "platform": "mlaas4hep",
        "inputs": inputs,
        "outputs": [scores_metadata(task)],
        "parameters": {
            "tag": tag,
            "features_form": [
                {"name": FEATURES, "datatype": "FP32", "shape": [-1, n]},
                {"name": MASK, "datatype": "BOOL", "shape": [-1, n], "optional": True},
            ],
            "feature_names": vectorizer.feature_names,
        },
    }


def scores_metadata(task: Task = BINARY) -> dict[str, Any]:
    """The metadata of the ``scores`` output: shape ``[-1]`` for one output per event,
    ``[-1, C]`` for a multiclass model, whose class names (in the order of the columns)
    are its ``parameters.classes``; a task other than binary is named in
    ``parameters.task``. (A v2 tensor may carry ``parameters``, as the inputs here do;
    a client that does not know them reads name, datatype and shape.)"""
    entry: dict[str, Any] = {"name": SCORES, "datatype": "FP32"}
    if task.kind == "multiclass":
        entry["shape"] = [-1, task.outputs]
        entry["parameters"] = {"task": task.kind, "classes": list(task.classes)}
    elif task.kind == "regression":
        entry.update(shape=[-1], parameters={"task": task.kind})
    else:
        entry["shape"] = [-1]
    return entry


def check_served(tag: str | None, name: str, version: str | None) -> None:
    """A 404 unless ``name`` (and ``version``, when given) is the version served."""
    served, _, served_version = (tag or "").partition(":")
    if name != served:
        raise RequestError(
            f"model {name!r} is not served here (this replica serves {served or 'nothing'!r})",
            field="model_name",
            status=404,
        )
    if version is not None and version != served_version:
        raise RequestError(
            f"version {version!r} of {name!r} is not served here (this replica serves "
            f"{served_version!r}, its alias's version)",
            field="model_version",
            status=404,
        )


# ---------------------------------------------------------------------------- requests


def parse_request(
    body: bytes | bytearray, header_length: str | None, max_elements: int
) -> InferRequest:
    """The tensors of a v2 inference body (JSON, or JSON header + binary tensors)."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[:0]
    else:
        split_at = decimal_length(header_length)
        if split_at is None or split_at > len(view):
            raise RequestError(
                f"Inference-Header-Content-Length {header_length[:40]!r} is not a length "
                f"within the body's {len(view)} bytes",
                field="Inference-Header-Content-Length",
            )
        header, binary = view[:split_at], view[split_at:]
    try:
        document = json.loads(bytes(header))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"the request header is not valid JSON: {err}", field="body") from None
    if not isinstance(document, dict):
        raise RequestError("the request must be a JSON object", field="body")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("expected a non-empty list of input tensors", field="inputs")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(inputs):
        where = f"inputs[{index}]"
        name, dtype, shape, count = _tensor_header(spec, where, max_elements)
        if name in tensors:
            raise RequestError(f"input {name!r} is given twice", field=f"{where}.name")
        where = f"inputs.{name}"
        parameters = spec.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise RequestError("parameters must be a JSON object", field=where)
        if "binary_data_size" in parameters:
            length = parameters["binary_data_size"]
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise RequestError("binary_data_size must be a byte count", field=where)
            if length != count * dtype.itemsize:
                raise RequestError(
                    f"binary_data_size is {length} bytes, but shape {shape} of "
                    f"{spec['datatype']} takes {count * dtype.itemsize}",
                    field=where,
                )
            if offset + length > len(binary):
                raise RequestError(
                    f"the binary data ends before this tensor's {length} bytes", field=where
                )
            array = _binary_tensor(binary[offset : offset + length], dtype, where)
            offset += length
        elif "data" in spec:
            array = _json_tensor(spec["data"], dtype, count, where)
        else:
            raise RequestError("an input needs 'data' or parameters.binary_data_size", field=where)
        tensors[name] = array.reshape(shape)
    if offset != len(binary):
        raise RequestError(
            f"the body holds {len(binary)} bytes of binary data, but the inputs take {offset}",
            field="body",
        )
    request_id = document.get("id")
    return InferRequest(
        id=request_id if isinstance(request_id, str) else None,
        tensors=tensors,
        binary_output=_wants_binary(document),
    )


def _tensor_header(
    spec: Any, where: str, max_elements: int
) -> tuple[str, np.dtype, list[int], int]:
    if not isinstance(spec, dict):
        raise RequestError("an input tensor must be a JSON object", field=where)
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not name:
        raise RequestError("an input tensor needs a name", field=f"{where}.name")
    if datatype not in DATATYPES:
        raise RequestError(
            f"datatype {str(datatype)[:40]!r} is not a numeric tensor type "
            f"({', '.join(DATATYPES)})",
            field=f"inputs.{name}.datatype",
        )
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise RequestError(
            "shape must be a list of one or two non-negative sizes", field=f"inputs.{name}.shape"
        )
    count = math.prod(shape)
    if count > max_elements:
        raise RequestError(
            f"{count} values exceed the limit of {max_elements} per tensor "
            "(limits.bulk_events × limits.list_items)",
            field=f"inputs.{name}",
            status=413,
        )
    return name, DATATYPES[datatype], shape, count


def _binary_tensor(data: memoryview, dtype: np.dtype, where: str) -> np.ndarray:
    if dtype.kind == "b":
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise RequestError("a BOOL tensor holds bytes other than 0 and 1", field=where)
        return raw.view(np.bool_)
    return np.frombuffer(data, dtype=dtype)


def _json_tensor(data: Any, dtype: np.dtype, count: int, where: str) -> np.ndarray:
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        array = None
    wanted = "b" if dtype.kind == "b" else "biuf"
    if array is None or array.dtype.kind not in wanted:
        kind = "booleans" if dtype.kind == "b" else "numbers"
        raise RequestError(f"data must be a (nested) list of {kind}", field=where)
    if array.size != count:
        raise RequestError(
            f"data holds {array.size} values but the shape takes {count}", field=where
        )
    if dtype.kind in "iu" and array.dtype.kind == "f":
        whole = np.isfinite(array) & (array == np.round(array))
        if not whole.all():
            bad = int(np.flatnonzero(~whole.reshape(-1))[0])
            raise RequestError(
                f"value {bad} ({array.reshape(-1)[bad]!r}) is not a whole number", field=where
            )
    with np.errstate(over="ignore", invalid="ignore"):
        return array.reshape(-1).astype(dtype)


def _wants_binary(document: dict[str, Any]) -> bool:
    parameters = document.get("parameters") or {}
    wanted = bool(isinstance(parameters, dict) and parameters.get("binary_data_output"))
    outputs = document.get("outputs")
    if outputs is None:
        return wanted
    if not isinstance(outputs, list):
        raise RequestError("outputs must be a list of requested outputs", field="outputs")
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or output.get("name") != SCORES:
            raise RequestError(
                f"the model has one output, {SCORES!r}", field=f"outputs[{index}].name"
            )
        options = output.get("parameters") or {}
        if isinstance(options, dict) and "binary_data" in options:
            wanted = bool(options["binary_data"])
    return wanted


# ------------------------------------------------------------------ tensors → events


def features_of(
    tensors: dict[str, np.ndarray], n_features: int, max_events: int
) -> tuple[np.ndarray, np.ndarray]:
    """(X, mask) of a features-form request, checked against the model's width."""
    unknown = sorted(set(tensors) - {FEATURES, MASK})
    if unknown:
        raise RequestError(
            f"with {FEATURES!r}, only {MASK!r} may be sent too, not {', '.join(unknown)}",
            field=f"inputs.{unknown[0]}",
        )
    X = tensors[FEATURES]
    if X.ndim != 2 or X.shape[1] != n_features:
        raise RequestError(
            f"expected shape [n, {n_features}], got {list(X.shape)}", field=f"inputs.{FEATURES}"
        )
    _check_events(len(X), max_events, f"inputs.{FEATURES}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise RequestError(
            f"event {row}, feature {column} is not finite ({X[row, column]!r})",
            field=f"inputs.{FEATURES}",
        )
    mask = tensors.get(MASK)
    if mask is None:
        return X, np.ones(X.shape, dtype=bool)
    if mask.shape != X.shape:
        raise RequestError(
            f"expected the shape of {FEATURES}, {list(X.shape)}, got {list(mask.shape)}",
            field=f"inputs.{MASK}",
        )
    return X, np.ascontiguousarray(mask, dtype=bool)


def events_of(
    tensors: dict[str, np.ndarray], vectorizer: Vectorizer, max_events: int
) -> EventColumns:
    """The events of a raw-branch request: flat branches as they are, jagged ones from
    their content and their collection's counts."""
    needed = {b.name for b in vectorizer.inputs}
    needed |= {counts_name(b.name) for b in vectorizer.inputs if b.kind != "flat"}
    unknown = sorted(set(tensors) - needed)
    if unknown:
        raise RequestError(
            f"the model takes no input {unknown[0]!r} (GET /v2/models/<name> lists its inputs)",
            field=f"inputs.{unknown[0]}",
        )
    n: int | None = None
    first = ""
    columns: dict[str, Any] = {}
    offsets_of: dict[str, np.ndarray] = {}  # a collection's branches share its counts
    for block in vectorizer.inputs:
        per_event = block.name if block.kind == "flat" else counts_name(block.name)
        tensor = _one_dimensional(tensors, per_event, block.name)
        if n is None:
            n, first = len(tensor), per_event
            _check_events(n, max_events, f"inputs.{per_event}")
        elif len(tensor) != n:
            raise RequestError(
                f"has {len(tensor)} events but inputs.{first} has {n}: every per-event "
                "tensor holds one value per event",
                field=f"inputs.{per_event}",
            )
        if block.kind == "flat":
            columns[block.name] = typed_column(block, tensor, None, f"inputs.{block.name}")
            continue
        offsets = offsets_of.get(per_event)
        if offsets is None:
            if tensor.dtype.kind not in "iu" or (tensor.dtype.kind == "i" and (tensor < 0).any()):
                raise RequestError(
                    f"counts of {block.name} must be non-negative integers",
                    field=f"inputs.{per_event}",
                )
            offsets = offsets_of[per_event] = np.zeros(len(tensor) + 1, dtype=np.int64)
            np.cumsum(tensor, out=offsets[1:])
        content = _one_dimensional(tensors, block.name, block.name)
        if offsets[-1] != len(content):
            raise RequestError(
                f"holds {len(content)} values but inputs.{per_event} counts {int(offsets[-1])}",
                field=f"inputs.{block.name}",
            )
        # offsets summed from non-negative counts that end at the content's length are
        # valid by construction: no second check
        columns[block.name] = typed_column(
            block, content, offsets, f"inputs.{block.name}", checked=True
        )
    return EventColumns(columns, n or 0)


def _one_dimensional(tensors: dict[str, np.ndarray], name: str, branch: str) -> np.ndarray:
    if name not in tensors:
        what = "branch" if name == branch else f"counts of {branch}"
        raise RequestError(f"missing input {name!r} ({what})", field=f"inputs.{name}")
    tensor = tensors[name]
    if tensor.ndim == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim != 1:
        raise RequestError(f"expected shape [n], got {list(tensor.shape)}", field=f"inputs.{name}")
    return tensor


def _check_events(n: int, max_events: int, field: str) -> None:
    check_event_count(n, max_events, field, "per request", "limits.bulk_events")


# ---------------------------------------------------------------------------- answers


def encode_response(
    scores: np.ndarray, tag: str, request: InferRequest
) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, media type) of the answer: ``scores`` (``[n]`` or ``[n, C]``, its
    values row-major) as JSON or binary."""
    name, _, version = tag.partition(":")
    scores = np.ascontiguousarray(scores, dtype="<f4")
    output: dict[str, Any] = {"name": SCORES, "datatype": "FP32", "shape": list(scores.shape)}
    document: dict[str, Any] = {"model_name": name, "model_version": version}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = [output]
    headers = {"X-Model-Tag": tag}
    if not request.binary_output:
        output["data"] = scores.reshape(-1).tolist()  # flat, row-major
        return json.dumps(document).encode(), headers, "application/json"
    output["parameters"] = {"binary_data_size": scores.nbytes}
    header = json.dumps(document).encode()
    headers["Inference-Header-Content-Length"] = str(len(header))
    return header + scores.tobytes(), headers, "application/octet-stream"
