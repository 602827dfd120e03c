"""The serving state of one worker process: the model it serves and how it scores.

``serving/service.py`` (BentoML) creates one :class:`ModelServer` per worker process.
It resolves the configured reference (``production``, ``tth:staging``, a pinned tag…)
through the :class:`~mlaas4hep.serve.registry.Registry`, loads the version with
:class:`~mlaas4hep.serve.predictor.Predictor` (safe mode unless configured otherwise) and
then watches the registry from a background thread: when the reference names another
version (a promotion), the new version is loaded next to the old one and swapped in
with one assignment. A request keeps the version it started with, so in-flight
requests never fail during a switch; a version that fails to load is reported in
``/status`` and the metrics, and the previous one keeps serving.

Per-event requests go through an :class:`~mlaas4hep.serve.batching.AdaptiveBatcher` per
loaded version; bulk requests (Arrow, Parquet, ROOT files) are scored directly in a
worker thread. Prometheus metrics (batch sizes, events scored, model tag, switches,
load failures) are created on first use, after BentoML has set up its multiprocess
collector.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlaas4hep.errors import BranchError, MlaasError, ReadError
from mlaas4hep.io.columns import numpy_column
from mlaas4hep.io.failures import describe
from mlaas4hep.io.location import scheme
from mlaas4hep.io.tree import RootTree, open_tree
from mlaas4hep.serve import open_inference
from mlaas4hep.serve.answers import score_header, stream_scores
from mlaas4hep.serve.batching import AdaptiveBatcher, split
from mlaas4hep.serve.config import ServeConfig
from mlaas4hep.serve.payloads import (
    EventColumns,
    RequestError,
    batch_columns,
    from_table,
    parse_json,
    read_table,
)
from mlaas4hep.serve.predictor import Predictor
from mlaas4hep.serve.protocol import ARROW_STREAM, FILE_URL_SCHEMES
from mlaas4hep.serve.registry import Registry
from mlaas4hep.serve.registry_errors import ModelNotFound
from mlaas4hep.serve.sources import check_file_url, covered

log = logging.getLogger("mlaas4hep.serving")
JsonItem = list[dict[str, Any]] | EventColumns  # a /predict body after parse_json


@dataclass
class Loaded:
    """A version being served: its predictor and the batcher of its per-event requests."""

    predictor: Predictor
    batcher: AdaptiveBatcher[JsonItem, np.ndarray]


class ModelServer:
    """Loads, watches and scores with the configured model in this process."""

    def __init__(
        self, config: ServeConfig, registry: Registry | None = None, *, watch: bool = True
    ) -> None:
        self.config = config
        self.registry = registry or Registry(bucket=config.models_bucket)
        self.metrics = ServingMetrics.get()
        self.current: Loaded | None = None
        self.error: str | None = None
        self._failed: str | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self.refresh()
        self._watcher: threading.Thread | None = None
        if watch:
            self._watcher = threading.Thread(
                target=self._watch, name="mlaas4hep-model-watch", daemon=True
            )
            self._watcher.start()

    # --- which model ----------------------------------------------------------------
    def refresh(self) -> bool:
        """Resolve the reference again; load and swap in a new version. True if swapped."""
        with self._refresh_lock:
            try:
                tag = self._resolve()
            except (ModelNotFound, MlaasError) as err:
                self.error = f"cannot resolve model {self.config.model!r}: {err}"
                return False
            except Exception as err:  # the store or the bucket failed: keep serving
                self.error = f"cannot resolve model {self.config.model!r}: {describe(err)}"
                log.exception("resolving %s failed", self.config.model)
                return False
            if self.current is not None and self.current.predictor.tag == tag:
                self.error = None
                return False
            if tag == self._failed:
                return False  # reported already; wait for the reference to change
            try:
                predictor = Predictor.load(
                    self.registry.path(tag),
                    tag,
                    trust_user_code=self.config.trust_user_code,
                    engine=self.config.engine,
                    bulk_threads=self.config.threads_for_bulk,
                )
            except Exception as err:  # any failure: recorded, and the old version serves on
                self._failed = tag
                self.error = f"cannot load model {tag}: {describe(err)}"
                self.metrics.load_failures.inc()
                log.error("%s; still serving %s", self.error, self.tag or "nothing")
                return False
            previous = self.current
            self.current = Loaded(predictor, self._batcher(predictor))
            self._failed, self.error = None, None
            if previous is not None:
                previous.batcher.close()  # its queued requests still finish
            self.metrics.switched(previous.predictor.tag if previous else None, tag)
            log.info("serving %s (was %s)", tag, previous.predictor.tag if previous else "nothing")
            return True

    def _resolve(self) -> str:
        """The tag to serve (with a models bucket: its aliases, fetched when they change,
        and its version, cached in the local store on first use)."""
        return self.registry.resolve(self.config.model)

    def _watch(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the watcher must survive anything and keep polling
                log.exception("model watch failed")

    def close(self) -> None:
        self._stop.set()

    @property
    def tag(self) -> str | None:
        return self.current.predictor.tag if self.current else None

    def ready(self) -> bool:
        return self.current is not None

    def status(self) -> dict[str, Any]:
        """What this worker serves. ``worker`` is its process id: a service runs several
        workers, each following the registry on its own, so a caller that must know
        every worker switched counts the workers that say so (``config.workers``)."""
        return {
            "model": self.current.predictor.describe() if self.current else None,
            "worker": os.getpid(),
            "reference": self.config.model,
            "error": self.error,
            "config": self.config.public(),
        }

    def _loaded(self) -> Loaded:
        loaded = self.current
        if loaded is None:
            raise RequestError(
                f"no model to serve yet: {self.error or 'nothing loaded'} "
                "(upload one with POST /models and promote it)",
                field="model",
                status=503,
            )
        return loaded

    def _batcher(self, predictor: Predictor) -> AdaptiveBatcher[JsonItem, Any]:
        def score(items: Sequence[JsonItem]) -> list[np.ndarray | RequestError]:
            events, errors = batch_columns(items, predictor.vectorizer)
            sizes = [len(item) for item, error in zip(items, errors, strict=True) if not error]
            scores = iter(split(predictor.score(events), sizes) if events is not None else [])
            self.metrics.events.labels("predict", predictor.tag).inc(sum(sizes))
            return [error or next(scores) for error in errors]

        return AdaptiveBatcher(
            score, max_events=self.config.limits.batch_events, on_batch=self.metrics.batch
        )

    # --- scoring --------------------------------------------------------------------
    async def predict_json(self, body: dict[str, Any]) -> bytes:
        """``{"events": [...]}`` or ``{"columns": {...}}`` → ``{"model", "scores"}`` (JSON).

        A binary model's answer is exactly that (as before tasks); a multiclass one adds
        ``"task": "multiclass", "classes": [...]`` and gives each event a list of
        probabilities in the order of ``classes``; a regression adds ``"task":
        "regression"`` and gives the values (:func:`~mlaas4hep.serve.answers.score_header`).
        """
        loaded = self._loaded()
        predictor = loaded.predictor
        item = parse_json(body, predictor.vectorizer, self.config.limits.json_events)
        if isinstance(item, EventColumns):  # records are bounded by the body's size
            item.check_lists(self.config.limits.list_items, "columns.{branch}")
        scores = await loaded.batcher.submit(item, len(item))  # its rows of the batch
        answer = {"model": predictor.tag, **score_header(predictor.task), "scores": scores.tolist()}
        return json.dumps(answer).encode()

    def predict_table(
        self, body: bytes | bytearray, media_type: str, accept: str
    ) -> tuple[Iterator[bytes], str, str]:
        """An Arrow/Parquet body → scores encoded as ``accept``, in pieces; returns
        (pieces, media type, tag). Over-limit bodies are refused from their metadata."""
        predictor = self._loaded().predictor
        limits = self.config.limits
        table = read_table(
            body,
            media_type,
            max_events=limits.bulk_events,
            max_decoded_bytes=limits.decoded_bytes,
        )
        events = from_table(table, predictor.vectorizer).check_lists(limits.list_items)
        del table
        scores = predictor.score(events)
        self.metrics.events.labels("predict_arrow", predictor.tag).inc(len(events))
        pieces, kind = stream_scores(
            scores, predictor.tag, accept or ARROW_STREAM, task=predictor.task
        )
        return pieces, kind, predictor.tag

    def predict_file(
        self, source: str | bytes | bytearray, accept: str, tree: str | None = None
    ) -> tuple[Iterator[bytes], str, str]:
        """A ROOT file (its bytes, or an ``s3://``/``root://``/``https://`` URL under
        ``file_sources``; a web server's redirects are followed only under them too)
        scored in chunks of ``limits.file_step_events``; a file of more than
        ``limits.bulk_events`` events is refused (413) before its baskets are read."""
        field = "url" if isinstance(source, str) else "body"
        if isinstance(source, str):
            if scheme(source) not in FILE_URL_SCHEMES:
                raise RequestError(
                    f"only s3://, root://, https:// and http:// URLs are read "
                    f"({source[:200]!r}); upload a local file as the request body instead",
                    field="url",
                )
            check_file_url(source, self.config.file_sources)
        predictor = self._loaded().predictor
        limits = self.config.limits
        parts = []
        try:
            with self._open_file(source, tree) as root_tree:
                if root_tree.num_entries > limits.bulk_events:
                    raise RequestError(
                        f"the file's tree holds {root_tree.num_entries} events, above the "
                        f"limit of {limits.bulk_events} per request (limits.bulk_events): "
                        "score it in parts, or train-and-evaluate with the job",
                        field=field,
                        status=413,
                    )
                missing = [b for b in predictor.branches if b not in root_tree]
                if missing:
                    raise BranchError(
                        f"{root_tree.url}: tree {root_tree.tree_name!r} lacks the "
                        f"branch(es) {', '.join(missing)} the model needs"
                    )
                step = min(limits.file_step_events, limits.bulk_events)
                blocks = predictor.vectorizer.inputs
                for chunk in root_tree.iterate(predictor.branches, step_size=step):
                    n = len(next(iter(chunk.values())))
                    if n:
                        columns = {b.name: numpy_column(chunk[b.name], b.kind) for b in blocks}
                        events = EventColumns(columns, n).check_lists(limits.list_items)
                        parts.append(predictor.score(events))
        except (ReadError, BranchError) as err:
            raise RequestError(str(err), field=field, status=422) from None
        scores = np.concatenate(parts) if parts else predictor.task.shaped(np.zeros(0))
        self.metrics.events.labels("predict_file", predictor.tag).inc(len(scores))
        pieces, kind = stream_scores(scores, predictor.tag, accept, task=predictor.task)
        return pieces, kind, predictor.tag

    def _open_file(self, source: str | bytes | bytearray, tree: str | None) -> RootTree:
        if isinstance(source, str):
            sources = self.config.file_sources
            return open_tree(source, tree, redirects=lambda target: covered(target, sources))
        return open_tree("the uploaded file", tree, data=source)

    def infer(
        self, body: bytes | bytearray, header_length: str | None, name: str, version: str | None
    ) -> tuple[bytes, dict[str, str], str]:
        """An Open Inference Protocol (v2) request → (body, headers, media type)."""
        predictor, request, item = self._infer_inputs(body, header_length, name, version)
        if isinstance(item, EventColumns):
            scores = predictor.score(item)
        else:
            scores = predictor.score_features(*item)
        self.metrics.events.labels("infer", predictor.tag).inc(len(scores))
        return open_inference.encode_response(scores, predictor.tag, request)

    async def infer_batched(
        self, body: bytes | bytearray, header_length: str | None, name: str, version: str | None
    ) -> tuple[bytes, dict[str, str], str]:
        """:meth:`infer` for a small body, on the event loop: raw-branch events are scored
        by the adaptive batcher together with concurrent ``/predict`` and v2 requests
        (counted with them, under ``predict``), as ``/predict`` does for one event."""
        loaded = self._loaded()
        predictor, request, item = self._infer_inputs(body, header_length, name, version)
        if isinstance(item, EventColumns):
            scores = await loaded.batcher.submit(item, len(item))
        else:
            scores = predictor.score_features(*item)
            self.metrics.events.labels("infer", predictor.tag).inc(len(scores))
        return open_inference.encode_response(scores, predictor.tag, request)

    def _infer_inputs(
        self, body: bytes | bytearray, header_length: str | None, name: str, version: str | None
    ) -> tuple[Predictor, Any, EventColumns | tuple[np.ndarray, np.ndarray]]:
        """The served predictor, the parsed request, and its events (raw branches) or
        its ``(X, mask)`` (the features form)."""
        predictor = self._loaded().predictor
        open_inference.check_served(predictor.tag, name, version)
        limits = self.config.limits
        request = open_inference.parse_request(
            body, header_length, max_elements=limits.bulk_events * max(1, limits.list_items)
        )
        tensors = request.tensors
        if open_inference.FEATURES in tensors:
            features = open_inference.features_of(
                tensors, predictor.vectorizer.n_features, limits.bulk_events
            )
            return predictor, request, features
        events = open_inference.events_of(tensors, predictor.vectorizer, limits.bulk_events)
        return predictor, request, events.check_lists(limits.list_items, "inputs.{branch}")

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """The v2 metadata of the served version (a 404 for another name or version)."""
        predictor = self._loaded().predictor
        open_inference.check_served(predictor.tag, name, version)
        return open_inference.model_metadata(predictor.tag, predictor.vectorizer, predictor.task)


class ServingMetrics:
    """The service's own Prometheus metrics (BentoML adds requests and latency)."""

    _instance: ServingMetrics | None = None

    def __init__(self) -> None:
        import prometheus_client as prom

        sizes = [2**i for i in range(14)]
        self.batch_events = prom.Histogram(
            "mlaas4hep_batch_events",
            "Events scored per adaptive batch of /predict requests",
            buckets=sizes,
        )
        self.batch_requests = prom.Histogram(
            "mlaas4hep_batch_requests",
            "Requests per adaptive batch of /predict",
            buckets=sizes,
        )
        self.batch_seconds = prom.Histogram(
            "mlaas4hep_batch_seconds",
            "Time to vectorise and score one batch",
            buckets=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0],
        )
        self.events = prom.Counter(
            "mlaas4hep_events_scored", "Events scored", ["endpoint", "model"]
        )
        self.model = prom.Gauge(
            "mlaas4hep_model_info",
            "1 for the model version being served",
            ["tag"],
            multiprocess_mode="livemax",
        )
        self.switches = prom.Counter("mlaas4hep_model_switches", "Model versions swapped in")
        self.load_failures = prom.Counter(
            "mlaas4hep_model_load_failures", "Model versions that failed to load"
        )

    @classmethod
    def get(cls) -> ServingMetrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def batch(self, requests: int, events: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_events.observe(events)
        self.batch_seconds.observe(seconds)

    def switched(self, previous: str | None, tag: str) -> None:
        if previous:
            self.model.labels(previous).set(0)
        self.model.labels(tag).set(1)
        self.switches.inc()
