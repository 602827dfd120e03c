"""Serving models of every task: ``/predict``, ``/predict_arrow``, ``/predict_file``, the
Open Inference Protocol and the registry card carry one probability per event (binary),
one per class (multiclass, named by the classes) or the regressed value, each as the
model's task names it; a binary model's answers stay byte for byte what they were.

The bundles are built without training (the default torch model of each task, exported
to ONNX), put in a registry on a temporary BentoML store and served in process: the
Starlette app through its test client (``/predict`` is BentoML's route, so the core it
calls, :meth:`ModelServer.predict_json`, is called directly), and once through the real
Triton client against the app on a loopback port."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_events import RECORDS, VECTORIZER, arrow_table, stream_bytes
from test_open_inference import binary_body, json_body, raw_tensors

from mlaas4hep.model.tasks import Task
from mlaas4hep.serve.answers import stream_scores
from mlaas4hep.serve.open_inference import model_metadata
from mlaas4hep.serve.payloads import from_records
from mlaas4hep.serve.protocol import ARROW_STREAM, JSON, PARQUET
from mlaas4hep.serve.registry_page import card_page

torch = pytest.importorskip("torch")
pytest.importorskip("bentoml")
pytest.importorskip("onnxruntime")
pytestmark = [
    pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaTypeSafetyWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pathspec.*"),
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

CLASSES = ("ttH", "ttbb", "ttcc")
TASKS = {
    "multi": Task("multiclass", CLASSES, "cce"),
    "regr": Task("regression", (), "mse", offset=5.0, scale=2.0),
    "bin": Task(),
}
PLOTS = {
    "multi": ("roc.png", "confusion.png", "loss.png", "features.png"),
    "regr": ("residuals.png", "loss.png", "features.png"),
    "bin": ("roc.png", "loss.png"),
}
#: What the plot endpoint serves is the file's bytes; a signature is all a test needs.
PNG = b"\x89PNG\r\n\x1a\n-a-test-plot"


def make_bundle(directory: Path, name: str, seed: int) -> Path:
    """An untrained default torch model of ``name``'s task, with reference rows, the
    task's test metrics (computed by the task on random labels) and plot files."""
    from mlaas4hep.model.architectures import build_model
    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.spec.documents import DatasetSpec

    task = TASKS[name]
    torch.manual_seed(seed)
    n = VECTORIZER.n_features
    model = build_model(None, "torch", n, False, task=task)
    model.eval()
    rng = np.random.default_rng(seed)
    X = rng.random((400, n), dtype=np.float32)
    mask = rng.random((400, n)) > 0.2
    bundle = ModelBundle(
        "torch", VECTORIZER, DatasetSpec(), task=task, model=model, onnx_check=(X, mask),
        lineage={"run_name": f"run-{name}", "libraries": {"torch": torch.__version__}},
    )  # fmt: skip
    scores = bundle.predict_vectorized(X, mask)
    if task.kind == "multiclass":
        labels = rng.integers(0, len(CLASSES), len(X)).astype(np.float32)
    elif task.kind == "regression":
        labels = rng.normal(5.0, 2.0, len(X)).astype(np.float32)
    else:
        labels = (rng.random(len(X)) > 0.5).astype(np.float32)
    bundle.metrics = {f"test_{k}": v for k, v in task.metrics(labels, scores).items()}
    if task.kind == "multiclass":
        bundle.metrics["test_class_fractions"] = {c: 1 / 3 for c in CLASSES}
    bundle.metrics["history"] = [{"unit": 0}]
    bundle.reference = {"X": X[:32], "mask": mask[:32], "scores": scores[:32]}
    path = bundle.save(directory / name)
    (path / "plots").mkdir()
    for plot in PLOTS[name]:
        (path / "plots" / plot).write_bytes(PNG)
    (path / "plots" / "notes.txt").write_text("not a plot")
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One :class:`ModelServer` per task (``multi``, ``regr``, ``bin``) on one registry."""
    from mlaas4hep.serve.config import ServeConfig
    from mlaas4hep.serve.registry import Registry
    from mlaas4hep.serve.server import ModelServer

    root = tmp_path_factory.mktemp("tasks")
    registry = Registry(root / "bentoml")
    out = {}
    for seed, name in enumerate(TASKS):
        registry.promote(registry.add(make_bundle(root / "bundles", name, seed), name))
        out[name] = ModelServer(ServeConfig(model=name), registry, watch=False)
        assert out[name].ready(), out[name].error
    yield out
    for server in out.values():
        server.close()


def client_of(server: Any) -> Any:
    from starlette.testclient import TestClient

    from mlaas4hep.serve.http_api import build_app

    return TestClient(build_app(lambda: server))


def expected(server: Any, records: list[dict] = RECORDS) -> np.ndarray:
    """What the served predictor gives the records (``[n]`` or ``[n, C]``)."""
    predictor = server.current.predictor
    return predictor.score(from_records(records, predictor.vectorizer, len(records)))


def predict(server: Any, *bodies: dict) -> list[dict]:
    """``/predict`` answers of concurrent bodies (scored together by the batcher)."""

    async def run() -> list[bytes]:
        return await asyncio.gather(*(server.predict_json(body) for body in bodies))

    return [json.loads(answer) for answer in asyncio.run(run())]


# -------------------------------------------------------------------------- /predict


def test_predict_gives_a_probability_per_class_named_by_the_classes(servers) -> None:
    server = servers["multi"]
    (answer,) = predict(server, {"events": RECORDS})
    assert list(answer) == ["model", "task", "classes", "scores"]
    assert (answer["model"], answer["task"]) == (server.tag, "multiclass")
    assert answer["classes"] == list(CLASSES)
    scores = np.asarray(answer["scores"], dtype=np.float64)
    assert scores.shape == (len(RECORDS), len(CLASSES))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores, expected(server), rtol=0, atol=1e-6)


def test_batched_requests_each_get_their_own_rows(servers) -> None:
    """Concurrent requests are scored as one batch and split by rows: each answer holds
    its own events' probabilities, whole rows (``batching.split`` on ``[n, C]``)."""
    server = servers["multi"]
    columns = {k: [r[k] for r in RECORDS[1:]] for k in ("nJet", "Jet_pt", "HT")}
    bodies = [{"events": RECORDS[:1]}, {"columns": columns}, {"events": RECORDS * 4}]
    answers = predict(server, *bodies)
    for answer, records in zip(answers, [RECORDS[:1], RECORDS[1:], RECORDS * 4], strict=True):
        got = np.asarray(answer["scores"])
        assert got.shape == (len(records), len(CLASSES))
        np.testing.assert_allclose(got, expected(server, records), rtol=0, atol=1e-6)


def test_predict_gives_a_regression_its_values(servers) -> None:
    server = servers["regr"]
    (answer,) = predict(server, {"events": RECORDS})
    assert list(answer) == ["model", "task", "scores"] and answer["task"] == "regression"
    values = np.asarray(answer["scores"])
    assert values.shape == (len(RECORDS),)
    np.testing.assert_allclose(values, expected(server), rtol=0, atol=1e-6)


def test_a_binary_answer_is_what_it_was(servers) -> None:
    server = servers["bin"]
    body = asyncio.run(server.predict_json({"events": RECORDS}))
    scores = expected(server)
    assert scores.shape == (len(RECORDS),)
    assert body == json.dumps({"model": server.tag, "scores": scores.tolist()}).encode()


# ------------------------------------------------------------------ Arrow, Parquet, JSON


def read_arrow(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def test_predict_arrow_gives_one_column_per_output(servers) -> None:
    body = stream_bytes(arrow_table())
    columns = {"multi": list(CLASSES), "regr": ["value"], "bin": ["score"]}
    for name, server in servers.items():
        with client_of(server) as client:
            answer = client.post("/predict_arrow", content=body,
                                 headers={"Content-Type": ARROW_STREAM})  # fmt: skip
        assert answer.status_code == 200, answer.text
        table = read_arrow(answer.content)
        assert table.column_names == columns[name]
        assert all(t == pa.float32() for t in table.schema.types)
        want = expected(server).reshape(len(RECORDS), -1)
        got = np.column_stack([c.to_numpy() for c in table.columns])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        metadata = table.schema.metadata
        if name == "bin":  # as before tasks: the tag alone
            assert metadata == {b"model": server.tag.encode()}
        else:
            assert metadata == {b"model": server.tag.encode(), b"task": TASKS[name].kind.encode()}


def test_predict_arrow_answers_json_and_parquet_as_predict_does(servers) -> None:
    server = servers["multi"]
    body = stream_bytes(arrow_table())
    with client_of(server) as client:
        as_json = client.post("/predict_arrow", content=body, headers={"Accept": JSON})
        as_parquet = client.post("/predict_arrow", content=body, headers={"Accept": PARQUET})
    (answer,) = predict(server, {"events": RECORDS})
    assert as_json.json() == answer
    table = pq.read_table(io.BytesIO(as_parquet.content))
    assert table.column_names == list(CLASSES)
    assert table.schema.metadata[b"task"] == b"multiclass"
    got = np.column_stack([table.column(c).to_numpy() for c in CLASSES])
    np.testing.assert_allclose(got, expected(server), rtol=0, atol=1e-6)


def test_predict_file_scores_a_root_file_per_class(servers, tmp_path: Path) -> None:
    import awkward as ak
    import uproot

    events = RECORDS * 20
    path = tmp_path / "events.root"
    with uproot.recreate(path) as f:  # nJet is the counter of Jet_pt, as in NanoAOD
        jets = ak.values_astype(ak.Array([r["Jet_pt"] for r in events]), np.float32)
        f["Events"] = {
            "Jet": ak.zip({"pt": jets}),
            "HT": np.array([r["HT"] for r in events], np.float32),
        }
    server = servers["multi"]
    pieces, kind, tag = server.predict_file(path.read_bytes(), ARROW_STREAM)
    table = read_arrow(b"".join(pieces))
    assert (kind, tag, table.column_names) == (ARROW_STREAM, server.tag, list(CLASSES))
    got = np.column_stack([c.to_numpy() for c in table.columns])
    np.testing.assert_allclose(got, expected(server, events), rtol=0, atol=1e-6)
    pieces, kind, _ = server.predict_file(path.read_bytes(), JSON)
    answer = json.loads(b"".join(pieces))
    assert answer["classes"] == list(CLASSES) and np.shape(answer["scores"]) == (60, 3)


@pytest.mark.parametrize("name", ["multi", "regr", "bin"])
def test_streamed_pieces_of_every_task_equal_the_whole_answer(name: str) -> None:
    task = TASKS[name]
    rng = np.random.default_rng(3)
    scores = task.shaped(rng.random((1000, task.outputs), dtype=np.float32))
    whole = json.loads(b"".join(stream_scores(scores, "m:1", JSON, task=task)[0]))
    for piece in (1, 7, 64):
        pieces = list(stream_scores(scores, "m:1", JSON, piece=piece, task=task)[0])
        assert len(pieces) > 3 and json.loads(b"".join(pieces)) == whole
        arrow = list(stream_scores(scores, "m:1", ARROW_STREAM, piece=piece, task=task)[0])
        batches = -(-len(scores) // max(1, 16 * piece // task.outputs))
        assert len(arrow) == batches + 1  # record batches, then the end-of-stream marker
        table = read_arrow(b"".join(arrow))
        assert table.column_names == task.output_names
        got = np.column_stack([c.to_numpy() for c in table.columns])
        np.testing.assert_array_equal(got, scores.reshape(len(scores), -1))
    assert np.asarray(whole["scores"], np.float32).tolist() == scores.tolist()
    empty = task.shaped(np.zeros(0))
    assert json.loads(b"".join(stream_scores(empty, "m:1", JSON, task=task)[0]))["scores"] == []
    assert (
        read_arrow(b"".join(stream_scores(empty, "m:1", ARROW_STREAM, task=task)[0])).num_rows == 0
    )


def test_scores_that_do_not_fit_the_task_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit a multiclass task of 3"):
        stream_scores(np.zeros(4, np.float32), "m:1", JSON, task=TASKS["multi"])
    with pytest.raises(ValueError, match="do not fit a binary task"):
        stream_scores(np.zeros((4, 3), np.float32), "m:1", JSON)


# ------------------------------------------------------------ Open Inference Protocol


def test_the_v2_metadata_gives_the_output_shape_and_the_classes(servers) -> None:
    outputs = {}
    for name, server in servers.items():
        model, _, version = server.tag.partition(":")
        with client_of(server) as client:
            document = client.get(f"/v2/models/{model}/versions/{version}").json()
        outputs[name] = document["outputs"]
    assert outputs["multi"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 3],
                                 "parameters": {"task": "multiclass",
                                                "classes": list(CLASSES)}}]  # fmt: skip
    assert outputs["regr"] == [{"name": "scores", "datatype": "FP32", "shape": [-1],
                                "parameters": {"task": "regression"}}]  # fmt: skip
    assert outputs["bin"] == [{"name": "scores", "datatype": "FP32", "shape": [-1]}]
    assert model_metadata("m:1", VECTORIZER)["outputs"] == outputs["bin"]


def test_v2_inference_gives_n_by_c_scores_as_json_and_binary(servers) -> None:
    server = servers["multi"]
    want = expected(server)
    model = server.tag.partition(":")[0]
    json_request = json_body(raw_tensors())
    binary_request, length = binary_body(raw_tensors(), parameters={"binary_data_output": True})
    with client_of(server) as client:
        answer = client.post(f"/v2/models/{model}/infer", content=json_request)
        raw = client.post(f"/v2/models/{model}/infer", content=binary_request,
                          headers={"Inference-Header-Content-Length": length})  # fmt: skip
    (output,) = answer.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("scores", "FP32", [3, 3])
    assert len(output["data"]) == 9  # flat, row-major
    np.testing.assert_allclose(np.reshape(output["data"], (3, 3)), want, rtol=0, atol=1e-6)
    split_at = int(raw.headers["Inference-Header-Content-Length"])
    (output,) = json.loads(raw.content[:split_at])["outputs"]
    assert output["shape"] == [3, 3] and output["parameters"] == {"binary_data_size": 36}
    got = np.frombuffer(raw.content[split_at:], "<f4").reshape(3, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the features form, and a body too large for the batcher, take the unbatched path
    out = VECTORIZER.transform(from_records(RECORDS, VECTORIZER, 10).columns)
    features, length = binary_body({"features": out.X, "mask": out.mask})
    body, _, _ = server.infer(features, length, model, None)
    (output,) = json.loads(body)["outputs"]
    assert output["shape"] == [3, 3]
    np.testing.assert_allclose(np.reshape(output["data"], (3, 3)), want, rtol=0, atol=1e-6)
    body, _, _ = server.infer(json_request, None, model, None)
    assert json.loads(body)["outputs"][0]["shape"] == [3, 3]


def test_v2_inference_of_a_regression_and_a_binary_model_is_n(servers) -> None:
    for name in ("regr", "bin"):
        server = servers[name]
        model = server.tag.partition(":")[0]
        with client_of(server) as client:
            answer = client.post(f"/v2/models/{model}/infer", content=json_body(raw_tensors()))
        (output,) = answer.json()["outputs"]
        assert output["shape"] == [3] and "parameters" not in output
        np.testing.assert_allclose(output["data"], expected(server), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def loopback(servers) -> Iterator[str]:
    """The app of the multiclass server on a loopback port (uvicorn in a thread)."""
    uvicorn = pytest.importorskip("uvicorn")
    from mlaas4hep.serve.http_api import build_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(build_app(lambda: servers["multi"]), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the loopback server did not start"
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_the_triton_client_reads_the_classes_and_n_by_c_scores(servers, loopback, binary) -> None:
    http = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import np_to_triton_dtype

    server = servers["multi"]
    model, _, version = server.tag.partition(":")
    client = http.InferenceServerClient(url=loopback)
    try:
        metadata = client.get_model_metadata(model, version)
        (output,) = metadata["outputs"]
        assert output["shape"] == [-1, 3] and output["parameters"]["classes"] == list(CLASSES)
        inputs = []
        for tensor_name, array in raw_tensors().items():
            tensor = http.InferInput(
                tensor_name, list(array.shape), np_to_triton_dtype(array.dtype)
            )
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        wanted = http.InferRequestedOutput("scores", binary_data=binary)
        result = client.infer(model, inputs, outputs=[wanted], model_version=version)
    finally:
        client.close()
    scores = result.as_numpy("scores")
    assert scores.shape == (3, 3) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected(server), rtol=0, atol=1e-6)


def test_the_python_client_reads_every_task(servers, loopback, monkeypatch) -> None:
    """:class:`~mlaas4hep.serve.client.Client`: the Arrow answer's columns become ``[n, C]``
    with the class names; a JSON answer of each task is read as the server wrote it."""
    import awkward as ak

    from mlaas4hep.serve.client import Client

    server = servers["multi"]
    events = {
        "nJet": np.array([r["nJet"] for r in RECORDS], np.int32),
        "Jet_pt": ak.values_astype(ak.Array([r["Jet_pt"] for r in RECORDS]), np.float32),
        "HT": np.array([r["HT"] for r in RECORDS], np.float32),
    }
    client = Client(f"http://{loopback}")
    prediction = client.predict(events)
    assert (prediction.model, prediction.task, prediction.outputs) == (
        server.tag, "multiclass", list(CLASSES),
    )  # fmt: skip
    np.testing.assert_allclose(prediction.scores, expected(server), rtol=0, atol=1e-6)
    for name, shape, outputs in [("multi", (3, 3), list(CLASSES)), ("regr", (3,), ["value"]),
                                 ("bin", (3,), ["score"])]:  # fmt: skip
        (answer,) = predict(servers[name], {"events": RECORDS})
        monkeypatch.setattr(Client, "_json", lambda self, *args, answer=answer, **kw: answer)
        got = client.predict(RECORDS)
        assert (got.scores.shape, got.outputs, got.task) == (shape, outputs, TASKS[name].kind)
        np.testing.assert_allclose(got.scores, expected(servers[name]), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ card and page


def test_the_card_shows_the_task_its_metrics_and_every_plot(servers) -> None:
    server = servers["multi"]
    card = server.registry.card(server.tag)
    task = card["task"]
    assert (task["kind"], task["classes"], task["outputs"]) == ("multiclass", list(CLASSES),
                                                                list(CLASSES))  # fmt: skip
    assert set(task["metrics"]["auc_per_class"]) == set(CLASSES)
    assert np.shape(task["metrics"]["confusion"]) == (3, 3)
    assert card["plots"] == sorted(PLOTS["multi"])  # the PNGs there are, not notes.txt
    assert card["model"]["architecture"] == "default (dense 128 → 64 → 3)"
    page = card_page(card)
    for name in (*CLASSES, "confusion.png", "roc.png", "Confusion matrix", "one vs rest"):
        assert name in page, name
    auc = task["metrics"]["auc_per_class"]["ttbb"]
    assert f"{auc:.4g}" in page
    assert page.index("roc.png") < page.index("confusion.png") < page.index("loss.png")
    with client_of(server) as client:
        html = client.get(f"/ui/models/{server.tag}")
        plot = client.get(f"/ui/models/{server.tag}/plots/confusion.png")
    assert html.status_code == 200 and "ttcc" in html.text
    assert plot.status_code == 200 and plot.content == PNG


def test_a_regression_card_shows_the_residual_metrics(servers) -> None:
    server = servers["regr"]
    card = server.registry.card(server.tag)
    task = card["task"]
    assert task["kind"] == "regression" and task["outputs"] == ["value"]
    assert {"rmse", "bias", "mae", "resolution"} <= set(task["metrics"])
    assert task["target"] == {"offset": 5.0, "scale": 2.0}
    assert "roc_auc" not in card["metrics"]
    page = card_page(card)
    assert "Task: regression" in page and "residuals.png" in page
    assert f"{task['metrics']['rmse']:.4g}" in page and "in the target's units" in page
    binary = servers["bin"].registry.card(servers["bin"].tag)
    assert binary["task"]["kind"] == "binary" and binary["metrics"]["roc_auc"] is not None
    listed = {m["tag"]: m["task"] for m in server.registry.list()}
    assert sorted(listed.values()) == ["binary", "multiclass", "regression"]


def test_class_names_and_task_metrics_on_the_page_are_escaped() -> None:
    hostile = "<script>alert(1)</script>"
    classes = [hostile, "b'><img src=x onerror=alert(1)>"]
    card = {
        "tag": "m:1",
        "task": {"kind": "multiclass", "classes": classes, "outputs": classes, "loss": hostile,
                 "metrics": {"auc_per_class": {hostile: 0.7}, "confusion": [[hostile, 1], [0, 1]],
                             "accuracy": hostile}},
        "plots": [f"{hostile}.png", "confusion.png"],
    }  # fmt: skip
    page = card_page(card)
    assert hostile not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    bad = card_page({"tag": "m:1", "task": {"kind": None, "error": hostile}})
    assert hostile not in bad and "unreadable" in bad
    ragged = {**card, "task": {**card["task"], "metrics": {"confusion": [[1, 2, 3]]}}}
    assert hostile not in card_page(ragged)
