"""The training job's driver: check everything, train on Ray, evaluate, write the bundle.

:func:`prepare` does all that can fail cheaply, before any Ray worker starts: it loads
or computes the DatasetSpec, builds the Vectorizer (a branch absent from the spec fails
here), opens every file of every split (a missing or unreadable file fails here, named),
resolves the labels and counts the steps each worker will run. :func:`run_training`
stages ``root://`` inputs if asked (before training, or while it runs: see
:mod:`mlaas4hep.io.staging`), runs Ray Train (``TensorflowTrainer`` or ``TorchTrainer``),
or for one worker the same loop in one Ray actor started as the job begins
(:mod:`mlaas4hep.training.actor`), with checkpoints under the output location, then
:func:`finish` evaluates the final model on the test split in the driver (the task's
metrics), draws the plots and saves the model bundle to the BentoML store and the models
bucket. The summary it returns holds the time each step took (``timings``) and the input
pipeline's stall (``data_wait_fraction``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.io.documents import read_text, write_text
from mlaas4hep.io.expand import expand_sources
from mlaas4hep.io.location import normalize_url, scheme
from mlaas4hep.model import architectures as models
from mlaas4hep.model.bundle import REFERENCE_ROWS, ModelBundle
from mlaas4hep.model.lineage import git_revision, library_versions
from mlaas4hep.model.manifest import DEFAULT_MODEL
from mlaas4hep.model.metrics import roc_curve
from mlaas4hep.model.tasks import BINARY, Task
from mlaas4hep.spec.compute import compute_dataset_spec
from mlaas4hep.spec.documents import DatasetSpec, load_spec
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.stream.options import Selection, Split
from mlaas4hep.training.config import TrainConfig
from mlaas4hep.training.plan import StepPlan, make_plan
from mlaas4hep.training.result import process_seconds
from mlaas4hep.training.storage import run_storage
from mlaas4hep.transform import images
from mlaas4hep.transform.vectorizer import Vectorizer

#: Held-out rows the ONNX export is checked on against the framework's own outputs.
ONNX_CHECK_ROWS = 2048

if TYPE_CHECKING:
    from mlaas4hep.io.staging import StagingRun, StagingTable
    from mlaas4hep.training.actor import OneWorker


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
    timings: dict[str, float] = field(default_factory=dict)
    task: Task = BINARY

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
    config: TrainConfig,
    files: list[str],
    vectorizer: Vectorizer | None,
    staging: StagingTable | None = None,
    *,
    branches: Sequence[str] | None = None,
) -> dict[str, ChunkStream]:
    """The train/validation/test streams (same files, seed and split hash).

    With ``staging``, the streams read each staged file from its cached copy, keyed by
    its original URL all the same. ``branches`` (with no ``vectorizer``): the streams
    give those branches raw, for scoring other bundles on the job's own splits.
    """
    d = config.dataset
    labels = config.numeric_labels()
    stream_class: Callable[..., ChunkStream] = ChunkStream
    extra: dict[str, Any] = {}
    if staging is not None:
        from mlaas4hep.stream.staged import StagedChunkStream

        stream_class, extra = StagedChunkStream, {"staging": staging}
    base = stream_class(
        files,
        **extra,
        vectorizer=vectorizer,
        branches=branches,
        tree=d.tree,
        chunk_size=config.worker_chunk_size,
        selection=Selection(labels=labels, label=d.label, weight=d.weight, cut=d.cut),
        seed=config.training.seed,
        split=Split(fractions=tuple(d.fractions), seed=d.split_seed),
    )
    return {split: base.with_split(split) for split in ("train", "validation", "test")}


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def prepare(config: TrainConfig, staging: StagingRun | None = None) -> PreparedJob:
    """Validate the whole job against the data: every error here comes before training.

    With ``staging``, files already in the cache are read from there (the spec too).
    """
    timings: dict[str, float] = {}
    files = resolve_files(config)
    table = staging.table(config.staging.check_seconds) if staging is not None else None
    with timed(timings, "spec"):
        read = [table.targets[f] if table and f in table.staged else f for f in files]
        spec = load_or_compute_spec(config, read)
    v = config.vectorizer
    include, image = config.dataset.include, None
    if v.representation == "image":
        assert v.x is not None and v.y is not None  # checked by the config
        image = images.from_spec(
            spec, v.x, v.y, weight=v.weight, bins=v.bins, ranges=v.range, periodic=v.periodic
        )
        include = [] if include is None else include
    vectorizer = Vectorizer(
        spec,
        include,
        config.dataset.exclude,
        normalization=v.normalization,  # type: ignore[arg-type]
        padding=v.padding,
        pad_value=v.pad_value,
        nonfinite=v.nonfinite,  # type: ignore[arg-type]
        clip=v.clip,
        robust_clip=v.robust_clip,
        image=image,
    )
    streams = build_streams(config, files, vectorizer, table)
    with timed(timings, "open_files"):
        for stream in streams.values():
            stream.num_events  # noqa: B018 - opens every file, checks its branches
    model_code = None
    if config.model != DEFAULT_MODEL:
        model_code = models.read_model_code(config.model)
    framework = models.detect_framework(model_code, config.framework)
    with_mask = models.wants_mask(model_code, config.training.with_mask)
    with timed(timings, "plan"):
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
    staged = dict(table.targets) if table is not None else {}
    with timed(timings, "task"):
        task = task_of_data(config, streams["train"])
    return PreparedJob(
        config, files, spec, vectorizer, streams, plan, framework, model_code, with_mask,
        run_name, staged, timings, task,
    )  # fmt: skip


def task_of_data(config: TrainConfig, train: ChunkStream) -> Task:
    """The config's task; for regression with the target's mean and spread measured on
    the first training chunk (what the default model's output is scaled by)."""
    task = config.task_of()
    if task.kind != "regression":
        return task
    with train.with_split("train") as stream:
        first = next(stream.chunks(), None)
    if first is None or first.y is None or not len(first.y):
        raise ConfigError("task regression: the training split holds no event")
    return task.with_target(first.y, first.w)


def worker_config(job: PreparedJob) -> dict[str, Any]:
    """The ``train_loop_config`` every worker receives."""
    from mlaas4hep.training.loop import failure_marker

    return {
        "streams": {"train": job.streams["train"], "validation": job.streams["validation"]},
        "plan": job.plan.to_dict(),
        "model_code": job.model_code,
        "framework": job.framework,
        "with_mask": job.with_mask,
        "n_features": job.vectorizer.n_features,
        "image": job.vectorizer.image_input,
        "task": job.task.to_dict(),
        "learning_rate": job.config.training.learning_rate,
        "seed": job.config.training.seed,
        "prefetch_batches": job.config.training.prefetch_batches,
        "precision": job.config.training.precision,
        # compute threads per worker; more than its CPUs fight the batch feed's thread
        "threads": max(1, int(job.config.scaling.cpus_per_worker)),
        "inject_failure": job.config.inject_failure,
        "failure_marker": failure_marker(job.run_name),
    }


def fit(job: PreparedJob) -> Any:
    """Run Ray Train; return its Result (metrics, last checkpoint)."""
    train = extras.require("ray.train")
    from mlaas4hep.training.worker import train_loop_tensorflow, train_loop_torch

    storage_path, filesystem = run_storage(job.output)
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
    from mlaas4hep.model.frameworks import load_weights

    model = models.build_model(
        job.model_code,
        job.framework,
        job.vectorizer.n_features,
        job.with_mask,
        image=job.vectorizer.image_input,
        task=job.task,
    )
    load_weights(model, job.framework, checkpoint_dir)
    return model


def evaluate(
    job: PreparedJob, model: Any, max_feature_events: int = 50_000
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The task's metrics on the test split (weighted when the events are), as
    ``test_<name>``; and the arrays the plots need."""
    from mlaas4hep.model.frameworks import predict_arrays

    task = job.task
    scores, labels, weights, xs, masks = [], [], [], [], []
    held = 0
    with job.streams["test"].with_split("test") as test:
        for batch in test.batches(4096):
            out = predict_arrays(model, job.framework, batch.X, batch.mask, job.with_mask)
            scores.append(task.shaped(out))
            labels.append(batch.y)
            if batch.w is not None:
                weights.append(batch.w)
            if held < max_feature_events:
                xs.append(batch.X)
                masks.append(batch.mask)
                held += len(batch)
    s, y = np.concatenate(scores), np.concatenate(labels)
    w = np.concatenate(weights) if weights else None
    metrics = {f"test_{k}": v for k, v in task.metrics(y, s, w).items()}
    metrics["test_events"] = len(y)
    if task.kind == "binary":
        metrics["test_signal_fraction"] = float(np.mean(y))
    elif task.kind == "multiclass":
        counts = np.bincount(y.astype(np.int64), minlength=task.outputs) / max(len(y), 1)
        metrics["test_class_fractions"] = dict(zip(task.classes, counts.tolist(), strict=True))
    arrays: dict[str, np.ndarray] = {"scores": s, "labels": y}
    if w is not None:
        arrays["weights"] = w
    if task.kind == "binary":
        arrays["fpr"], arrays["tpr"], _ = roc_curve(y, s, w)
    arrays["X"], arrays["mask"] = np.concatenate(xs), np.concatenate(masks)
    return metrics, arrays


def begin_staging(
    config: TrainConfig, log: Callable[[str], None], use_ray: bool | None = None
) -> StagingRun | None:
    """Find which ``root://`` inputs are staged already; in ``before`` mode, stage the rest.

    In ``while`` mode the copies start with :func:`start_copies`, once the job is
    prepared: the spec pass forks worker processes, which must not happen while copies
    run in this process's threads.
    """
    if not config.staging.enabled:
        return None
    from mlaas4hep.io.staging import StagingRun

    sources = [f for f in resolve_files(config) if scheme(f) == "root"]
    staging = StagingRun(
        sources, config.staging.cache, parallel=config.staging.parallel, use_ray=use_ray
    )
    log(
        f"staging {len(staging.pending)} root:// file(s) into {config.staging.cache} "
        f"({len(staging.staged)} already there) {config.staging.mode} training"
    )
    if config.staging.mode == "before":
        report = staging.wait()
        log(f"staged {sum(not r['skipped'] for r in report)} file(s), {len(report)} in cache")
    return staging


def start_copies(staging: StagingRun | None) -> None:
    """Start the copies of ``while`` staging (training reads the source until they land)."""
    if staging is not None:
        staging.start()


def bundle_from_training(
    job: PreparedJob,
    model: Any,
    history: list[dict[str, Any]],
    test_metrics: Mapping[str, Any],
) -> ModelBundle:
    """The bundle of a trained model: the job's preprocessing, spec, metrics and lineage,
    and reference rows of the test split scored by the model as trained."""
    libraries = ["mlaas4hep", "numpy", "awkward", "uproot", "ray"]
    libraries += ["torch"] if job.framework == "torch" else ["tensorflow", "tf-keras"]
    lineage = {
        "run_name": job.run_name,
        "files": {
            key: {"entries": spec.entries, "identity": spec.identity}
            for key, spec in job.spec.files.items()
        },
        "staged": job.staged,
        "config": job.config.to_dict(),
        "plan": job.plan.to_dict(),
        "git_revision": git_revision(),
        "libraries": library_versions(libraries),
    }
    bundle = ModelBundle(
        framework=job.framework,
        vectorizer=job.vectorizer,
        spec=job.spec,
        with_mask=job.with_mask,
        model_code=job.model_code,
        task=job.task,
        metrics={"history": history, **test_metrics},
        lineage=lineage,
        model=model,
    )
    with job.streams["test"].with_split("test") as test:
        batch = next(test.batches(ONNX_CHECK_ROWS))
    X, mask = batch.X[:REFERENCE_ROWS].copy(), batch.mask[:REFERENCE_ROWS].copy()
    bundle.reference = {"X": X, "mask": mask, "scores": bundle.predict_vectorized(X, mask)}
    if job.config.output.onnx:
        bundle.onnx_check = (batch.X.copy(), batch.mask.copy())
    return bundle


def staging_summary(staging: StagingRun, mode: str) -> dict[str, Any]:
    """What the staging of a run did: files, copies, bytes and the files that failed."""
    records = staging.wait(errors="record")  # training read the source meanwhile
    summary: dict[str, Any] = {
        "mode": mode,
        "files": len(records),
        "copied": sum(not r["skipped"] and "error" not in r for r in records),
        "bytes": sum(r["bytes"] for r in records),
    }
    failed = {r["source"]: r["error"] for r in records if "error" in r}
    if failed:
        summary["failed"] = failed
    return summary


def run_summary(
    job: PreparedJob,
    history: list[dict[str, Any]],
    test_metrics: Mapping[str, Any],
    timings: dict[str, float],
    **extra: Any,
) -> dict[str, Any]:
    """The job's summary: what ``MLAAS4HEP_RESULT`` prints and ``summary.json`` holds."""
    waits = [h["data_wait_fraction"] for h in history if "data_wait_fraction" in h]
    last = history[-1] if history else {}
    return {
        "run_name": job.run_name,
        "framework": job.framework,
        "mode": job.plan.mode,
        "task": job.task.kind,
        "test_auc": test_metrics.get("test_auc"),
        "test_loss": test_metrics.get("test_loss"),
        "val_auc": last.get("val_auc"),
        "val_loss": last.get("val_loss"),
        "units": len(history),
        "fit_seconds": timings.get("fit", 0.0),
        "total_seconds": timings["total"],
        "timings": timings,
        "train_events": job.plan.train_events,
        "data_wait_fraction": max(waits) if waits else None,
        "optimizer_steps": last.get("optimizer_steps"),
        "reads": last.get("reads"),
        **extra,
    }


def finish(
    job: PreparedJob,
    checkpoint_dir: Path,
    *,
    timings: dict[str, float],
    started: float,
    checkpoint: str,
    staging: StagingRun | None = None,
    fit_window: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Evaluate the checkpoint's model, draw the plots, save and export the bundle.

    ``fit_window`` is the fit's wall-clock start and end: with it the timings say where
    the fit's time outside the units went (:func:`~.loop.startup_parts`)."""
    from mlaas4hep.model import bundle as bundles
    from mlaas4hep.training.loop import startup_parts

    config = job.config
    history = json.loads((checkpoint_dir / "state.json").read_text())["history"]
    if fit_window is not None:
        timings.update({f"fit_{k}": v for k, v in startup_parts(history, *fit_window).items()})
    with timed(timings, "evaluate"):
        model = load_trained_model(job, checkpoint_dir)
        test_metrics, arrays = evaluate(job, model)
    with timed(timings, "bundle"):
        out = bundle_from_training(job, model, history, test_metrics)
        local = bundles.workspace(job.run_name)
    with timed(timings, "plots"):
        plots = bundles.write_plots(local / "plots", history, arrays, job.vectorizer, job.task)
    staged = staging_summary(staging, config.staging.mode) if staging is not None else None
    if staged is not None:
        out.lineage["staging"] = staged
    timings["units"] = sum(h.get("seconds", 0.0) for h in history)
    timings["total"] = time.perf_counter() - started
    out.metrics.update(
        fit_seconds=timings.get("fit", 0.0), total_seconds=timings["total"], timings=dict(timings)
    )
    with timed(timings, "bundle"):
        out.save(local / "bundle", extra_files=plots)
    tag = None
    if config.output.bentoml_store:
        with timed(timings, "store"):
            tag = out.save_to_store(config.output.name, local / "bundle")
    with timed(timings, "export"):
        exported = out.export(
            local / "bundle", job.output, job.run_name, config.output.models_bucket
        )
    timings["total"] = time.perf_counter() - started
    summary = run_summary(
        job, history, test_metrics, timings,
        tag=tag, staging=staged, bundle=exported, checkpoint=checkpoint,
    )  # fmt: skip
    write_text(f"{job.output}/{job.run_name}/summary.json", json.dumps(summary, indent=1))
    return summary


def train_workers(
    job: PreparedJob, one: OneWorker | None
) -> tuple[Callable[[], AbstractContextManager[Any]], str]:
    """Train on Ray: in the job's one actor, or under Ray Train. Returns a context
    manager of the last checkpoint's local directory, and where the checkpoint is kept."""
    if one is not None:
        storage = run_storage(job.output)
        session = one.fit(worker_config(job), job.framework, storage, job.run_name)
        found = session.checkpoints()
        if not found:
            session.close()
            raise RuntimeError(f"training run {job.run_name} produced no checkpoint")
        return session.final_checkpoint, session.location(found[-1].name)
    result = fit(job)
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training run {job.run_name} produced no checkpoint")
    return result.checkpoint.as_directory, str(result.checkpoint.path)


def run_training(config: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole job: stage, prepare, fit, evaluate, plot, bundle. Returns a summary.

    A one-worker job (``scaling.trainer``: see :mod:`mlaas4hep.training.actor`) starts
    its worker first, so that the worker imports its framework while the job prepares.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    driver_start = process_seconds()  # the driver's interpreter, imports and config
    if driver_start is not None:
        timings["driver_start"] = driver_start
    one = None
    if config.scaling.one_actor:
        from mlaas4hep.training.actor import OneWorker, framework_hint

        one = OneWorker(config.scaling, framework_hint(config), log)
    try:
        with timed(timings, "staging"):
            staging = begin_staging(config, log)
        with timed(timings, "prepare"):
            job = prepare(config, staging)
        timings.update(job.timings)
        trainer = "one Ray actor" if one is not None else "Ray Train"
        log(
            f"prepared {job.run_name}: {len(job.files)} files, "
            f"{job.vectorizer.n_features} features, {job.framework}, {job.plan.mode} mode, "
            f"{job.plan.units} units, {job.plan.train_events} training events on "
            f"{job.plan.num_workers} worker(s) ({trainer})"
        )
        start_copies(staging)
        fit_started = time.time()
        with timed(timings, "fit"):
            if one is not None:
                warm = one.warm_up_seconds()
                if warm is not None:  # overlapped with staging and prepare
                    timings["worker_warm_up"] = warm
            opened, checkpoint = train_workers(job, one)
        fit_window = (fit_started, time.time())
    finally:
        if one is not None:
            one.close()
    with opened() as directory:
        return finish(
            job,
            Path(directory),
            timings=timings,
            started=started,
            checkpoint=checkpoint,
            staging=staging,
            fit_window=fit_window,
        )
