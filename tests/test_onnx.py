"""ONNX in every bundle: exports of Keras and PyTorch models (default or the user's),
checked against the framework, and served in safe mode without the model's code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlaas4hep.errors import ConfigError
from mlaas4hep.model.architectures import build_model
from mlaas4hep.model.frameworks import predict_arrays
from mlaas4hep.model.onnx_graph import ExportError, OnnxForward, check_graph, export_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
F = 12
USER_TORCH = """
import torch
framework = "torch"
with_mask = True

class Net(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.norm = torch.nn.LayerNorm(n)
        self.a = torch.nn.Linear(n, 24)
        self.b = torch.nn.Linear(24, 1)

    def forward(self, x):
        h = self.norm(x["features"]) * x["mask"].float()
        return torch.sigmoid(self.b(torch.tanh(self.a(h)))).squeeze(-1)

def build_model(n_features):
    return Net(n_features)
"""


USER_TORCH_CNN = """
import torch
framework = "torch"

class Net(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv1d(1, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.MaxPool1d(2, ceil_mode=True), torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(8 * ((n + 1) // 2), 1)

    def forward(self, x):
        return torch.sigmoid(self.head(self.conv(x.unsqueeze(1)))).squeeze(-1)

def build_model(n_features):
    return Net(n_features)
"""
USER_KERAS_WIDE = (
    Path(__file__).resolve().parents[1] / "scripts" / "bench" / "wide_mlp.py"
).read_text()


def user_bundle(code: str, directory: Path, framework: str = "torch"):
    """A bundle of a user's model (untrained) saved with its ONNX export, and events."""
    from test_events import RECORDS, VECTORIZER

    from mlaas4hep.model.architectures import wants_mask
    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.serve.payloads import from_records
    from mlaas4hep.spec.documents import DatasetSpec

    n = VECTORIZER.n_features
    with_mask = wants_mask(code, False)
    model = build_model(code, framework, n, with_mask)
    if framework == "torch":
        model.eval()
    bundle = ModelBundle(framework, VECTORIZER, DatasetSpec(), with_mask=with_mask,
                         model_code=code, model=model, lineage={"run_name": "user"})  # fmt: skip
    rng = np.random.default_rng(5)
    X, mask = rng.random((400, n), dtype=np.float32), rng.random((400, n)) > 0.2
    bundle.reference = {"X": X[:32], "mask": mask[:32],
                        "scores": bundle.predict_vectorized(X[:32], mask[:32])}  # fmt: skip
    bundle.onnx_check = (X, mask)
    bundle.save(directory)
    return bundle, from_records(RECORDS * 50, VECTORIZER, 1000)


def rows(n: int = 300, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, F)).astype(np.float32), rng.random((n, F)) > 0.3


@pytest.mark.parametrize("with_mask", [False, True])
def test_the_default_torch_model_exports_and_agrees(tmp_path: Path, with_mask: bool) -> None:
    pytest.importorskip("torch")
    model = build_model(None, "torch", F, with_mask)
    X, mask = rows()
    record = export_model(model, "torch", with_mask, tmp_path, X, mask)
    assert record["max_abs_diff"] <= 1e-5 and record["checked_rows"] == len(X)
    assert record["inputs"] == (["features", "mask"] if with_mask else ["features"])
    assert record["opset"] == 17 and record["converter"].startswith("torch.onnx")
    forward = OnnxForward((tmp_path / "model.onnx").read_bytes(), F, with_mask, "test")
    other_X, other_mask = rows(5000, seed=2)  # rows it was not checked on
    np.testing.assert_allclose(
        forward(other_X, other_mask),
        predict_arrays(model, "torch", other_X, other_mask, with_mask),
        rtol=0,
        atol=1e-5,
    )


def test_bulk_blocks_run_in_their_own_session_with_the_same_scores(tmp_path: Path) -> None:
    """``bulk_threads``: blocks of a bulk request run in a second, multi-threaded session
    (no spinning threads); one-event requests keep the one-thread session; the scores
    are the same."""
    pytest.importorskip("torch")
    from mlaas4hep.model.onnx_graph import BULK_ROWS

    model = build_model(None, "torch", F, False)
    X, mask = rows()
    export_model(model, "torch", False, tmp_path, X, mask)
    data = (tmp_path / "model.onnx").read_bytes()
    single = OnnxForward(data, F, False, "test")
    bulk = OnnxForward(data, F, False, "test", bulk_threads=2)
    assert single.bulk is None and bulk.bulk is not None
    big_X, big_mask = rows(BULK_ROWS + 3, seed=4)
    np.testing.assert_allclose(bulk(big_X, big_mask), single(big_X, big_mask), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(bulk(X[:1], mask[:1]), single(X[:1], mask[:1]))


def test_a_keras_model_exports_and_agrees(tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx")
    model = build_model(None, "tensorflow", F, True)
    X, mask = rows()
    record = export_model(model, "tensorflow", True, tmp_path, X, mask)
    assert record["max_abs_diff"] <= 1e-5 and record["converter"].startswith("tf2onnx")


def test_a_user_model_is_served_from_its_graph_without_running_its_code(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from mlaas4hep.serve.predictor import Predictor

    bundle, events = user_bundle(USER_TORCH, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert manifest["model"] == "model.py" and manifest["onnx"]["file"] == "model.onnx"
    predictor = Predictor.load(tmp_path / "bundle", "user:1", trust_user_code=False)
    assert predictor.mode == "onnx"
    np.testing.assert_allclose(
        predictor.score(events), bundle.predict(events.columns), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize(
    ("code", "framework"), [(USER_TORCH_CNN, "torch"), (USER_KERAS_WIDE, "tensorflow")]
)
def test_a_user_cnn_and_a_wide_mlp_are_served_from_their_graphs(
    tmp_path: Path, code: str, framework: str
) -> None:
    """Architectures unlike the default one (a 1-D CNN in torch, a 512-512-256 MLP in
    Keras): exported within 1e-5 and scored by ONNX Runtime in safe mode."""
    pytest.importorskip("torch" if framework == "torch" else "tf2onnx")
    from mlaas4hep.serve.predictor import Predictor

    bundle, events = user_bundle(code, tmp_path / "bundle", framework)
    assert bundle.onnx is not None and bundle.onnx["max_abs_diff"] <= 1e-5
    predictor = Predictor.load(tmp_path / "bundle", "user:1", trust_user_code=False)
    assert predictor.mode == "onnx"
    np.testing.assert_allclose(
        predictor.score(events), bundle.predict(events.columns), rtol=0, atol=1e-5
    )


def test_the_engine_setting_chooses_what_scores(tmp_path: Path) -> None:
    """``engine``: auto and onnx score the graph, numpy the default model's weights (the
    same scores within 1e-5); an engine that cannot score a bundle refuses it by name."""
    pytest.importorskip("torch")
    from mlaas4hep.serve.predictor import Predictor

    _, events = user_bundle(None, tmp_path / "default")
    loaded = {
        e: Predictor.load(tmp_path / "default", "d:1", engine=e) for e in ("auto", "onnx", "numpy")
    }
    assert {e: p.mode for e, p in loaded.items()} == {
        "auto": "onnx",
        "onnx": "onnx",
        "numpy": "numpy",
    }
    np.testing.assert_allclose(
        loaded["numpy"].score(events), loaded["onnx"].score(events), rtol=0, atol=1e-5
    )
    user_bundle(USER_TORCH, tmp_path / "user")
    with pytest.raises(ConfigError, match="engine 'numpy' scores only the default dense model"):
        Predictor.load(tmp_path / "user", "u:1", engine="numpy")


def test_an_export_that_fails_or_disagrees_fails_in_one_line(tmp_path: Path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")

    class Constant(torch.nn.Module):  # numpy inside: traced into a constant
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(F, 1)

        def forward(self, x):
            return torch.from_numpy(self.a(x).detach().numpy() * 2.0).sigmoid().squeeze(-1)

    class Spectral(torch.nn.Module):  # an operator ONNX does not have
        def forward(self, x):
            return torch.fft.rfft(x).abs().sum(-1).sigmoid()

    X, mask = rows()
    for model, problem in [(Constant(), "not usable: model.onnx takes inputs []"),
                           (Spectral(), "could not be exported to ONNX")]:  # fmt: skip
        with pytest.raises(ExportError) as caught:
            export_model(model, "torch", False, tmp_path, X, mask)
        assert problem in str(caught.value) and "\n" not in str(caught.value), caught.value
    import mlaas4hep.model.onnx_graph as graphs

    model = build_model(None, "torch", F, False)
    real = graphs.predict_arrays
    monkeypatch.setattr(graphs, "predict_arrays", lambda *a: real(*a) + 1e-3)
    with pytest.raises(ExportError, match=r"disagrees with it by 0\.001 on 300 held-out"):
        export_model(model, "torch", False, tmp_path, X, mask)


def graph(inputs, nodes, initializers=(), opsets=(("", 17),)) -> bytes:
    from onnx import helper

    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            inputs,
            [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["n", 1])],
            initializer=list(initializers),
        ),
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
    )
    return model.SerializeToString()


def features(n: int = F, kind=None):
    from onnx import helper

    return helper.make_tensor_value_info("features", kind or onnx.TensorProto.FLOAT, ["n", n])


def test_graphs_serving_must_not_load_are_refused() -> None:
    from onnx import helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((F, 1), np.float32), "w")
    good = graph([features()], [helper.make_node("MatMul", ["features", "w"], ["scores"])],
                 [weights])  # fmt: skip
    check_graph(good, F, False, "ok")
    custom = graph([features()], [helper.make_node("Evil", ["features"], ["scores"],
                                                   domain="com.evil")],
                   opsets=[("", 17), ("com.evil", 1)])  # fmt: skip
    with pytest.raises(ConfigError, match="com.evil"):
        check_graph(custom, F, False, "custom")
    outside = numpy_helper.from_array(np.ones((F, 1), np.float32), "w")
    outside.data_location = onnx.TensorProto.EXTERNAL
    entry = outside.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    outside.ClearField("raw_data")
    external = graph([features()], [helper.make_node("MatMul", ["features", "w"], ["scores"])],
                     [outside])  # fmt: skip
    with pytest.raises(ConfigError, match="outside the file"):
        check_graph(external, F, False, "external")
    with pytest.raises(ConfigError, match=r"not \[n, 13\]"):
        check_graph(good, F + 1, False, "width")
    with pytest.raises(
        ConfigError, match=r"takes inputs \['features'\], not \['features', 'mask'\]"
    ):
        check_graph(good, F, True, "mask")
    with pytest.raises(ConfigError, match="is not an ONNX model"):
        check_graph(b"\x00not a model", F, False, "junk")
