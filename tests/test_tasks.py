"""Tasks beyond binary: multiclass and regression, from the config through training,
the ONNX export and the bundle to the served scores; and the task's losses and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep.errors import ConfigError
from mlaas4hep.local.samples import make_tth_dataset
from mlaas4hep.model.metrics import auc
from mlaas4hep.model.tasks import Task, class_indices, confusion_matrix, huber
from mlaas4hep.training.config import TrainConfig

CLASSES = ("ttH", "ttbb", "other")
#: three classes of the ttH-like sample: the signal, the b-rich backgrounds, the rest
MULTICLASS_LABELS = {"ttH_signal.root": "ttH", "ttb*_bkg.root": "ttbb", "*": "other"}


@pytest.fixture(scope="module")
def tth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tth_tasks")
    make_tth_dataset(out, n_events=9000, seed=5, block_size=3000, signal_fraction=0.3)
    return out


def config(files: list[str], task: str, **dataset: object) -> dict:
    return {
        "task": task,
        "dataset": {
            "files": files,
            "include": ["Jet_pt", "Jet_btagDeepB", "nJet", "HT"],
            **dataset,
        },
        "vectorizer": {"padding": 6},
        "training": {"epochs": 2, "chunk_size": 3000, "batch_size": 64},
        "scaling": {"num_workers": 2},
    }


# ------------------------------------------------------------------------------ config


def test_class_names_become_indices_in_their_order(tth: Path) -> None:
    c = TrainConfig.from_dict(config([str(tth)], "multiclass", labels=MULTICLASS_LABELS))
    assert c.task_of().classes == CLASSES
    assert c.numeric_labels() == {"ttH_signal.root": 0.0, "ttb*_bkg.root": 1.0, "*": 2.0}
    fixed = config([str(tth)], "multiclass", labels=MULTICLASS_LABELS)
    fixed["dataset"]["classes"] = ["other", "ttbb", "ttH"]
    assert TrainConfig.from_dict(fixed).numeric_labels()["ttH_signal.root"] == 2.0


@pytest.mark.parametrize(
    ("task", "dataset", "message"),
    [
        ("binary", {"labels": {"*": "ttH"}}, "set task: multiclass"),
        ("multiclass", {"labels": {"a*": "x", "*": "x"}}, "two or more distinct classes"),
        ("multiclass", {"labels": {"a*": 0, "*": 1}}, "name the classes in dataset.classes"),
        ("multiclass", {"labels": {"*": 3}, "classes": ["a", "b"]}, "not a class index 0..1"),
        ("multiclass", {"labels": {"*": "c"}, "classes": ["a", "b"]}, "'c' is not in"),
        ("multiclass", {"label": "nJet"}, "name the classes"),
        ("regression", {"labels": {"*": 1}}, "give the target as dataset.label"),
        ("regression", {"label": "HT", "classes": ["a", "b"]}, "belongs to task multiclass"),
        ("ranking", {"label": "HT"}, "task must be one of binary, multiclass, regression"),
    ],
)
def test_task_config_errors_name_the_key(tth: Path, task: str, dataset: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(config([str(tth)], task, **dataset))


def test_a_loss_must_fit_the_task(tth: Path) -> None:
    data = config([str(tth)], "regression", label="HT")
    data["training"]["loss"] = "cce"
    with pytest.raises(ConfigError, match="training.loss 'cce' does not fit task regression"):
        TrainConfig.from_dict(data)
    data["training"]["loss"] = "huber"
    assert TrainConfig.from_dict(data).task_of().loss == "huber"


def test_a_manifest_task_is_checked() -> None:
    assert Task.from_dict(None) == Task()
    for bad in ({"kind": "multiclass", "classes": ["a"]}, {"kind": "x"}, {"scale": -1, "kind":
                "regression", "loss": "mse"}, {"kind": "binary", "colour": 1}):  # fmt: skip
        with pytest.raises(ConfigError):
            Task.from_dict(bad)
    task = Task("regression", loss="huber", offset=3.0, scale=2.0, delta=0.5)
    assert Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task


# ------------------------------------------------------------------- losses and metrics


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 2), min_size=n, max_size=n),
            st.lists(st.floats(-5, 5), min_size=3 * n, max_size=3 * n),
            st.lists(st.floats(0.1, 3), min_size=n, max_size=n),
        )
    )
)
def test_multiclass_loss_and_confusion_by_hand(data: tuple) -> None:
    labels, logits, weights = (np.asarray(d, dtype=np.float64) for d in data)
    n = len(labels)
    p = np.exp(logits.reshape(n, 3))
    p /= p.sum(axis=1, keepdims=True)
    task = Task("multiclass", CLASSES, "cce")
    y = labels.astype(int)
    expected = np.mean(-np.log(np.clip(p[np.arange(n), y], 1e-7, 1)) * weights)
    assert task.loss_value(labels, p, weights) == pytest.approx(expected, rel=1e-9)
    matrix = np.asarray(confusion_matrix(y, p.argmax(axis=1), 3, weights))
    for c in range(3):  # each true class's row: its weighted share of each prediction
        chosen = y == c
        if chosen.any():
            assert matrix[c].sum() == pytest.approx(1.0)
            share = weights[chosen & (p.argmax(axis=1) == 0)].sum() / weights[chosen].sum()
            assert matrix[c, 0] == pytest.approx(share)
        else:
            assert matrix[c].sum() == 0


def test_multiclass_metrics_are_one_vs_rest() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 3000).astype(np.float64)
    p = rng.dirichlet([1, 1, 1], 3000)
    p[np.arange(3000), y.astype(int)] += 0.5  # informative
    p /= p.sum(axis=1, keepdims=True)
    w = rng.uniform(0.5, 2, 3000)
    found = Task("multiclass", CLASSES, "cce").metrics(y, p, w)
    for c, name in enumerate(CLASSES):
        assert found["auc_per_class"][name] == pytest.approx(auc(y == c, p[:, c], w))
    assert found["auc"] == pytest.approx(np.mean(list(found["auc_per_class"].values())))
    right = p.argmax(axis=1) == y
    assert found["accuracy"] == pytest.approx(np.sum(w * right) / np.sum(w))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-100, 100), min_size=1, max_size=50),
    st.floats(0.1, 10),
    st.floats(0.1, 3),
)
def test_regression_losses_in_units_of_the_spread(
    residuals: list[float], scale: float, delta: float
) -> None:
    r = np.asarray(residuals)
    y = np.linspace(1, 2, len(r))
    mse = Task("regression", loss="mse", scale=scale)
    assert mse.loss_value(y, y + r) == pytest.approx(np.mean((r / scale) ** 2), rel=1e-9)
    hub = Task("regression", loss="huber", scale=scale, delta=delta)
    a = np.abs(r) / scale
    by_hand = np.where(a <= delta, 0.5 * a**2, delta * (a - 0.5 * delta))
    assert hub.loss_value(y, y + r) == pytest.approx(np.mean(by_hand), rel=1e-9)
    assert np.allclose(huber(a, delta), by_hand)


def test_regression_metrics_and_target_scale() -> None:
    rng = np.random.default_rng(2)
    y = rng.uniform(20, 200, 20_000)
    p = y * (1 + rng.normal(0.02, 0.1, y.size))
    found = Task("regression", loss="mse").metrics(y, p)
    assert found["bias"] == pytest.approx(np.mean(p - y))
    assert found["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)))
    assert found["resolution"] == pytest.approx(0.1, rel=0.05)
    task = Task("regression", loss="mse").with_target(np.r_[y, np.nan])
    assert task.offset == pytest.approx(y.mean()) and task.scale == pytest.approx(y.std())
    with pytest.raises(ConfigError, match="no finite value"):
        Task("regression", loss="mse").with_target(np.array([np.nan]))


def test_class_indices_refuse_what_is_not_a_class() -> None:
    assert class_indices(np.array([0.0, 2.0]), 3).tolist() == [0, 2]
    for bad in (3.0, -1.0, 0.5):
        with pytest.raises(ValueError, match="not a class index"):
            class_indices(np.array([bad]), 3)


# -------------------------------------------------------------- trained, bundled, served


def _run(data: dict, tmp_path: Path, framework: str, name: str) -> dict:
    from mlaas4hep.training.local import run_local

    data["framework"] = framework
    data["output"] = {"location": str(tmp_path / "out"), "name": name, "bentoml_store": False}
    return run_local(TrainConfig.from_dict(data), log=lambda _: None)


def _raw_events(tth: Path, branches: list[str], n: int = 400) -> dict:
    from mlaas4hep.io.tree import open_tree

    with open_tree(tth / "ttbb_bkg.root") as tree:
        events = tree.arrays(branches, entry_stop=n)
    return {name: events[name] for name in branches}


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_multiclass_trains_bundles_and_serves_probabilities_per_class(
    tth: Path, tmp_path: Path, framework: str
) -> None:
    """Three classes (ttH / ttbb / other): softmax model, per-class AUC and confusion
    matrix in the bundle's metrics, plots, an ONNX graph with three outputs, and the
    served probabilities (ONNX Runtime and the numpy pass) equal to the framework's."""
    pytest.importorskip("torch" if framework == "torch" else "tf_keras")
    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.serve.payloads import EventColumns
    from mlaas4hep.serve.predictor import Predictor

    data = config([str(tth)], "multiclass", labels=MULTICLASS_LABELS)
    if framework == "torch":  # weighted events: the weights enter the losses and metrics
        data["dataset"]["weight"] = "HT / 100"
    summary = _run(data, tmp_path, framework, "multi")
    assert summary["task"] == "multiclass"
    path = Path(summary["bundle"]["output"])
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["task"]["kind"] == "multiclass" and manifest["outputs"] == list(CLASSES)
    assert manifest["onnx"]["outputs"] == 3 and manifest["onnx"]["max_abs_diff"] <= 1e-5
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics["test_auc_per_class"]) == set(CLASSES)
    assert metrics["test_auc_per_class"]["ttH"] > 0.6  # the signal is separable
    assert np.allclose(np.sum(metrics["test_confusion"], axis=1), 1)
    assert {"val_loss", "val_auc", "val_accuracy", "accuracy"} <= set(metrics["history"][-1])
    assert {"roc.png", "confusion.png", "loss.png", "features.png"} <= {
        p.name for p in (path / "plots").iterdir()
    }
    bundle = ModelBundle.load(path)
    assert bundle.task.classes == CLASSES
    columns = _raw_events(tth, bundle.vectorizer.branches)
    out = bundle.vectorizer(columns)
    expected = bundle.predict_vectorized(out.X, out.mask)
    assert expected.shape == (len(out.X), 3)
    np.testing.assert_allclose(expected.sum(axis=1), 1, rtol=1e-5)
    for engine in ("onnx", "numpy"):
        served = Predictor.load(path, "multi:1", engine=engine)
        assert served.mode == engine and served.describe()["outputs"] == list(CLASSES)
        scores = served.score(EventColumns(columns, len(out.X)))
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("framework", "loss"), [("torch", "mse"), ("tensorflow", "huber")])
def test_regression_of_the_leading_jet_pt_from_the_other_branches(
    tth: Path, tmp_path: Path, framework: str, loss: str
) -> None:
    """The leading jet's pT regressed from the other branches (Jet_pt itself left out):
    the output is in GeV (the model starts at the target's mean), better than the mean,
    with the residual plot and the resolution in the card; served values equal the
    framework's."""
    pytest.importorskip("torch" if framework == "torch" else "tf_keras")
    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.serve.payloads import EventColumns
    from mlaas4hep.serve.predictor import Predictor

    data = config([str(tth)], "regression", label="Jet_pt[0]", cut="nJet >= 1")
    data["dataset"]["include"] = ["Jet_eta", "Jet_btagDeepB", "Jet_mass", "nJet", "HT"]
    data["training"]["loss"] = loss
    summary = _run(data, tmp_path, framework, "regr")
    assert summary["task"] == "regression"
    path = Path(summary["bundle"]["output"])
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["task"]["kind"] == "regression" and manifest["outputs"] == ["value"]
    assert manifest["task"]["offset"] > 20 and manifest["task"]["scale"] > 1  # GeV
    metrics = json.loads((path / "metrics.json").read_text())
    assert {"test_rmse", "test_bias", "test_mae", "test_resolution"} <= set(metrics)
    assert "val_rmse" in metrics["history"][-1] and "mae" in metrics["history"][-1]
    # better than predicting the mean: HT and the jet masses carry the leading jet's pT
    assert metrics["test_rmse"] < 0.9 * manifest["task"]["scale"]
    assert (path / "plots" / "residuals.png").stat().st_size > 0
    bundle = ModelBundle.load(path)
    columns = _raw_events(tth, bundle.vectorizer.branches)
    out = bundle.vectorizer(columns)
    expected = bundle.predict_vectorized(out.X, out.mask)
    assert expected.shape == (len(out.X),) and np.median(expected) > 20
    for engine in ("onnx", "numpy"):
        served = Predictor.load(path, "regr:1", engine=engine)
        scores = served.score(EventColumns(columns, len(out.X)))
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-3)


def test_a_user_model_is_given_the_classes_and_checked_before_training(tmp_path: Path) -> None:
    """``build_model(n_features, n_outputs)`` gets the number of classes; a model whose
    output width does not fit the task is refused by name before any step."""
    pytest.importorskip("torch")
    from mlaas4hep.model.architectures import build_model

    code = (
        "import torch\n"
        "def build_model(n_features, n_outputs):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(n_features, n_outputs),\n"
        "                               torch.nn.Softmax(dim=-1))\n"
    )
    task = Task("multiclass", CLASSES, "cce")
    model = build_model(code, "torch", 5, False, task=task)
    assert model[0].out_features == 3
    fixed = (
        "import torch\ndef build_model(n_features):\n    return torch.nn.Linear(n_features, 1)\n"
    )
    with pytest.raises(ConfigError, match="gives 1 value.* per event; task multiclass needs 3"):
        build_model(fixed, "torch", 5, False, task=task)
    assert build_model(fixed, "torch", 5, False).out_features == 1  # binary: fits
