"""Training jobs submitted through the Ray Jobs API of a real local Ray head.

One Ray head (2 CPUs, loopback only) for the module; the sample ttH-like data (40k
events) published to a moto S3 bucket and to an XRootD server. Each test submits
``ray_jobs/train.py`` exactly as ``ray job submit`` does and reads the job's summary
back from its log.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from rootfiles import write_events

from mlaas4hep.local.samples import make_tth_dataset
from mlaas4hep.local.stack import RayHead
from mlaas4hep.pipeline.jobs_api import wait_for_job
from mlaas4hep.pipeline.submission import submit_training
from mlaas4hep.serve.registry import Registry
from mlaas4hep.training import TrainConfig
from mlaas4hep.training.feed import batches_per_unit
from mlaas4hep.training.job import prepare
from mlaas4hep.training.plan import StepPlan, shard_counts
from mlaas4hep.training.result import job_result

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LABELS = {"ttH_signal.root": 1, "*": 0}
INCLUDE = ["Jet_pt", "Jet_eta", "Jet_btagDeepB", "Jet_mass", "nJet", "MET_pt", "HT"]


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    # A local ray.init() leaves ~/.ray/auth_token behind, which turns token auth on for
    # every later head; these tests talk to their own loopback head without a token.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        head = RayHead(num_cpus=2).start()
        try:
            yield head
        finally:
            head.stop()


@pytest.fixture(scope="module")
def tth_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("tth-train")
    return [f.path for f in make_tth_dataset(out, n_events=40_000, seed=7, block_size=10_000)]


@pytest.fixture(scope="module")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # One store for the module's jobs; read back through a Registry on it, never through
    # BentoML's process-wide store (which an earlier test may have opened elsewhere).
    home = tmp_path_factory.mktemp("bentoml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENTOML_HOME", str(home))
        yield home


def run_job(ray_head: RayHead, tmp_path: Path, config: dict, env: dict[str, str]) -> tuple:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    job_id = submit_training(
        ray_head.address,
        str(path),
        working_dir=str(PROJECT_ROOT),
        env=env,
        python=sys.executable,
    )
    status, logs = wait_for_job(ray_head.address, job_id, timeout=420)
    return status, logs, job_result(logs)


def assert_planned_steps(history: list[dict], plan: StepPlan) -> None:
    """Every unit of ``plan`` that holds a batch trained exactly its batches, in order."""
    planned = {u: batches_per_unit(plan, u) for u in range(plan.units)}
    trained = [u for u, n in planned.items() if n > 0]
    assert [h["unit"] for h in history] == trained
    assert [h["steps"] for h in history] == [planned[u] for u in trained]
    cumulative = np.cumsum([planned[u] for u in trained]).tolist()
    assert [h["optimizer_steps"] for h in history] == cumulative


def base_config(files: list[str], output: str, **training: object) -> dict:
    return {
        "dataset": {"files": files, "labels": LABELS, "include": INCLUDE},
        "vectorizer": {"padding": 8},
        "training": {"epochs": 2, "chunk_size": 8000, "batch_size": 256, **training},
        "scaling": {"num_workers": 2, "use_gpu": False},
        "output": {"location": output, "name": "tth-test"},
    }


def test_tensorflow_one_worker_per_node_from_s3_to_bundle(
    ray_head: RayHead, moto_server, publish_to_s3: Callable[..., str], tth_files, tmp_path,
    bentoml_home: Path,
) -> None:  # fmt: skip
    """One Ray worker with both CPUs trains as one process does (no all-reduce); the
    uneven-shards test below runs Keras under MultiWorkerMirroredStrategy."""
    for path in tth_files:
        publish_to_s3(path, bucket="data", key=f"datasets/tth/{path.name}")
    moto_server.client("s3").create_bucket(Bucket="models")
    config = base_config(["s3://data/datasets/tth/"], "s3://models/runs")
    config["scaling"].update(num_workers=1, cpus_per_worker=2)
    config["output"]["models_bucket"] = "s3://models/bundles"
    env = {**moto_server.env(), "BENTOML_HOME": str(bentoml_home)}
    status, logs, result = run_job(ray_head, tmp_path, config, env)
    assert status == "SUCCEEDED", logs[-3000:]
    assert result["test_auc"] > 0.7, result
    assert result["units"] == 2 and result["framework"] == "tensorflow"
    assert 0 <= result["data_wait_fraction"] <= 1
    assert {"spec", "plan", "fit", "evaluate", "bundle", "total"} <= set(result["timings"])

    from mlaas4hep.model.bundle import ModelBundle

    bundle = ModelBundle.load(Registry(bentoml_home).path(result["tag"]))
    scores = bundle.predict_vectorized(bundle.reference["X"], bundle.reference["mask"])
    np.testing.assert_allclose(scores, bundle.reference["scores"], rtol=1e-5, atol=1e-6)
    assert bundle.metrics["test_auc"] == pytest.approx(result["test_auc"])
    assert len(bundle.metrics["history"]) == 2
    assert [len(h["workers"]) for h in bundle.metrics["history"]] == [1, 1]
    assert not any(h["distributed"] for h in bundle.metrics["history"])
    assert all("val_auc" in h and "val_loss" in h for h in bundle.metrics["history"])
    lineage = bundle.lineage
    assert len(lineage["files"]) == 9 and all(f["identity"] for f in lineage["files"].values())
    assert lineage["git_revision"] and "tensorflow" in lineage["libraries"]
    keys = {o["Key"] for o in moto_server.client("s3").list_objects_v2(Bucket="models")["Contents"]}
    run = result["run_name"]
    for name in ("bundle.json", "model.weights.h5", "model.onnx", "plots/roc.png"):
        assert f"bundles/tth-test/{run}/{name}" in keys
    assert bundle.onnx["converter"].startswith("tf2onnx") and bundle.onnx["max_abs_diff"] <= 1e-5
    assert any(k.startswith(f"runs/checkpoints/{run}/unit-00001/") for k in keys)
    # raw events in, the same numbers as the job's own transform
    import uproot

    with uproot.open(tth_files[0]) as f:
        events = f["Events"].arrays(bundle.vectorizer.branches, entry_stop=200)
    direct = bundle.predict_vectorized(*_xm(bundle.vectorizer.transform(events)))
    np.testing.assert_array_equal(bundle.predict(events), direct)


def _xm(out) -> tuple[np.ndarray, np.ndarray]:
    return out.X, out.mask


def test_xrootd_source_with_torch_in_per_chunk_mode(
    ray_head: RayHead, publish_to_xrootd: Callable[..., str], tth_files, tmp_path, bentoml_home
) -> None:
    pytest.importorskip("torch")
    urls = [publish_to_xrootd(p, name=f"train/{p.name}") for p in tth_files]
    model = tmp_path / "net.py"
    model.write_text(
        "import torch\n"
        "framework = 'torch'\n\n"
        "def build_model(n_features):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(n_features, 64), torch.nn.ReLU(),\n"
        "                               torch.nn.Linear(64, 1), torch.nn.Sigmoid(),\n"
        "                               torch.nn.Flatten(0))\n"
    )
    config = base_config(urls, str(tmp_path / "out"), mode="per_chunk", epochs=3)
    config["model"] = str(model)
    config["training"]["learning_rate"] = 3e-3
    # training starts on the root:// URLs while Ray tasks stage the files into a cache
    cache = tmp_path / "cache"
    config["staging"] = {"enabled": True, "mode": "while", "cache": str(cache), "check_seconds": 0}
    status, logs, result = run_job(ray_head, tmp_path, config, {"BENTOML_HOME": str(bentoml_home)})
    assert status == "SUCCEEDED", logs[-3000:]
    assert result["framework"] == "torch" and result["mode"] == "per_chunk"
    assert result["test_auc"] > 0.7, result
    assert result["staging"]["copied"] == len(tth_files) == len(list(cache.rglob("*.root")))
    assert result["reads"]["cache"] > 0, result["reads"]  # the workers read the copies

    from mlaas4hep.model.bundle import ModelBundle

    bundle = ModelBundle.load(Registry(bentoml_home).path(result["tag"]))
    assert bundle.lineage["files"] and all(k.startswith("root://") for k in bundle.lineage["files"])
    scores = bundle.predict_vectorized(bundle.reference["X"], bundle.reference["mask"])
    np.testing.assert_allclose(scores, bundle.reference["scores"], rtol=1e-5, atol=1e-6)
    # the user's architecture is served from its ONNX graph: no user code in the server
    from mlaas4hep.serve.predictor import Predictor

    served = Predictor.load(Registry(bentoml_home).path(result["tag"]), result["tag"])
    assert served.mode == "onnx"
    X, mask = bundle.reference["X"], bundle.reference["mask"]
    np.testing.assert_allclose(served.forward(X, mask), scores, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def uneven_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three one-cluster files of sizes that divide by nothing here, with ``position``
    (0 → 1 along each file): the cut ``position < 0.6`` keeps all of the first half of
    a file, which worker 0 reads, and a fifth of the second half, which worker 1 reads."""
    out = tmp_path_factory.mktemp("uneven")
    files = []
    for seed, (name, n) in enumerate([("sig.root", 3001), ("bkg_a.root", 4999),
                                      ("bkg_b.root", 6007)]):  # fmt: skip
        position = (np.arange(n) / n).astype(np.float32)
        files.append(write_events(out / name, n, seed + 1, extra={"position": position}))
    return files


@pytest.mark.parametrize(
    ("framework", "mode", "epochs", "fail", "task"),
    # both loops, and the tasks whose validation gathers other shapes over the workers
    [("tensorflow", "standard", 3, True, "regression"),
     ("torch", "per_chunk", 2, False, "multiclass")],
)  # fmt: skip
def test_every_unit_trains_exactly_its_planned_steps_with_uneven_shards(
    ray_head: RayHead, uneven_files, tmp_path, framework: str, mode: str, epochs: int,
    fail: bool, task: str,
) -> None:  # fmt: skip
    """The regression of a Keras job that died at unit boundaries (a batch of one unit
    reaching the next): units whose sizes divide neither by the batch nor by the worker
    count, and a shard five times smaller than the other, train exactly as planned.
    With ``fail``, worker 1 fails after unit 0: Ray Train restarts the workers, which
    resume from the checkpoint (weights, Adam's moments and step count, stream position).
    The Keras job regresses ``MET_pt``, the torch one tells the three files apart: each
    worker's validation outputs (one value, or three probabilities, per event) are
    gathered over both workers."""
    if framework == "torch":
        pytest.importorskip("torch")
    files = [str(p) for p in uneven_files]
    config = {
        "dataset": {
            "files": files, "cut": "position < 0.6",
            "include": ["Jet_pt", "Jet_eta", "nJet", "MET_pt", "nPV"],
        },
        "task": task,
        "vectorizer": {"padding": 5},
        "framework": framework,
        "training": {"epochs": epochs, "mode": mode, "chunk_size": 1000, "batch_size": 37},
        "scaling": {"num_workers": 2, "use_gpu": False, "max_failures": int(fail)},
        "output": {"location": str(tmp_path / "out"), "name": "uneven",
                   "bentoml_store": False},
    }  # fmt: skip
    if task == "regression":
        config["dataset"]["label"] = "MET_pt"
        config["dataset"]["include"].remove("MET_pt")
    else:
        config["dataset"]["labels"] = {"sig.root": "sig", "bkg_a.root": "a", "bkg_b.root": "b"}
    if fail:
        config["inject_failure"] = {"rank": 1, "unit": 0}
    job = prepare(TrainConfig.from_dict(config))
    counts = shard_counts(job.streams["train"], 2)
    train = sorted(sum(c) for c in counts)
    assert train[0] * 3 < train[1], train  # one shard much smaller than the other
    # The split hashes each file's URL, so the shard sizes depend on where the files
    # are: take the first prime batch that divides no shard and no unit of either.
    sizes = [n for n in (*train, *(n for shard in counts for n in shard)) if n]
    batch = next(b for b in (37, 41, 43, 47, 53, 59, 61) if all(n % b for n in sizes))
    config["training"]["batch_size"] = batch
    job = prepare(TrainConfig.from_dict(config))
    status, logs, result = run_job(ray_head, tmp_path, config, {})
    assert status == "SUCCEEDED", logs[-3000:]
    assert "internal error" not in logs
    import json

    metrics = json.loads(Path(result["bundle"]["output"], "metrics.json").read_text())
    history = metrics["history"]
    assert_planned_steps(history, job.plan)  # after a restart too: Adam's count goes on
    assert result["units"] == len(history) >= 2
    assert all(0 <= h["data_wait_fraction"] <= 1 and len(h["workers"]) == 2 for h in history)
    assert all(h["distributed"] for h in history)  # gradients all-reduced between the two
    assert ("injected failure after unit 0" in logs) == fail
    assert result["task"] == task
    if task == "multiclass":
        assert set(metrics["test_auc_per_class"]) == {"sig", "a", "b"}
        assert all(np.isfinite(h["val_auc"]) and "val_accuracy" in h for h in history)
    else:
        assert all(np.isfinite(h["val_rmse"]) and "mae" in h for h in history)
    if fail:  # units 1 and 2 ran after the restart, unit 0 came from the checkpoint
        assert [h["unit"] for h in history] == [0, 1, 2]
        assert history[1]["worker_entered_at"] > history[0]["worker_entered_at"]
        assert set(result["timings"]) >= {"fit_workers_start", "fit_worker_setup"}


def test_one_worker_actor_resumes_from_its_checkpoint_after_a_failure(
    ray_head: RayHead, uneven_files, tmp_path
) -> None:
    """A one-worker job trains in one plain Ray actor (no Ray Train worker group): when
    its loop fails after unit 0, a new actor resumes from unit 0's checkpoint, as Ray
    Train's FailureConfig would; with ``max_failures: 0`` the job fails, naming why."""
    pytest.importorskip("torch")
    files = [str(p) for p in uneven_files]
    config = {
        "dataset": {"files": files, "labels": {"sig.root": 1, "*": 0},
                    "include": ["Jet_pt", "Jet_eta", "nJet", "MET_pt", "nPV"]},
        "vectorizer": {"padding": 5},
        "framework": "torch",
        "training": {"epochs": 3, "chunk_size": 1000, "batch_size": 64},
        "scaling": {"num_workers": 1, "cpus_per_worker": 2, "max_failures": 1},
        "output": {"location": str(tmp_path / "out"), "name": "actor", "bentoml_store": False},
        "inject_failure": {"rank": 0, "unit": 0},
    }  # fmt: skip
    job = prepare(TrainConfig.from_dict(config))
    status, logs, result = run_job(ray_head, tmp_path, config, {})
    assert status == "SUCCEEDED", logs[-3000:]
    assert "(one Ray actor)" in logs and "TrainController" not in logs
    assert "injected failure after unit 0" in logs and "restart 1 of 1" in logs
    import json

    history = json.loads(Path(result["bundle"]["output"], "metrics.json").read_text())["history"]
    assert_planned_steps(history, job.plan)  # Adam's step count goes on after the restart
    assert [h["unit"] for h in history] == [0, 1, 2]
    assert history[1]["worker_entered_at"] > history[0]["worker_entered_at"]
    assert not any(h["distributed"] for h in history)
    assert result["checkpoint"].endswith(f"checkpoints/{result['run_name']}/unit-00002")
    assert result["timings"]["worker_warm_up"] > 0
    config["scaling"]["max_failures"] = 0
    status, logs, result = run_job(ray_head, tmp_path, config, {})
    assert status == "FAILED" and result is None
    assert "injected failure after unit 0" in logs and "restart 1" not in logs
