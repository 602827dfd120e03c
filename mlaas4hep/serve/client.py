"""A small Python client of the mlaas4hep service (the TFaaS client commands, and more).

    from mlaas4hep.serve.client import Client

    client = Client("http://127.0.0.1:3000", token=os.environ.get("MLAAS4HEP_SERVE_TOKEN"))
    client.list(metric=["test_auc>=0.8"])          # versions with their metadata
    tag = client.upload("tth.bentomodel")           # or a .tar.gz of a bundle, name="tth"
    client.promote(tag, "production")               # the service switches, no restart
    client.predict([{"nJet": 2, "Jet_pt": [51.2, 33.0], ...}]).scores
    client.predict(events)                          # an awkward array: sent as Arrow
    client.predict_file("ttH.root")                 # or "s3://…", "root://…", "https://…"

Only the standard library is needed for JSON; awkward/pyarrow/numpy bodies use pyarrow.
Every refusal of the server raises :class:`ServiceError` with its status, the field and
the problem it named; loopback servers are reached without any configured proxy.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import MlaasError
from mlaas4hep.io.location import LOOPBACK_HOSTS, scheme
from mlaas4hep.serve.protocol import (
    ARROW_STREAM,
    DEFAULT_ALIAS,
    FILE_URL_SCHEMES,
    JSON,
    OCTET_STREAM,
)


class ServiceError(MlaasError):
    """The service refused a request (``status``), naming the ``field`` and the problem."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status = status
        self.field = field
        super().__init__(f"HTTP {status}: {message}")


@dataclass
class Prediction:
    """Scores of a request and the model version that computed them: ``[n]`` for a
    binary model (probabilities) or a regression (values), ``[n, C]`` for a multiclass
    one, whose columns ``outputs`` names (``["score"]``, ``["value"]`` or the classes)."""

    model: str
    scores: np.ndarray
    task: str = "binary"
    outputs: list[str] = field(default_factory=lambda: ["score"])

    def __len__(self) -> int:
        return len(self.scores)


class Client:
    """Talks to one service: ``Client(url, token=None, timeout=300)``."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        host = urllib.parse.urlsplit(self.url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK_HOSTS else []
        self._opener = urllib.request.build_opener(*handlers)

    # --- registry -------------------------------------------------------------------
    def list(
        self,
        name: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        dataset: str | None = None,
        metric: Sequence[str] = (),
        created_after: str | None = None,
        created_before: str | None = None,
        alias: str | None = None,
    ) -> list[dict[str, Any]]:
        """Model versions with their metadata, newest first (the filters of GET /models)."""
        query: list[tuple[str, str]] = [
            (key, value)
            for key, value in (
                ("name", name),
                ("dataset", dataset),
                ("created_after", created_after),
                ("created_before", created_before),
                ("alias", alias),
            )
            if value
        ]
        query += [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        query += [("metric", m) for m in metric]
        return self._json("GET", "/models", query=query)["models"]

    def card(self, ref: str) -> dict[str, Any]:
        """The model card of a version (tag, ``name:alias`` or ``name``)."""
        return self._json("GET", f"/models/{_quote(ref)}")

    def aliases(self) -> dict[str, dict[str, str]]:
        return self._json("GET", "/aliases")["aliases"]

    def status(self) -> dict[str, Any]:
        """What the answering worker serves, its reference and configuration."""
        return self._json("GET", "/status")

    def upload(self, archive: str | os.PathLike[str] | bytes, name: str | None = None) -> str:
        """Upload a ``.bentomodel`` or a tar(.gz) of a bundle directory; returns its tag."""
        data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
        query = [("name", name)] if name else []
        answer = self._json("POST", "/models", data, OCTET_STREAM, query=query)
        return answer["tag"]

    def delete(self, ref: str) -> str:
        return self._json("DELETE", f"/models/{_quote(ref)}")["deleted"]

    def promote(self, ref: str, alias: str = DEFAULT_ALIAS) -> str:
        """Point ``alias`` at a version; returns its full tag."""
        path = f"/models/{_quote(ref)}/promote"
        return self._json("POST", path, query=[("alias", alias)])["tag"]

    def remove_alias(self, name: str, alias: str) -> str:
        """Drop ``name:alias``; returns the tag it pointed to."""
        return self._json("DELETE", f"/aliases/{_quote(name)}/{_quote(alias)}")["was"]

    # --- predictions ----------------------------------------------------------------
    def predict(self, events: Any) -> Prediction:
        """Scores of raw events.

        A list of records or a mapping of branch → list goes as JSON to ``/predict``;
        an awkward array, or a mapping of branch → numpy/awkward arrays, as an Arrow
        IPC stream to ``/predict_arrow``.
        """
        if isinstance(events, list):
            return self._json_prediction({"events": events})
        if isinstance(events, Mapping) and all(isinstance(v, list) for v in events.values()):
            return self._json_prediction({"columns": dict(events)})
        body = to_arrow_stream(events)
        data, headers = self._request(
            "POST", "/predict_arrow", body, ARROW_STREAM, accept=ARROW_STREAM
        )
        return _arrow_prediction(data, headers)

    def predict_file(self, source: str | os.PathLike[str], tree: str | None = None) -> Prediction:
        """Scores of every event of a ROOT file: a local file (uploaded) or an s3://,
        root:// or https:// URL (read by the service)."""
        query = [("tree", tree)] if tree else []
        if isinstance(source, str) and scheme(source) in FILE_URL_SCHEMES:
            body, kind = json.dumps({"url": source}).encode(), JSON
        else:
            body, kind = Path(source).read_bytes(), OCTET_STREAM
        data, headers = self._request(
            "POST", "/predict_file", body, kind, query=query, accept=ARROW_STREAM
        )
        return _arrow_prediction(data, headers)

    def _json_prediction(self, body: dict[str, Any]) -> Prediction:
        answer = self._json("POST", "/predict", json.dumps(body).encode(), JSON)
        task = str(answer.get("task", "binary"))
        outputs = answer.get("classes") or ["value" if task == "regression" else "score"]
        scores = np.asarray(answer["scores"], dtype=np.float32)
        if task == "multiclass":
            scores = scores.reshape(-1, len(outputs))  # [0, C] when no events
        return Prediction(answer["model"], scores, task, list(outputs))

    # --- transport ------------------------------------------------------------------
    def _json(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
    ) -> Any:
        data, _ = self._request(method, path, body, content_type, query=query)
        return json.loads(data)

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        accept: str = JSON,
    ) -> tuple[bytes, Mapping[str, str]]:
        url = self.url + path + (f"?{urllib.parse.urlencode(list(query))}" if query else "")
        request = urllib.request.Request(url, data=body, method=method)
        request.add_header("Accept", accept)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:  # needed by mutating endpoints, and by all if the server says so
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as err:
            raise _service_error(err) from None
        except urllib.error.URLError as err:
            raise ServiceError(0, f"cannot reach {self.url}: {err.reason}") from None


def every_worker_serves(client: Client, tag: str) -> Callable[[], bool]:
    """A check to poll: True once as many workers as the service runs
    (``config.workers``) have each said, in their latest ``GET /status``, that they
    serve ``tag``; an unanswered poll is False.

    Each worker follows the registry on its own and one answer comes from one worker
    (``worker`` names it), so a request right after one switched may meet another that
    has not. The client opens a new connection per request: a kept-alive connection
    would reach the same worker every time.
    """
    latest: dict[int, str | None] = {}

    def check() -> bool:
        try:
            status = client.status()
        except ServiceError:
            return False
        model, worker = status.get("model"), status.get("worker")
        if isinstance(worker, int):
            latest[worker] = model.get("tag") if isinstance(model, dict) else None
        workers = int((status.get("config") or {}).get("workers") or 1)
        return sum(served == tag for served in latest.values()) >= workers

    return check


def to_arrow_stream(events: Any) -> bytes:
    """An Arrow IPC stream of events: an awkward record array or a mapping of arrays."""
    pa = extras.require("pyarrow")
    import awkward as ak

    if isinstance(events, ak.Array):
        columns = {name: events[name] for name in events.fields}
    elif isinstance(events, Mapping):
        columns = dict(events)
    else:
        raise TypeError(
            "events must be a list of records, a mapping of branch → values, or an awkward "
            f"record array, not {type(events).__name__}"
        )
    arrays = {}
    for name, values in columns.items():
        if isinstance(values, np.ndarray) and values.ndim == 1:
            arrays[name] = pa.array(values)
        else:
            arrays[name] = ak.to_arrow(ak.Array(values), extensionarray=False, list_to32=True)
    table = pa.table(arrays)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _arrow_prediction(data: bytes, headers: Mapping[str, str]) -> Prediction:
    pa = extras.require("pyarrow")
    table = pa.ipc.open_stream(data).read_all()
    metadata = table.schema.metadata or {}
    model = metadata.get(b"model", b"").decode() or headers.get("X-Model-Tag", "")
    task = metadata.get(b"task", b"binary").decode()
    names = table.column_names  # one float32 column per output, in their order
    columns = [table.column(name).to_numpy() for name in names]
    scores = columns[0] if task != "multiclass" else np.column_stack(columns)
    return Prediction(model, scores, task, names)


def _service_error(err: urllib.error.HTTPError) -> ServiceError:
    text = err.read().decode(errors="replace")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return ServiceError(err.code, text.strip()[:500] or str(err.reason))
    if isinstance(payload, list) and payload:  # BentoML wraps some errors in a list
        payload = payload[0]
    if not isinstance(payload, dict):
        return ServiceError(err.code, text[:500])
    return ServiceError(err.code, str(payload.get("error", text[:500])), payload.get("field"))


def _quote(ref: str) -> str:
    return urllib.parse.quote(ref, safe=":")
