"""The training job's driver: check everything, train on Ray, evaluate, write the bundle.

:func:`prepare` does all that can fail cheaply, before any Ray worker starts: it loads
or computes the DatasetSpec, builds the Vectorizer (a branch absent from the spec fails
here), opens every file of every split (a missing or unreadable file fails here, named),
resolves the labels and counts the steps each worker will run. :func:`run_training`
then stages ``root://`` inputs if asked, runs Ray Train (``TensorflowTrainer`` or
``TorchTrainer``) with checkpoints under the output location, evaluates the final model
on the test split in the driver (AUC, ROC), draws the plots and saves the model bundle
to the BentoML store and the models bucket.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.metrics import auc, binary_cross_entropy, roc_curve
from mlaas4hep.sources import expand_sources, normalize_url, read_text, scheme, write_text
from mlaas4hep.specs import DatasetSpec, compute_dataset_spec, load_spec
from mlaas4hep.stream import ChunkStream
from mlaas4hep.training import models
from mlaas4hep.training.config import TrainConfig
from mlaas4hep.training.plan import StepPlan, make_plan
from mlaas4hep.vectorizer import Vectorizer


@dataclass
class PreparedJob:
    """Everything checked and derived before training starts."""

    config: TrainConfig
    files: list[str]
    spec: DatasetSpec
    vectorizer: Vectorizer
    streams: dict[str, ChunkStream]
    plan: StepPlan
    framework: str
    model_code: str | None
    with_mask: bool
    run_name: str
    staged: dict[str, str]

    @property
    def output(self) -> str:
        return self.config.output.location.rstrip("/")


def resolve_files(config: TrainConfig) -> list[str]:
    """The dataset's file URLs (directories, globs and s3:// prefixes expanded)."""
    files = list(dict.fromkeys(normalize_url(f) for f in expand_sources(config.dataset.files)))
    if not files:
        raise ConfigError(f"dataset.files matches no file: {config.dataset.files}")
    return files


def load_or_compute_spec(config: TrainConfig, files: list[str], workers: int = 2) -> DatasetSpec:
    """The DatasetSpec named by ``spec`` (a JSON file or s3:// URL), or computed now."""
    if config.spec != "compute":
        try:
            spec = load_spec(read_text(config.spec))
        except FileNotFoundError as err:
            raise ConfigError(f"spec {config.spec} not found") from err
        if not isinstance(spec, DatasetSpec):
            spec = DatasetSpec([spec])
        return spec
    run = compute_dataset_spec(files, tree=config.dataset.tree, workers=workers, strict=True)
    return run.dataset


def build_streams(
    config: TrainConfig, files: list[str], vectorizer: Vectorizer
) -> dict[str, ChunkStream]:
    """The train/validation/test streams (same files, seed and split hash)."""
    d = config.dataset
    labels = None
    if d.labels is not None:
        labels = dict(d.labels)
    base = ChunkStream(
        files,
        vectorizer=vectorizer,
        tree=d.tree,
        chunk_size=config.worker_chunk_size,
        labels=labels,
        label=d.label,
        weight=d.weight,
        cut=d.cut,
        seed=config.training.seed,
        fractions=tuple(d.fractions),
        split_seed=d.split_seed,
    )
    return {split: base.with_split(split) for split in ("train", "validation", "test")}


def prepare(config: TrainConfig, staged: dict[str, str] | None = None) -> PreparedJob:
    """Validate the whole job against the data: every error here comes before training."""
    files = resolve_files(config)
    staged = staged or {}
    files = [staged.get(f, f) for f in files]
    spec = load_or_compute_spec(config, files)
    v = config.vectorizer
    vectorizer = Vectorizer(
        spec,
        config.dataset.include,
        config.dataset.exclude,
        normalization=v.normalization,  # type: ignore[arg-type]
        padding=v.padding,
        pad_value=v.pad_value,
        nonfinite=v.nonfinite,  # type: ignore[arg-type]
    )
    streams = build_streams(config, files, vectorizer)
    for stream in streams.values():
        stream.num_events  # noqa: B018 - opens every file, checks its branches
    model_code = None
    if config.model != models.DEFAULT_MODEL:
        model_code = models.read_model_code(config.model)
    framework = models.detect_framework(model_code, config.framework)
    with_mask = models.wants_mask(model_code, config.training.with_mask)
    plan = make_plan(
        streams["train"],
        streams["validation"],
        mode=config.training.mode,
        epochs=config.training.epochs,
        batch_size=config.training.batch_size,
        workers=config.scaling.num_workers,
    )
    run_name = config.output.run_name or (
        f"{config.output.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    return PreparedJob(
        config, files, spec, vectorizer, streams, plan, framework, model_code, with_mask,
        run_name, staged,
    )  # fmt: skip


def worker_config(job: PreparedJob) -> dict[str, Any]:
    """The ``train_loop_config`` every worker receives."""
    from mlaas4hep.training.worker import failure_marker

    return {
        "streams": {"train": job.streams["train"], "validation": job.streams["validation"]},
        "plan": job.plan.to_dict(),
        "model_code": job.model_code,
        "framework": job.framework,
        "with_mask": job.with_mask,
        "n_features": job.vectorizer.n_features,
        "learning_rate": job.config.training.learning_rate,
        "seed": job.config.training.seed,
        "inject_failure": job.config.inject_failure,
        "failure_marker": failure_marker(job.run_name),
    }


def _storage(output: str) -> tuple[str, Any]:
    """Ray Train's storage path and filesystem for the output location."""
    if scheme(output) == "s3":
        import os

        fs = extras.require("pyarrow.fs")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            kwargs["scheme"] = endpoint.split("://", 1)[0]
        region = os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return output.removeprefix("s3://") + "/checkpoints", fs.S3FileSystem(**kwargs)
    path = Path(output).resolve() / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return str(path), None


def fit(job: PreparedJob) -> Any:
    """Run Ray Train; return its Result (metrics, last checkpoint)."""
    train = extras.require("ray.train")
    from mlaas4hep.training.worker import train_loop_tensorflow, train_loop_torch

    storage_path, filesystem = _storage(job.output)
    scaling = job.config.scaling
    run_config = train.RunConfig(
        name=job.run_name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=train.FailureConfig(max_failures=scaling.max_failures),
        checkpoint_config=train.CheckpointConfig(num_to_keep=2),
    )
    scaling_config = train.ScalingConfig(
        num_workers=scaling.num_workers,
        use_gpu=scaling.use_gpu,
        resources_per_worker={"CPU": scaling.cpus_per_worker},
    )
    if job.framework == "torch":
        trainer_cls = extras.require("ray.train.torch").TorchTrainer
        loop = train_loop_torch
    else:
        trainer_cls = extras.require("ray.train.tensorflow").TensorflowTrainer
        loop = train_loop_tensorflow
    trainer = trainer_cls(
        train_loop_per_worker=loop,
        train_loop_config=worker_config(job),
        scaling_config=scaling_config,
        run_config=run_config,
    )
    return trainer.fit()


# ------------------------------------------------------------------------- evaluation


def load_trained_model(job: PreparedJob, checkpoint_dir: Path) -> Any:
    """The model of a checkpoint, rebuilt from its code and loaded with its weights."""
    from mlaas4hep.bundle import load_weights

    model = models.build_model(
        job.model_code, job.framework, job.vectorizer.n_features, job.with_mask
    )
    load_weights(model, job.framework, checkpoint_dir)
    return model


def evaluate(
    job: PreparedJob, model: Any, max_feature_events: int = 50_000
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Test-split AUC, loss and ROC curve; and the arrays the plots need."""
    from mlaas4hep.bundle import predict_arrays

    scores, labels, xs, masks = [], [], [], []
    held = 0
    with job.streams["test"].with_split("test") as test:
        for batch in test.batches(4096):
            scores.append(predict_arrays(model, job.framework, batch.X, batch.mask, job.with_mask))
            labels.append(batch.y)
            if held < max_feature_events:
                xs.append(batch.X)
                masks.append(batch.mask)
                held += len(batch)
    s, y = np.concatenate(scores), np.concatenate(labels)
    fpr, tpr, _ = roc_curve(y, s)
    metrics = {
        "test_auc": auc(y, s),
        "test_loss": binary_cross_entropy(y, s),
        "test_events": len(y),
        "test_signal_fraction": float(np.mean(y)),
    }
    arrays = {
        "scores": s,
        "labels": y,
        "fpr": fpr,
        "tpr": tpr,
        "X": np.concatenate(xs),
        "mask": np.concatenate(masks),
    }
    return metrics, arrays


def run_training(config: TrainConfig, log: Any = print) -> dict[str, Any]:
    """The whole job: stage, prepare, fit, evaluate, plot, bundle. Returns a summary."""
    started = time.perf_counter()
    staged: dict[str, str] = {}
    if config.staging.enabled:
        from mlaas4hep.staging import stage_files

        sources = [f for f in resolve_files(config) if scheme(f) == "root"]
        report = stage_files(sources, config.staging.cache, parallel=config.staging.parallel)
        staged = {item["source"]: item["cached"] for item in report}
        log(f"staged {sum(not r['skipped'] for r in report)} file(s), {len(report)} in cache")
    job = prepare(config, staged)
    log(
        f"prepared {job.run_name}: {len(job.files)} files, {job.vectorizer.n_features} features, "
        f"{job.framework}, {job.plan.mode} mode, {job.plan.units} units, "
        f"{job.plan.train_events} training events on {job.plan.num_workers} workers"
    )
    fit_start = time.perf_counter()
    result = fit(job)
    fit_seconds = time.perf_counter() - fit_start
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {job.run_name} produced no checkpoint")
    from mlaas4hep import bundle as bundles

    with result.checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / "state.json").read_text())
        model = load_trained_model(job, Path(directory))
        test_metrics, arrays = evaluate(job, model)
        history = state["history"]
        out = bundles.ModelBundle.from_training(job, model, history, test_metrics)
        out.metrics["fit_seconds"] = fit_seconds
        out.metrics["total_seconds"] = time.perf_counter() - started
        local = bundles.workspace(job.run_name)
        plots = bundles.write_plots(local / "plots", history, arrays, job.vectorizer)
        out.save(local / "bundle", extra_files=plots)
    tag = None
    if config.output.bentoml_store:
        tag = out.save_to_store(config.output.name, local / "bundle")
    exported = out.export(local / "bundle", job.output, job.run_name, config.output.models_bucket)
    summary = {
        "run_name": job.run_name,
        "tag": tag,
        "framework": job.framework,
        "mode": job.plan.mode,
        "test_auc": test_metrics["test_auc"],
        "val_auc": history[-1]["val_auc"] if history else None,
        "units": len(history),
        "fit_seconds": fit_seconds,
        "total_seconds": time.perf_counter() - started,
        "bundle": exported,
        "checkpoint": str(result.checkpoint.path),
    }
    write_text(f"{job.output}/{job.run_name}/summary.json", json.dumps(summary, indent=1))
    return summary
