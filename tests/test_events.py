"""The request path of the service without a server: bodies → columns (JSON records,
JSON columns, Arrow, Parquet) with errors that name the field, adaptive batching, the
serving configuration, and the auth/size guard in front of every endpoint."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve.answers import encode_scores, negotiate
from mlaas4hep.serve.batching import AdaptiveBatcher, split
from mlaas4hep.serve.config import Limits, ServeConfig
from mlaas4hep.serve.http_api import GuardMiddleware
from mlaas4hep.serve.payloads import (
    EventColumns,
    RequestError,
    batch_columns,
    from_json,
    from_table,
    parse_json,
    read_table,
)
from mlaas4hep.serve.protocol import ARROW_STREAM, JSON, PARQUET
from mlaas4hep.transform.vectorizer import Vectorizer

# Arrow buffers are read-only: they must reach the kernels without numba's cast warning.
pytestmark = pytest.mark.filterwarnings("error::numba.core.errors.NumbaTypeSafetyWarning")

VECTORIZER = Vectorizer.from_dict(
    {
        "config_version": 1,
        "normalization": "minmax",
        "pad_value": 0.0,
        "nonfinite": "mask",
        "blocks": [
            {"name": "nJet", "kind": "flat", "dtype": "int32", "length": 1, "shift": 0.0,
             "scale": 10.0},
            {"name": "Jet_pt", "kind": "jagged", "dtype": "float32", "length": 3, "shift": 20.0,
             "scale": 200.0},
            {"name": "HT", "kind": "flat", "dtype": "float32", "length": 1, "shift": 0.0,
             "scale": 500.0},
        ],
    }
)  # fmt: skip
RECORDS = [
    {"nJet": 2, "Jet_pt": [51.2, 33.0], "HT": 84.2, "extra": "ignored"},
    {"nJet": 0, "Jet_pt": [], "HT": 0.0},
    {"nJet": 4, "Jet_pt": [90.5, 70.1, 40.0, 25.5], "HT": 226.1},
]


def reference() -> tuple[np.ndarray, np.ndarray]:
    chunk = {
        "nJet": np.array([r["nJet"] for r in RECORDS], dtype=np.int32),
        "Jet_pt": ak.values_astype(ak.Array([r["Jet_pt"] for r in RECORDS]), np.float32),
        "HT": np.array([r["HT"] for r in RECORDS], dtype=np.float32),
    }
    out = VECTORIZER.transform(chunk)
    return out.X.copy(), out.mask.copy()


def vectorized(events: EventColumns) -> tuple[np.ndarray, np.ndarray]:
    out = VECTORIZER.transform(events.columns)
    return out.X.copy(), out.mask.copy()


def arrow_table(**overrides: pa.Array) -> pa.Table:
    columns = {
        "nJet": pa.array([r["nJet"] for r in RECORDS], pa.int32()),
        "Jet_pt": pa.array([r["Jet_pt"] for r in RECORDS], pa.list_(pa.float32())),
        "HT": pa.array([r["HT"] for r in RECORDS], pa.float32()),
    }
    columns.update(overrides)
    return pa.table(columns)


def stream_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


# ------------------------------------------------------------------------ conversions


def test_records_columns_arrow_and_parquet_give_the_same_matrix() -> None:
    X, mask = reference()
    records = from_json({"events": RECORDS}, VECTORIZER, 100)
    columns = {k: [r[k] for r in RECORDS] for k in ("nJet", "Jet_pt", "HT")}
    by_column = from_json({"columns": columns}, VECTORIZER, 100)
    parquet = io.BytesIO()
    pq.write_table(arrow_table(), parquet)
    file_sink = pa.BufferOutputStream()
    with pa.ipc.new_file(file_sink, arrow_table().schema) as writer:
        writer.write_table(arrow_table())
    bodies = {
        "stream": stream_bytes(arrow_table()),
        "file": file_sink.getvalue().to_pybytes(),
        "parquet": parquet.getvalue(),
    }
    arrows = [from_table(read_table(body), VECTORIZER) for body in bodies.values()]
    for events in (records, by_column, *arrows):
        assert len(events) == 3
        got_X, got_mask = vectorized(events)
        np.testing.assert_array_equal(got_mask, mask)
        np.testing.assert_array_equal(got_X, X)
    assert records.columns["Jet_pt"].content.dtype == np.float32  # cast to the branch dtype
    assert records.columns["nJet"].dtype == np.int32


def test_arrow_fixed_size_and_large_lists_are_read() -> None:
    X, _ = reference()
    large = pa.array([r["Jet_pt"] for r in RECORDS], pa.large_list(pa.float64()))
    got = from_table(arrow_table(Jet_pt=large), VECTORIZER)
    np.testing.assert_array_equal(vectorized(got)[0], X)
    fixed = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32(), 2))
    events = from_table(arrow_table(Jet_pt=fixed), VECTORIZER)
    np.testing.assert_array_equal(np.diff(events.columns["Jet_pt"].offsets), [2, 2, 2])


def test_concat_and_batch_columns_equal_one_conversion() -> None:
    whole = vectorized(from_json({"events": RECORDS}, VECTORIZER, 100))
    parts = [from_json({"events": RECORDS[i : i + 1]}, VECTORIZER, 100) for i in range(3)]
    np.testing.assert_array_equal(vectorized(EventColumns.concat(parts))[0], whole[0])
    items = [parse_json({"events": RECORDS[:2]}, VECTORIZER, 100), RECORDS[2:]]
    merged, errors = batch_columns(items, VECTORIZER)
    assert errors == [None, None]
    np.testing.assert_array_equal(vectorized(merged)[0], whole[0])


def test_batch_columns_isolates_a_bad_request_with_its_own_event_numbers() -> None:
    bad = [RECORDS[0], {"nJet": 1, "Jet_pt": "high", "HT": 1.0}]
    items = [RECORDS[:1], bad, RECORDS[2:]]
    merged, errors = batch_columns(items, VECTORIZER)
    assert errors[0] is None and errors[2] is None
    assert errors[1] is not None and errors[1].field == "events[1].Jet_pt"
    assert len(merged) == 2


# ----------------------------------------------------------------------- bad input


def broken(index: int, **changes: object) -> list[dict]:
    records = [dict(r) for r in RECORDS]
    records[index].update(changes)
    return records


def without(index: int, name: str) -> list[dict]:
    records = [dict(r) for r in RECORDS]
    del records[index][name]
    return records


@pytest.mark.parametrize(
    "body, field, problem",
    [
        ({"events": without(1, "Jet_pt")}, "events[1].Jet_pt", "missing branch 'Jet_pt'"),
        ({"events": broken(0, HT="84.2")}, "events[0].HT", "expected a number, got a string"),
        ({"events": broken(2, HT=[1.0])}, "events[2].HT", "expected a number, got a list"),
        ({"events": broken(1, HT=None)}, "events[1].HT", "got null"),
        ({"events": broken(0, Jet_pt=51.2)}, "events[0].Jet_pt", "expected a list of numbers"),
        ({"events": broken(2, Jet_pt=[1.0, "x"])}, "events[2].Jet_pt[1]", "got a string"),
        ({"events": broken(2, Jet_pt=[1.0, [2.0]])}, "events[2].Jet_pt[1]", "got a list"),
        ({"events": broken(0, nJet=2.5)}, "events[0].nJet", "expected an integer"),
        ({"events": broken(0, nJet=2**70)}, "events[0].nJet", "too large"),
        ({"events": broken(1, nJet=float("inf"))}, "events[1].nJet", "expected an integer from"),
        ({"events": broken(2, nJet=1e30)}, "events[2].nJet", "(int32), got 1e+30"),
        ({"events": broken(0, nJet=2**40)}, "events[0].nJet", "-2147483648 to 2147483647"),
        ({"events": [RECORDS[0], 7]}, "events[1]", "expected a record"),
        ({"events": {"nJet": 1}}, "events", "expected a list of records"),
        ({"events": []}, "events", "empty batch"),
        ({"columns": {"nJet": [], "Jet_pt": [], "HT": []}}, "columns.nJet", "empty batch"),
        (
            {"columns": {"nJet": [1, 2], "Jet_pt": [[1.0]], "HT": [1.0, 2.0]}},
            "columns.Jet_pt",
            "has 1 events but columns.nJet has 2",
        ),
        ({"columns": {"nJet": [1], "HT": [1.0]}}, "columns.Jet_pt", "missing branch"),
        ({"columns": {"nJet": 1, "Jet_pt": [[]], "HT": [1.0]}}, "columns.nJet", "one value per"),
        ({"columns": [1]}, "columns", "expected an object"),
        ({}, "body", "either 'events'"),
        ({"events": RECORDS, "columns": {}}, "body", "either 'events'"),
    ],
)
def test_bad_json_names_the_field_and_the_problem(body: dict, field: str, problem: str) -> None:
    with pytest.raises(RequestError) as caught:
        from_json(body, VECTORIZER, 100)
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert caught.value.status == 400
    payload = caught.value.payload()
    assert payload["field"] == field and field in payload["error"]
    json.dumps(payload)  # serialisable as it is


def test_a_misspelt_branch_gets_a_suggestion_and_too_many_events_a_413() -> None:
    records = [{"njet": 1, "Jet_pt": [], "HT": 1.0}]
    with pytest.raises(RequestError, match="did you mean to send 'njet' as 'nJet'"):
        from_json({"events": records}, VECTORIZER, 100)
    with pytest.raises(RequestError) as caught:
        from_json({"events": RECORDS}, VECTORIZER, 2)
    assert caught.value.status == 413 and "3 events exceed the limit of 2" in str(caught.value)


@pytest.mark.parametrize(
    "table, field, problem",
    [
        (arrow_table().drop(["HT"]), "HT", "missing branch 'HT'"),
        (arrow_table(HT=pa.array(["a", "b", "c"])), "HT", "expected numbers"),
        (arrow_table(HT=pa.array([1.0, None, 2.0], pa.float32())), "HT", "1 null value"),
        (arrow_table(Jet_pt=pa.array([1.0, 2.0, 3.0])), "Jet_pt", "list of numbers per event"),
        (
            arrow_table(Jet_pt=pa.array([[1.0], [None], []], pa.list_(pa.float32()))),
            "Jet_pt",
            "null values inside",
        ),
        (arrow_table().slice(0, 0), "body", "empty batch"),
    ],
)
def test_bad_arrow_names_the_column(table: pa.Table, field: str, problem: str) -> None:
    with pytest.raises(RequestError) as caught:
        from_table(read_table(stream_bytes(table)), VECTORIZER)
    assert caught.value.field == field and problem in caught.value.problem


def test_a_body_that_is_not_arrow_is_refused() -> None:
    for body in (b"", b"PAR1 not really", b"\xff\xff\xff\xffgarbage", b"{}"):
        with pytest.raises(RequestError) as caught:
            read_table(body, ARROW_STREAM)
        assert caught.value.field == "body"


def test_scores_are_encoded_as_asked() -> None:
    scores = np.array([0.25, 0.5, 0.75], dtype=np.float32)
    data, kind = encode_scores(scores, "m:1", ARROW_STREAM)
    table = pa.ipc.open_stream(data).read_all()
    assert kind == ARROW_STREAM and table.schema.metadata[b"model"] == b"m:1"
    np.testing.assert_array_equal(table.column("score").to_numpy(), scores)
    data, kind = encode_scores(scores, "m:1", PARQUET)
    np.testing.assert_array_equal(pq.read_table(io.BytesIO(data)).column("score"), scores)
    data, kind = encode_scores(scores, "m:1", JSON)
    assert json.loads(data) == {"model": "m:1", "scores": [0.25, 0.5, 0.75]}
    assert negotiate("text/html, application/vnd.apache.parquet;q=0.9", JSON) == PARQUET
    assert negotiate("*/*", ARROW_STREAM) == ARROW_STREAM


# ------------------------------------------------------------------------- batching


def test_concurrent_requests_are_scored_together_in_order() -> None:
    calls: list[int] = []

    def score(items: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(len(items))
        return split(np.concatenate(items) * 2, [len(i) for i in items])

    batches: list[tuple[int, int]] = []
    batcher = AdaptiveBatcher(score, max_events=64, on_batch=lambda r, e, s: batches.append((r, e)))

    async def run() -> list[np.ndarray]:
        items = [np.arange(i, i + 3, dtype=np.float32) for i in range(100)]
        return await asyncio.gather(*(batcher.submit(item, 3) for item in items))

    results = asyncio.run(run())
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.arange(i, i + 3) * 2)
    assert sum(calls) == 100 and len(calls) < 10  # batched, ≤ 64 events (21 requests) each
    assert max(e for _, e in batches) <= 64 and sum(r for r, _ in batches) == 100


def test_an_error_fails_only_the_request_that_caused_it() -> None:
    """A batch whose scoring raises is scored again item by item: the request that made
    it fail (one NaN under ``nonfinite: raise``, say) fails alone."""

    def score(items: list[int]) -> list[object]:
        if 13 in items or 99 in items:
            raise RuntimeError("model exploded")
        return [ValueError(f"bad {i}") if i % 2 else i for i in items]

    batcher = AdaptiveBatcher(score)

    async def run(values: list[int]) -> list[object]:
        return await asyncio.gather(*(batcher.submit(v, 1) for v in values), return_exceptions=True)

    results = asyncio.run(run([0, 1, 2]))
    assert results[0] == 0 and results[2] == 2 and isinstance(results[1], ValueError)
    results = asyncio.run(run([12, 13, 14]))
    assert results[0] == 12 and results[2] == 14 and isinstance(results[1], RuntimeError)
    results = asyncio.run(run([13, 99]))
    assert all(isinstance(r, RuntimeError) for r in results)


def test_a_large_batch_runs_off_the_event_loop() -> None:
    import threading

    threads: list[str] = []

    def score(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return items

    batcher = AdaptiveBatcher(score, max_events=10_000, inline_events=100)

    async def run() -> None:
        assert await batcher.submit(1, 50) == 1
        assert await batcher.submit(2, 500) == 2

    asyncio.run(run())
    batcher.close()
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("mlaas4hep-batch")


# ---------------------------------------------------------------------- configuration


def test_config_comes_from_a_yaml_file_then_the_environment(tmp_path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("model: tth:staging\npoll_seconds: 0.5\nlimits: {json_bytes: 1000}\n")
    env = {
        "MLAAS4HEP_SERVE_CONFIG": str(path),
        "MLAAS4HEP_SERVE_TOKEN": "t" * 20,
        "MLAAS4HEP_SERVE_PREDICT_AUTH": "yes",
        "MLAAS4HEP_SERVE_WORKERS": "3",
        "MLAAS4HEP_SERVE_MEMORY_MIB": "3072",  # 1 GiB per worker: the default limits
    }
    config = ServeConfig.from_env(env)
    assert config.model == "tth:staging" and config.poll_seconds == 0.5
    assert config.limits.json_bytes == 1000 and config.limits.bulk_bytes == Limits().bulk_bytes
    assert config.limits == replace(Limits(), json_bytes=1000)
    assert config.token == "t" * 20 and config.predict_requires_token and config.workers == 3
    assert "t" * 20 not in json.dumps(config.public())
    default = ServeConfig.from_env({})
    assert default.token is None and default.model == "production" and not default.trust_user_code
    assert default.engine == "auto" and not default.open_metrics
    assert ServeConfig.from_env({"MLAAS4HEP_SERVE_OPEN_METRICS": "1"}).open_metrics
    assert ServeConfig.from_env({"MLAAS4HEP_SERVE_ENGINE": "numpy"}).engine == "numpy"
    assert default.bulk_threads == 0 and default.threads_for_bulk >= 1  # the process's CPUs
    assert ServeConfig.from_env({"MLAAS4HEP_SERVE_BULK_THREADS": "3"}).threads_for_bulk == 3


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MLAAS4HEP_SERVE_TOKEN": "short"}, "at least 16 characters"),
        ({"MLAAS4HEP_SERVE_TRUST_USER_CODE": "maybe"}, "must be 1/0"),
        ({"MLAAS4HEP_SERVE_WORKERS": "two"}, "must be an integer"),
        ({"MLAAS4HEP_SERVE_ENGINE": "tensorrt"}, "engine must be one of auto, onnx, numpy"),
        ({"MLAAS4HEP_SERVE_BULK_THREADS": "-1"}, "bulk_threads must be >= 0"),
        ({"MLAAS4HEP_SERVE_CONFIG": "/nonexistent/serve.yaml"}, "not found"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServeConfig.from_env(env)


def test_limits_are_sized_from_the_task_memory_and_the_workers() -> None:
    # the deployment's default task: 2 GiB, 2 workers → the documented defaults
    assert Limits.sized(2 << 30, 2) == Limits()
    small, large = Limits.sized(512 << 20, 2), Limits.sized(64 << 30, 4)
    assert small.bulk_bytes < Limits().bulk_bytes < large.bulk_bytes <= 1 << 30
    assert small.decoded_bytes < Limits().decoded_bytes < large.decoded_bytes
    assert small.bulk_events < Limits().bulk_events < large.bulk_events
    # what one worker may decode never exceeds its share of the memory
    for memory, workers in ((512 << 20, 1), (2 << 30, 2), (8 << 30, 16), (64 << 30, 4)):
        limits = Limits.sized(memory, workers)
        share = max(memory // workers, 256 << 20)
        assert limits.decoded_bytes + limits.bulk_bytes <= share // 2
    # a limit the configuration gives is kept
    assert Limits.sized(64 << 30, 4, bulk_events=10).bulk_events == 10
    env = {"MLAAS4HEP_SERVE_MEMORY_MIB": "1024", "MLAAS4HEP_SERVE_WORKERS": "1"}
    assert ServeConfig.from_env(env).limits == Limits()
    with pytest.raises(ConfigError, match="MEMORY_MIB must be an integer"):
        ServeConfig.from_env({"MLAAS4HEP_SERVE_MEMORY_MIB": "lots"})


def test_file_sources_default_to_the_data_bucket_and_are_checked() -> None:
    assert ServeConfig.from_env({}).file_sources == ()
    config = ServeConfig.from_env({"MLAAS4HEP_DATA_BUCKET": "physics-data"})
    assert config.file_sources == ("s3://physics-data/",)
    env = {
        "MLAAS4HEP_DATA_BUCKET": "physics-data",
        "MLAAS4HEP_SERVE_FILE_SOURCES": "s3://other/ttH/, root://eos.cern.ch//eos/cms/",
    }
    assert ServeConfig.from_env(env).file_sources == (
        "s3://other/ttH/",
        "root://eos.cern.ch//eos/cms/",
    )
    assert ServeConfig.from_dict({"file_sources": ["s3://a-bucket/x/"]}).file_sources == (
        "s3://a-bucket/x/",
    )
    assert ServeConfig.from_dict({"file_sources": ["https://opendata.cern.ch/eos/"]}).file_sources
    bad_sources = ("s3://bucket", "ftp://site/x/", "https://site", "root://host", "/data/")
    for bad in (*bad_sources, "s3://b/../x/", "https://u@site/x/", "https://site/x?y/"):
        with pytest.raises(ConfigError, match="file source"):
            ServeConfig.from_dict({"file_sources": [bad]})
    with pytest.raises(ConfigError, match="list of strings"):
        ServeConfig.from_dict({"file_sources": "s3://a-bucket/"})


def test_unknown_yaml_keys_get_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'trust_user_code'"):
        ServeConfig.from_dict({"trust_user_cod": True})
    with pytest.raises(ConfigError, match="did you mean 'limits.json_bytes'|json_bytes"):
        ServeConfig.from_dict({"limits": {"json_byte": 10}})
    with pytest.raises(ConfigError, match="must be true or false"):
        ServeConfig.from_dict({"trust_user_code": "yes"})


# ---------------------------------------------------------------------------- guard


class Recorder:
    """An ASGI app that answers 200 with the body it read."""

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def call(app, method: str, path: str, chunks: list[bytes], headers: dict[str, str]):
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, body


def test_the_guard_checks_tokens_and_body_sizes() -> None:
    limits = Limits(json_bytes=100, model_bytes=1000)
    token = "s3cret-token-0123456789"
    guard = GuardMiddleware(Recorder(), ServeConfig(token=token, limits=limits))
    bearer = {"Authorization": f"Bearer {token}"}
    assert call(guard, "POST", "/predict", [b"x" * 100], {"Content-Length": "100"}) == (
        200,
        b"x" * 100,
    )
    status, body = call(guard, "POST", "/predict", [b"x" * 101], {"Content-Length": "101"})
    assert status == 413 and json.loads(body)["field"] == "body"
    status, body = call(guard, "POST", "/predict", [b"x" * 60, b"y" * 60], {})  # chunked
    assert status == 413 and "limit of 100 bytes" in json.loads(body)["problem"]
    assert call(guard, "POST", "/predict", [b"x" * 40, b"y" * 40], {}) == (
        200,
        b"x" * 40 + b"y" * 40,
    )
    status, body = call(guard, "DELETE", "/models/tth:abc", [], {})
    assert status == 401 and json.loads(body)["field"] == "authorization"
    status, _ = call(guard, "DELETE", "/models/tth:abc", [], {"Authorization": "Bearer wrong"})
    assert status == 401
    assert call(guard, "DELETE", "/models/tth:abc", [], bearer)[0] == 200
    assert call(guard, "GET", "/models", [], {})[0] == 200  # reads stay open by default
    status, _ = call(guard, "POST", "/models", [b"x" * 1001], {**bearer, "Content-Length": "1001"})
    assert status == 413


def test_without_a_token_mutations_are_refused_and_predictions_can_be_closed() -> None:
    guard = GuardMiddleware(Recorder(), ServeConfig())
    status, body = call(guard, "POST", "/models/tth:abc/promote", [], {})
    assert status == 403 and "MLAAS4HEP_SERVE_TOKEN" in json.loads(body)["problem"]
    closed = GuardMiddleware(Recorder(), ServeConfig(token="t" * 16, predict_requires_token=True))
    assert call(closed, "POST", "/predict", [b"{}"], {"Content-Length": "2"})[0] == 401
    assert call(closed, "GET", "/models", [], {})[0] == 401
    assert call(closed, "GET", "/metrics", [], {})[0] == 401  # it names models and rates
    right = {"Authorization": "Bearer " + "t" * 16}
    assert call(closed, "GET", "/metrics", [], right)[0] == 200
    scraped = ServeConfig(token="t" * 16, predict_requires_token=True, open_metrics=True)
    assert call(GuardMiddleware(Recorder(), scraped), "GET", "/metrics", [], {})[0] == 200
    assert call(GuardMiddleware(Recorder(), ServeConfig()), "GET", "/metrics", [], {})[0] == 200
    # every read that says something about the model is closed too
    for path in ("/status", "/models/tth:abc/card", "/aliases", "/registry"):
        assert call(closed, "GET", path, [], {})[0] == 401, path
    for path in ("/healthz", "/livez", "/readyz"):
        assert call(closed, "GET", path, [], {})[0] == 200, path
        assert call(closed, "GET", path, [], {"Authorization": "Bearer wrong"})[0] == 200


# ------------------------------------------------------------------ hostile offsets


def list_with_offsets(offsets: list[int], values: list[float]) -> pa.Array:
    """A ListArray built from raw buffers, so that pyarrow does not check its offsets."""
    offsets_buffer = pa.py_buffer(np.asarray(offsets, dtype=np.int32).tobytes())
    return pa.Array.from_buffers(
        pa.list_(pa.float32()),
        len(offsets) - 1,
        [None, offsets_buffer],
        children=[pa.array(values, pa.float32())],
    )


@pytest.mark.parametrize(
    ("offsets", "problem"),
    [
        ([0, 2**29, 2**29 + 8, 2], "decrease at event 2"),
        ([0, 3, 1, 4], "decrease at event 1"),
    ],
)
def test_arrow_offsets_that_do_not_fit_their_values_are_a_400(offsets, problem) -> None:
    table = arrow_table(Jet_pt=list_with_offsets(offsets, [1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(RequestError) as caught:
        from_table(read_table(stream_bytes(table)), VECTORIZER)
    assert caught.value.status == 400 and caught.value.field == "Jet_pt"
    assert problem in caught.value.problem


def test_arrow_offsets_past_the_values_in_the_bytes_are_a_400() -> None:
    """pyarrow will not write such a list: the bytes are patched, as a hostile client would."""
    table = arrow_table(Jet_pt=list_with_offsets([0, 2, 2, 4], [1.0, 2.0, 3.0, 4.0]))
    sound = np.asarray([0, 2, 2, 4], dtype=np.int32).tobytes()
    body = stream_bytes(table)
    assert body.count(sound) == 1
    hostile = body.replace(sound, np.asarray([0, 2, 2, 2**29], dtype=np.int32).tobytes())
    with pytest.raises(RequestError) as caught:
        from_table(read_table(hostile), VECTORIZER)
    assert caught.value.status == 400 and caught.value.field == "Jet_pt"
    assert "point past its 4 values" in caught.value.problem
