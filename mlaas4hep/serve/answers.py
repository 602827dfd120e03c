"""The answers of the prediction endpoints: the model's outputs as JSON, an Arrow stream
or Parquet, shaped by the model's task (one score, one probability per class, or a
regressed value per event), streamed in pieces; and the answer type an ``Accept`` header
asks for. (The requests come in through :mod:`mlaas4hep.serve.payloads`.)
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.model.tasks import BINARY, Task
from mlaas4hep.serve.protocol import ARROW_STREAM, JSON, PARQUET

#: Scores per piece of a streamed response: a JSON piece of this many floats is ~1 MB.
STREAM_SCORES = 1 << 16


def score_header(task: Task) -> dict[str, Any]:
    """What a JSON answer holds between ``model`` and ``scores``, so that a client can
    read the scores without knowing the model: nothing for a binary task (the answer as
    it was before tasks, byte for byte), ``task`` for a regression (the scores are values
    in the target's units), ``task`` and ``classes`` for a multiclass one (each score is
    a list of probabilities in the order of ``classes``)."""
    if task.kind == "binary":
        return {}
    if task.kind == "multiclass":
        return {"task": task.kind, "classes": list(task.classes)}
    return {"task": task.kind}


def score_columns(scores: np.ndarray, task: Task) -> np.ndarray:
    """The scores as float32 ``[n, outputs]`` (a view of float32 scores): one column per
    output of the task; ValueError when their shape does not fit the task."""
    array = np.asarray(scores, dtype=np.float32)
    fits = array.shape[1:] == ((task.outputs,) if array.ndim == 2 else ())
    if not (fits and (array.ndim == 2 or task.outputs == 1)) and array.size:
        raise ValueError(
            f"scores of shape {array.shape} do not fit a {task.kind} task of "
            f"{task.outputs} output(s)"
        )
    return array.reshape(-1, task.outputs)


def encode_scores(
    scores: np.ndarray, tag: str, media_type: str, task: Task = BINARY
) -> tuple[bytes, str]:
    """The scores as an Arrow IPC stream, a Parquet file or JSON; returns (body, type)."""
    pieces, kind = stream_scores(scores, tag, media_type, task=task)
    return b"".join(pieces), kind


def stream_scores(
    scores: np.ndarray,
    tag: str,
    media_type: str,
    piece: int = STREAM_SCORES,
    task: Task = BINARY,
) -> tuple[Iterator[bytes], str]:
    """The scores (``[n]``, or ``[n, C]`` for multiclass) encoded as ``media_type``, in
    pieces of about ``piece`` scores, for a streamed response: the whole response is
    never held as Python objects (JSON) or as one buffer (Arrow); Parquet, compressed to
    a few bytes per score, is one piece.

    Arrow and Parquet hold one float32 column per output of ``task``, named by its
    :attr:`~mlaas4hep.model.tasks.Task.output_names` (``score``; the class names;
    ``value``), and the tag in the schema's ``model`` metadata (and, for a task other
    than binary, its kind in ``task``); JSON is ``{"model", ...score_header, "scores"}``.
    A binary task's answer is the one from before tasks, byte for byte."""
    columns = score_columns(scores, task)
    if media_type == PARQUET:
        pa = extras.require("pyarrow")
        table = pa.table(
            {
                name: pa.array(np.ascontiguousarray(columns[:, c]), type=pa.float32())
                for c, name in enumerate(task.output_names)
            }
        )
        sink = io.BytesIO()
        extras.require("pyarrow.parquet").write_table(
            table.replace_schema_metadata(_arrow_metadata(tag, task)), sink, compression="zstd"
        )
        return iter([sink.getvalue()]), media_type
    if media_type == ARROW_STREAM:
        return _arrow_pieces(columns, tag, piece, task), media_type
    return _json_pieces(columns, tag, piece, task), JSON


def _arrow_metadata(tag: str, task: Task) -> dict[str, str]:
    return {"model": tag} if task.kind == "binary" else {"model": tag, "task": task.kind}


def _arrow_pieces(columns: np.ndarray, tag: str, piece: int, task: Task) -> Iterator[bytes]:
    """Record batches of about ``16 × piece`` scores (rows × outputs), one float32 column
    per output; then the end-of-stream marker."""
    pa = extras.require("pyarrow")
    names = task.output_names
    fields = [(name, pa.float32()) for name in names]
    schema = pa.schema(fields, metadata=_arrow_metadata(tag, task))
    rows = max(1, piece * 16 // len(names))
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, max(len(columns), 1), rows):
            part = columns[start : start + rows]
            arrays = [
                pa.array(np.ascontiguousarray(part[:, c]), type=pa.float32())
                for c in range(len(names))
            ]
            writer.write_batch(pa.record_batch(arrays, schema=schema))
            yield sink.getvalue()
            sink.seek(0)
            sink.truncate()
    yield sink.getvalue()  # the end-of-stream marker


def _json_pieces(columns: np.ndarray, tag: str, piece: int, task: Task) -> Iterator[bytes]:
    """``{"model": tag, ...score_header(task), "scores": [...]}`` in pieces of about
    ``piece`` scores: a number per event for one output, a list per event (one
    probability per class) for multiclass."""
    import json

    head = "".join(
        f",{json.dumps(key)}:{json.dumps(value, separators=(',', ':'))}"
        for key, value in score_header(task).items()
    )
    yield ('{"model":' + json.dumps(tag) + head + ',"scores":[').encode()
    values = columns[:, 0] if task.outputs == 1 else columns
    rows = max(1, piece // task.outputs)
    for start in range(0, len(values), rows):
        text = json.dumps(values[start : start + rows].tolist(), separators=(",", ":"))[1:-1]
        yield (text if start == 0 else "," + text).encode()
    yield b"]}"


def negotiate(accept: str, default: str) -> str:
    """The response type for an ``Accept`` header: Arrow stream, Parquet or JSON."""
    for item in (accept or "").split(","):
        kind = item.split(";")[0].strip().lower()
        if kind in (ARROW_STREAM, PARQUET, JSON):
            return kind
        if kind in ("application/x-parquet", "application/parquet"):
            return PARQUET
    return default
