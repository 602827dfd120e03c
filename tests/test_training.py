"""Training without Ray: the config is validated, data errors come before training, the
step plan agrees across workers, AUC is right, and a bundle predicts the same after
loading."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlaas4hep.errors import BranchError, ConfigError, ReadError
from mlaas4hep.local.samples import make_tth_dataset
from mlaas4hep.model.metrics import auc, roc_curve
from mlaas4hep.training.config import TrainConfig


@pytest.fixture(scope="module")
def tth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tth")
    make_tth_dataset(out, n_events=6000, seed=3, block_size=2000)
    return out


def config(files: list[str], **overrides: object) -> dict:
    data: dict = {
        "dataset": {
            "files": files,
            "labels": {"ttH_signal.root": 1, "*": 0},
            "include": ["Jet_pt", "Jet_btagDeepB", "nJet", "HT"],
        },
        "vectorizer": {"padding": 6},
        "training": {"epochs": 1, "chunk_size": 2000, "batch_size": 64},
        "scaling": {"num_workers": 2},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return data


def test_config_typo_names_the_key_and_a_suggestion(tth: Path) -> None:
    data = config([str(tth)])
    data["training"]["epoch"] = 3
    with pytest.raises(ConfigError, match=r"unknown key training\.'epoch'.*did you mean 'epochs'"):
        TrainConfig.from_dict(data)
    with pytest.raises(ConfigError, match="unknown key 'modle'.*'model'"):
        TrainConfig.from_dict({**config([str(tth)]), "modle": "default"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("training__batch_size", "big", "training.batch_size must be int"),
        ("training__mode", "perchunk", "did you mean 'per_chunk'"),
        ("scaling__num_workers", 0, "num_workers must be >= 1"),
        ("scaling__trainer", "raytrain", "did you mean 'ray_train'"),
        ("scaling__trainer", "actor", "trainer actor runs one worker, not 2"),
        ("framework", "jax", "framework must be one of"),
        ("staging__enabled", True, "staging.cache"),
        ("staging__mode", "whilst", "did you mean 'while'"),
        ("training__prefetch_batches", -1, "prefetch_batches must be >= 0"),
        ("model", "model.txt", "build_model"),
        ("vectorizer__normalization", "robst", "did you mean 'robust'"),
        ("vectorizer__clip", ["p1"], "vectorizer.clip: two quantiles"),
        ("vectorizer__robust_clip", 0, "robust_clip must be > 0"),
        ("training__precision", "half", "training.precision must be one of 32, bf16, fp16"),
        ("vectorizer__representation", "matrix", "representation must be one of vector, image"),
        ("vectorizer__x", "Jet_eta", "vectorizer.x belongs to the image representation"),
        ("vectorizer__bins", [32, 32.5], "vectorizer.bins must be list"),
        ("vectorizer__range", [[0, 1], "x"], "vectorizer.range must be list"),
    ],
)
def test_config_values_are_checked(tth: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(config([str(tth)], **{key: value}))


def test_config_from_yaml_and_defaults(tmp_path: Path, tth: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(f"dataset:\n  files: [{tth}]\n  label: 'nJet >= 6'\noutput:\n  name: tth\n")
    cfg = TrainConfig.from_yaml(path)
    assert cfg.training.mode == "standard" and cfg.scaling.use_gpu is False
    assert cfg.worker_chunk_size == cfg.training.chunk_size // 2
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_missing_file_fails_before_training(tth: Path) -> None:
    from mlaas4hep.training.job import prepare

    files = [str(tth / "ttH_signal.root"), str(tth / "no_such_file.root")]
    with pytest.raises(ReadError, match="no_such_file.root"):
        prepare(TrainConfig.from_dict(config(files)))


def test_branch_absent_from_spec_fails_before_training(tth: Path) -> None:
    from mlaas4hep.training.job import prepare

    data = config([str(tth)])
    data["dataset"]["include"] = ["Jet_pt", "Jet_ptt"]
    with pytest.raises(BranchError, match="Jet_ptt"):
        prepare(TrainConfig.from_dict(data))


def test_train_script_exits_2_with_a_one_line_error(tth: Path, tmp_path: Path, capsys) -> None:
    import yaml

    from ray_jobs.train import main

    data = config([str(tth / "ttH_signal.root"), str(tth / "gone.root")])
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path)]) == 2
    assert "gone.root" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["standard", "per_chunk"])
@pytest.mark.parametrize("cut", [None, "nJet >= 5"])
def test_plan_gives_every_worker_the_same_full_batches(tth: Path, mode: str, cut: str) -> None:
    from mlaas4hep.training.job import prepare
    from mlaas4hep.training.plan import exact_batches, shard_counts

    cfg = TrainConfig.from_dict(config([str(tth)], training__mode=mode, dataset__cut=cut))
    job = prepare(cfg)
    counts = shard_counts(job.streams["train"], 2)
    # The split hashes each file's URL (a temporary path here), so which events pass the
    # cut in each shard changes from run to run: the shards agree to a few per cent
    # (1873 against 1923 in one run), the batches below exactly.
    assert abs(sum(counts[0]) - sum(counts[1])) <= 0.04 * (sum(counts[0]) + sum(counts[1]))
    steps = job.plan.steps_per_epoch if mode == "standard" else job.plan.steps_per_chunk[0]
    assert steps > 0
    for rank in range(2):
        shard = job.streams["train"].shard(rank, 2)
        batches = list(exact_batches(shard, 64, 0, steps + 3))  # wraps around if short
        assert len(batches) == steps + 3 and all(len(b) == 64 for b in batches)


def test_auc_matches_the_rank_statistic() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.3
    s = rng.normal(size=2000) + y
    pos, neg = s[y], s[~y]
    expected = np.mean(pos[:, None] > neg[None, :])
    assert auc(y, s) == pytest.approx(expected, abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    with pytest.raises(ValueError, match="both signal and background"):
        auc(np.ones(3), np.arange(3))


def test_auc_with_ties_counts_half() -> None:
    y = np.array([1, 0, 1, 0])
    s = np.array([0.5, 0.5, 0.9, 0.1])
    assert auc(y, s) == pytest.approx(0.875)


def test_bundle_round_trip_predicts_the_same(tth: Path, tmp_path: Path) -> None:
    pytest.importorskip("tf_keras")
    from mlaas4hep.model import architectures as models
    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.spec.compute import compute_dataset_spec
    from mlaas4hep.transform.vectorizer import Vectorizer

    spec = compute_dataset_spec([str(tth)]).dataset
    vectorizer = Vectorizer(spec, ["Jet_pt", "nJet"], padding=4)
    model = models.default_keras_model(vectorizer.n_features)
    bundle = ModelBundle("tensorflow", vectorizer, spec, model=model, lineage={"run_name": "t"})
    import uproot

    with uproot.open(tth / "ttH_signal.root") as f:
        events = f["Events"].arrays(["Jet_pt", "nJet"], entry_stop=100)
    before = bundle.predict(events)
    bundle.save(tmp_path / "bundle")
    loaded = ModelBundle.load(tmp_path / "bundle")
    np.testing.assert_allclose(loaded.predict(events), before, rtol=1e-6)
    assert loaded.vectorizer.to_dict() == vectorizer.to_dict()
    with pytest.raises(ConfigError, match="not a model bundle"):
        ModelBundle.load(tmp_path)


# ----------------------------------------------------------- worker loops without Ray


def loop_config(tth: Path, framework: str, run: str, **training: object) -> dict:
    """The worker config of a one-worker job on the small sample."""
    from mlaas4hep.training.job import prepare, worker_config

    data = config([str(tth)], framework=framework, scaling={"num_workers": 1})
    data["dataset"]["include"] = ["Jet_pt", "nJet", "HT"]
    data["training"].update({"epochs": 3, "chunk_size": 2000, **training})
    data["output"] = {"location": "unused", "run_name": run}
    return worker_config(prepare(TrainConfig.from_dict(data)))


def run_loop(framework: str, cfg: dict, session, device: str = "cpu") -> dict:
    if framework == "torch":
        from mlaas4hep.training.torch_loop import train_torch

        return train_torch(cfg, device, session)
    from mlaas4hep.training.keras_loop import train_keras

    return train_keras(cfg, session)


def final_weights(framework: str, directory: Path) -> list[np.ndarray]:
    if framework == "torch":
        import torch

        state = torch.load(directory / "model.pt", weights_only=True)
        return [value.numpy() for value in state.values()]
    import h5py

    with h5py.File(directory / "model.weights.h5") as f:
        found: list[np.ndarray] = []
        f.visititems(
            lambda _, obj: found.append(obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
        return found


@pytest.mark.parametrize(
    ("framework", "mode"),
    [("torch", "standard"), ("torch", "per_chunk"), ("tensorflow", "standard")],
)
def test_a_resumed_loop_continues_exactly(
    tth: Path, tmp_path: Path, framework: str, mode: str
) -> None:
    pytest.importorskip("torch" if framework == "torch" else "tf_keras")
    from mlaas4hep.training.loop import InjectedFailure
    from mlaas4hep.training.session import LocalSession

    cfg = loop_config(tth, framework, f"resume-{framework}-{mode}", mode=mode)
    straight = run_loop(framework, cfg, LocalSession(tmp_path / "straight"))
    cfg["inject_failure"] = {"rank": 0, "unit": 0}
    cfg["failure_marker"] = str(tmp_path / "failed-once")
    session = LocalSession(tmp_path / "resumed")
    with pytest.raises(InjectedFailure):
        run_loop(framework, cfg, session)
    assert [p.name for p in session.checkpoints()] == ["unit-00000"]
    resumed = run_loop(framework, cfg, session)
    # the optimizer state came back: Adam's step count goes on from the checkpoint
    steps = [h["optimizer_steps"] for h in resumed["history"]]
    assert steps == [h["optimizer_steps"] for h in straight["history"]]
    assert steps == list(np.cumsum([h["steps"] for h in straight["history"]]))
    assert resumed["stream"] == straight["stream"] and resumed["rng"] == straight["rng"]
    # data order, dropout and optimizer moments too: the same numbers, bit for bit
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    last = session.checkpoints()[-1]
    for a, b in zip(
        final_weights(framework, last),
        final_weights(framework, LocalSession(tmp_path / "straight").checkpoints()[-1]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_resuming_with_another_plan_is_refused(tth: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from mlaas4hep.training.session import LocalSession

    session = LocalSession(tmp_path / "ckpt")
    run_loop("torch", loop_config(tth, "torch", "plan-a", epochs=1), session)
    other = loop_config(tth, "torch", "plan-b", epochs=1, batch_size=32)
    with pytest.raises(ConfigError, match="belongs to another plan"):
        run_loop("torch", other, session)


def test_torch_loop_puts_batches_on_its_device(tth: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from mlaas4hep.stream.batches import Batch
    from mlaas4hep.training.session import LocalSession
    from mlaas4hep.training.torch_loop import batch_tensors

    x = np.ones((4, 3), np.float32)
    batch = Batch(x, x > 0, np.zeros(4, np.float32), np.ones(4, np.float32))
    inputs, y, w = batch_tensors(batch, torch.device("meta"), with_mask=True)
    assert {t.device.type for t in (inputs["features"], inputs["mask"], y, w)} == {"meta"}
    # the loop's device defaults to the CPU, and every record says where it trained
    state = run_loop("torch", loop_config(tth, "torch", "device", epochs=1), LocalSession(tmp_path))
    assert [h["device"] for h in state["history"]] == ["cpu"]


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_mixed_precision_trains_on_a_cpu(tth: Path, tmp_path: Path, framework: str) -> None:
    """bf16 runs the forward pass in bfloat16 on a CPU too: the job learns what the same
    job learns in float32 (loss and validation AUC; a fixed AUC threshold would depend on
    the CPU's kernels on a sample this small), the weights it saves are float32 (what
    serving loads), and fp16 without a GPU is refused."""
    pytest.importorskip("torch" if framework == "torch" else "tf_keras")
    from mlaas4hep.training.session import LocalSession

    runs = {}
    for precision in ("32", "bf16"):
        cfg = loop_config(tth, framework, f"{precision}-{framework}", epochs=2, precision=precision)
        runs[precision] = run_loop(framework, cfg, LocalSession(tmp_path / precision))["history"]
    history = runs["bf16"]
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["loss"] == pytest.approx(runs["32"][-1]["loss"], rel=0.05)
    # three weak inputs, AUC ~0.6: the two runs' AUCs were seen 0.037 apart on a loaded
    # 2-core machine; a bf16 run that learnt nothing would sit ~0.1 below
    assert history[-1]["val_auc"] == pytest.approx(runs["32"][-1]["val_auc"], abs=0.06)
    assert history[-1]["optimizer_steps"] == sum(h["steps"] for h in history)
    weights = final_weights(framework, LocalSession(tmp_path / "bf16").checkpoints()[-1])
    assert {w.dtype for w in weights if w.ndim} == {np.dtype(np.float32)}
    cfg = loop_config(tth, framework, f"fp16-{framework}", epochs=1, precision="fp16")
    with pytest.raises(ConfigError, match="fp16 needs a (CUDA device|GPU)"):
        run_loop(framework, cfg, LocalSession(tmp_path / "fp16"))


def test_batches_for_a_device_are_prepared_in_the_feed_thread() -> None:
    """The feed applies ``prepare`` (pinning for a GPU) in its own thread, and the torch
    loop takes batches of tensors as well as of arrays."""
    import threading

    torch = pytest.importorskip("torch")
    from mlaas4hep.stream.batches import Batch
    from mlaas4hep.training.feed import BatchFeed
    from mlaas4hep.training.torch_loop import batch_tensors

    threads = set()

    def as_tensors(batch: Batch) -> Batch:
        threads.add(threading.current_thread().name)
        return Batch(torch.from_numpy(batch.X), torch.from_numpy(batch.mask), None, None)

    def source():
        for i in range(4):
            yield 0, Batch(np.full((2, 3), i, np.float32), np.ones((2, 3), bool), None, None)

    with BatchFeed(source(), depth=2, prepare=as_tensors) as feed:
        batches = list(feed.take(0, 4))
    assert threads == {"batch-feed"}
    inputs, y, w = batch_tensors(batches[3], torch.device("cpu"), with_mask=True)
    assert torch.equal(inputs["features"], torch.full((2, 3), 3.0)) and y is None is w


def test_batch_feed_ahead_gives_the_same_batches_and_times_the_wait() -> None:
    from mlaas4hep.stream.batches import Batch
    from mlaas4hep.training.feed import BatchFeed

    def source():
        for unit in range(2):
            for i in range(5):
                yield unit, Batch(np.full((2, 1), 10 * unit + i, np.float32), None, None, None)

    for depth in (0, 3):
        with BatchFeed(source(), depth=depth) as feed:
            got = [float(b.X[0, 0]) for u in range(2) for b in feed.take(u, 5)]
        assert got == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
        assert feed.batches == 10 and feed.wait_seconds >= 0
    with BatchFeed(source(), depth=3) as feed, pytest.raises(RuntimeError, match="unit 0"):
        list(feed.take(1, 1))

    def failing():
        yield 0, Batch(np.zeros((1, 1), np.float32), None, None, None)
        raise OSError("disk gone")

    with BatchFeed(failing(), depth=2) as feed, pytest.raises(OSError, match="disk gone"):
        list(feed.take(0, 2))


def test_local_run_writes_a_bundle_that_predicts_the_same(tth: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import json

    import yaml

    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.training.local import main

    data = config([str(tth)], framework="torch")
    data["output"] = {"location": str(tmp_path / "out"), "name": "local", "bentoml_store": False}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path), "--device", "cpu", "--run-name", "local-1"]) == 0
    summary = json.loads((tmp_path / "out" / "local-1" / "summary.json").read_text())
    assert summary["units"] == 1 and summary["framework"] == "torch"
    assert 0 <= summary["data_wait_fraction"] <= 1
    assert {"spec", "fit", "evaluate", "bundle", "total"} <= set(summary["timings"])
    bundle = ModelBundle.load(summary["bundle"]["output"])
    scores = bundle.predict_vectorized(bundle.reference["X"], bundle.reference["mask"])
    np.testing.assert_allclose(scores, bundle.reference["scores"], rtol=1e-6)
    # the job exported the model to ONNX and checked it on held-out events
    assert bundle.onnx["file"] == "model.onnx" and bundle.onnx["max_abs_diff"] <= 1e-5
    assert bundle.onnx["checked_rows"] > len(bundle.reference["X"])
    from mlaas4hep.serve.predictor import Predictor

    served = Predictor.load(summary["bundle"]["output"], "local:1")
    assert served.mode == "onnx"


def test_robust_normalisation_trains_and_serves_identically(tth: Path, tmp_path: Path) -> None:
    """``normalization: robust`` with quantile clipping: the job builds its Vectorizer from the
    spec's sketches, saves it in the bundle, and serving scores raw events exactly as the
    training-side Vectorizer and model do."""
    pytest.importorskip("torch")
    import json

    from mlaas4hep.io.tree import open_tree
    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.serve.payloads import EventColumns
    from mlaas4hep.serve.predictor import Predictor
    from mlaas4hep.training.local import run_local
    from mlaas4hep.transform.vectorizer import Vectorizer

    data = config([str(tth)], framework="torch")
    data["vectorizer"] = {"padding": 6, "normalization": "robust", "clip": ["p0.1", "p99.9"]}
    data["output"] = {"location": str(tmp_path / "out"), "name": "robust", "bentoml_store": False}
    summary = run_local(TrainConfig.from_dict(data), log=lambda _: None)
    bundle = ModelBundle.load(summary["bundle"]["output"])
    saved = json.loads((Path(summary["bundle"]["output"]) / "vectorizer.json").read_text())
    assert saved["normalization"] == "robust" and saved["config_version"] == 2
    assert all(b["bound"] == 5.0 and None not in b["clip"] for b in saved["blocks"])
    # the same preprocessing as a Vectorizer built again from the bundle's spec
    built = Vectorizer(bundle.spec, data["dataset"]["include"], normalization="robust",
                       padding=6, clip=["p0.1", "p99.9"])  # fmt: skip
    assert built.to_dict() == saved
    with open_tree(tth / "ttH_signal.root") as tree:
        events = tree.arrays(built.branches, entry_stop=700)
    columns = {name: events[name] for name in built.branches}
    out = built(columns)
    assert np.abs(out.X).max() <= 5.0
    expected = bundle.predict_vectorized(out.X, out.mask)
    served = Predictor.load(summary["bundle"]["output"], "robust:1")
    scores = served.score(EventColumns(columns, len(events)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(served.vectorizer(columns).X, out.X)  # bit for bit


@given(
    st.lists(st.integers(min_value=1, max_value=40), max_size=30),
    st.integers(min_value=1, max_value=100),
)
def test_scoring_blocks_keep_every_row_in_order(sizes: list[int], rows: int) -> None:
    """Validation scores blocks of joined batches: every row once, in order, and every
    block but the last has at least ``rows`` rows."""
    from mlaas4hep.stream.batches import Batch
    from mlaas4hep.training.loop import scoring_blocks

    edges = np.cumsum([0, *sizes])
    values = np.arange(edges[-1], dtype=np.float32)
    batches = [
        Batch(values[a:b, None], np.ones((b - a, 1), bool), values[a:b], None)
        for a, b in itertools.pairwise(edges)
    ]
    blocks = list(scoring_blocks(iter(batches), rows))
    joined = np.concatenate([b.y for b in blocks]) if blocks else np.zeros(0, np.float32)
    np.testing.assert_array_equal(joined, values)
    assert all(len(b) >= rows for b in blocks[:-1])
    assert all(b.X.shape[0] == len(b.y) for b in blocks)


def test_startup_parts_split_the_fit_outside_its_units() -> None:
    """A fit of three units with a restart before the third: Ray Train's start, each
    process's set-up, the gaps between units less the restart's own set-up, the stop."""
    from mlaas4hep.training.loop import startup_parts

    history = [
        {"worker_entered_at": 102.0, "started_at": 110.0, "seconds": 20.0},  # setup 8
        {"worker_entered_at": 102.0, "started_at": 131.0, "seconds": 20.0},  # gap 1
        {"worker_entered_at": 160.0, "started_at": 165.0, "seconds": 20.0},  # restart: setup 5
    ]
    parts = startup_parts(history, 100.0, 190.0)
    assert parts == {
        "workers_start": 2.0,
        "worker_setup": 13.0,
        "checkpoints": 1.0 + (165.0 - 151.0 - 5.0),
        "workers_stop": 5.0,
    }
    units = sum(h["seconds"] for h in history)
    assert sum(parts.values()) + units == 190.0 - 100.0  # every second of the fit, once
    assert startup_parts([{"seconds": 1.0}], 0.0, 2.0) == {}  # older records: no parts


IMAGE = {
    "padding": 6,
    "representation": "image",
    "x": "Jet_eta",
    "y": "Jet_phi",
    "weight": "Jet_pt",
    "bins": [8, 8],
    "range": [[-2.5, 2.5], [-3.141592653589793, 3.141592653589793]],
}


@pytest.mark.parametrize(
    ("vectorizer", "message"),
    [
        ({"representation": "image", "x": "Jet_eta"}, "needs vectorizer.x and vectorizer.y"),
        ({**IMAGE, "bins": [8]}, "vectorizer.bins: two positive integers"),
        ({**IMAGE, "range": [[1, 0], [0, 1]]}, "vectorizer.range: two .low, high. pairs"),
        ({**IMAGE, "periodic": [True]}, "vectorizer.periodic: two booleans"),
    ],
)
def test_image_options_are_checked(tth: Path, vectorizer: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(config([str(tth)], vectorizer=vectorizer))


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_images_train_with_the_default_cnn_and_serve_from_raw_events(
    tth: Path, tmp_path: Path, framework: str
) -> None:
    """``representation: image``: the job trains the default CNN on eta-phi images of the
    jets (plus HT), exports it to ONNX, and serving turns raw events into the same images
    and the same scores, with no model code run."""
    pytest.importorskip("torch" if framework == "torch" else "tf_keras")
    from mlaas4hep.io.tree import open_tree
    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.serve.payloads import EventColumns
    from mlaas4hep.serve.predictor import Predictor
    from mlaas4hep.training.local import run_local

    data = config([str(tth)], framework=framework, vectorizer=IMAGE)
    data["dataset"]["include"] = ["HT"]
    data["output"] = {"location": str(tmp_path / "out"), "name": "img", "bentoml_store": False}
    summary = run_local(TrainConfig.from_dict(data), log=lambda _: None)
    bundle = ModelBundle.load(summary["bundle"]["output"])
    v = bundle.vectorizer
    assert v.n_features == 1 + 64 and v.image_input == (1, 8, 8)
    assert v.branches == ["HT", "Jet_eta", "Jet_phi", "Jet_pt"]
    assert bundle.onnx is not None and bundle.onnx["max_abs_diff"] <= 1e-5
    with open_tree(tth / "ttH_signal.root") as tree:
        events = tree.arrays(v.branches, entry_stop=500)
    columns = {name: events[name] for name in v.branches}
    out = v(columns)
    assert out.X[:, 1:].sum() > 0 and out.mask.all()
    expected = bundle.predict_vectorized(out.X, out.mask)
    served = Predictor.load(summary["bundle"]["output"], "img:1")
    assert served.mode == "onnx"
    scores = served.score(EventColumns(columns, len(events)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_the_driver_imports_the_framework_in_a_background_thread_of_low_priority() -> None:
    """While the one actor trains, the driver imports what its test evaluation needs,
    in a thread at nice 19 (Linux): the driver's own priority is left as it is, and a
    framework that is not known or fails to import is left to the evaluation."""
    import os
    import sys

    from mlaas4hep.training.actor import import_in_background

    before = os.getpriority(os.PRIO_PROCESS, 0)
    thread = import_in_background("torch")
    thread.join(timeout=300)
    assert not thread.is_alive() and "torch" in sys.modules
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    quiet = import_in_background("no-such-framework")
    quiet.join(timeout=10)
    assert not quiet.is_alive()
