"""Continuous training: a changed DatasetSpec → a new model version → promoted, or not.

The retrain function submits ``ray_jobs/retrain.py`` for a dataset (see
:func:`mlaas4hep.pipeline.retrain_if_quiet`). That job runs :func:`retrain`:

1. the dataset's training recipe (``<models_url>train.yaml``, a normal training YAML)
   is loaded, and its ``dataset.files`` replaced by the files the DatasetSpec holds,
   its ``spec`` by the DatasetSpec's URL: the model is trained on exactly the files the
   pipeline has seen, and its lineage names them with their identities;
2. the training job runs (Ray Train) and registers the bundle in the model store;
3. the new version and the one behind the alias (``production``) are scored on the same
   events, the new version's test split (:func:`compare_on_test`: each bundle applies
   its own Vectorizer to the raw events, the recipe's weights applied), by the task's
   primary metric: the exact ROC AUC of a classifier (one-vs-rest, averaged over the
   classes, for multiclass), the loss of a regression (in units of the target's spread,
   lower is better); the new version is promoted unless it is worse there by more than
   ``margin``. A
   version trained on an older DatasetSpec than the one behind the alias is never
   promoted (checked in the same conditional write as the promotion). The decision, both
   numbers and the events used are written next to the run
   (``<models_url>runs/<run>/decision.json``) and into the alias history.

A job that fails anywhere before step 3 promotes nothing: serving keeps its model.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mlaas4hep.errors import ConfigError, MlaasError
from mlaas4hep.io.documents import read_text, write_text
from mlaas4hep.serve.protocol import DEFAULT_ALIAS
from mlaas4hep.spec.documents import DatasetSpec

RECIPE_NAME = "train.yaml"

DEFAULT_MARGIN = 0.01


@dataclass(frozen=True)
class Decision:
    """Whether a new version replaces the one behind the alias, and why: both values of
    ``metric`` (``auc``, or a regression's ``loss``) are measured on the same ``events``
    (the candidate's test split)."""

    promote: bool
    reason: str
    candidate: str
    candidate_value: float | None
    current: str | None = None
    current_value: float | None = None
    margin: float = DEFAULT_MARGIN
    events: int | None = None
    weighted: bool = False
    metric: str = "auc"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate: str,
    candidate_value: float | None,
    current: str | None,
    current_value: float | None,
    margin: float = DEFAULT_MARGIN,
    *,
    events: int | None = None,
    weighted: bool = False,
    metric: str = "auc",
) -> Decision:
    """Promote unless the candidate's ``metric`` is worse than the current one's, on the
    same events, by more than ``margin`` (``auc``: higher is better; ``loss``: lower).

    No current version: promote. A candidate without a finite value: keep the current
    one (a model that cannot be judged does not replace one that was).
    """
    args = (candidate, candidate_value, current, current_value, margin, events, weighted, metric)
    name = metric.upper() if metric == "auc" else metric
    if current is None:
        return Decision(True, "no model behind the alias yet", *args)
    if candidate_value is None or not math.isfinite(candidate_value):
        return Decision(False, f"the new model has no finite {name} on the test events", *args)
    if current_value is None or not math.isfinite(current_value):
        return Decision(
            True, f"the current model {current} cannot be scored on the test events", *args
        )
    on = f" on the same {events} test events" if events else ""
    higher_is_better = metric != "loss"
    delta = candidate_value - current_value
    worse = -delta if higher_is_better else delta
    if worse > margin:
        return Decision(
            False,
            f"{name} {candidate_value:.4f} is {worse:.4f} worse than the current "
            f"{current_value:.4f} ({current}){on}, more than the margin {margin}",
            *args,
        )
    return Decision(
        True,
        f"{name} {candidate_value:.4f} vs {current_value:.4f} ({current}){on}: {delta:+.4f}, "
        f"within the margin {margin}",
        *args,
    )


@dataclass(frozen=True)
class Comparison:
    """Two versions scored on the same events by the candidate's task: their ``metric``
    (exact ROC AUC; the loss for regression)."""

    candidate_value: float
    current_value: float | None
    events: int
    weighted: bool
    problem: str | None = None  # why the current version could not be scored
    metric: str = "auc"


def compare_on_test(
    config: Any, files: list[str], candidate: str | Path, current: str | Path
) -> Comparison:
    """Score the bundles ``candidate`` and ``current`` on the candidate's test split.

    The split is the training job's own (same files, seeds and fractions); each bundle
    turns the raw events into features with its own Vectorizer, so a current version
    with other inputs or normalisation is judged fairly. The recipe's weights (if any)
    weight the AUC. A current version whose branches the files lack is reported, not
    scored, nor is one of another task.
    """
    import numpy as np

    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.model.tasks import PRIMARY
    from mlaas4hep.training.job import build_streams

    new, old = ModelBundle.load(candidate), ModelBundle.load(current)
    task = new.task
    problem = None
    if (old.task.kind, old.task.classes) != (task.kind, task.classes):
        problem = f"the current version's task is {old.task.kind} {list(old.task.classes)}"
    wanted = sorted(set(new.vectorizer.branches) | set(old.vectorizer.branches))
    stream = build_streams(config, files, None, branches=wanted)["test"]
    labels, weights, ours, theirs = [], [], [], []
    try:
        for chunk in stream.chunks():
            labels.append(chunk.y)
            if chunk.w is not None:
                weights.append(chunk.w)
            ours.append(new.predict(chunk.arrays))
            if problem is None:
                try:
                    theirs.append(old.predict(chunk.arrays))
                except (MlaasError, KeyError, ValueError) as err:
                    problem = f"{type(err).__name__}: {err}"
    finally:
        stream.close()
    y = np.concatenate(labels) if labels else np.zeros(0, np.float32)
    w = np.concatenate(weights) if weights else None
    metric = PRIMARY[task.kind][0]

    def value(scores: list[np.ndarray]) -> float:
        return float(task.metrics(y, np.concatenate(scores), w)[metric])

    current_value = None if problem or not theirs else value(theirs)
    return Comparison(value(ours), current_value, len(y), w is not None, problem, metric)


def recipe_config(
    recipe_text: str,
    dataset: str,
    spec: DatasetSpec,
    spec_url: str,
    models_url: str,
    staging_cache: str | None = None,
) -> Any:
    """The training config of one retraining: the recipe, on the DatasetSpec's files.

    A recipe that enables ``staging`` without a ``cache`` stages the dataset's
    ``root://`` files (a manifest's entries) into ``staging_cache``: the deployment's
    cache bucket, which Terraform gives every job as ``MLAAS4HEP_STAGING_CACHE``.
    """
    import yaml

    from mlaas4hep.training import TrainConfig

    try:
        data = yaml.safe_load(recipe_text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"training recipe of {dataset} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"training recipe of {dataset} must be a mapping of sections")
    if not spec.files:
        raise ConfigError(f"the DatasetSpec {spec_url} holds no files")
    data = json.loads(json.dumps(data))
    data.setdefault("dataset", {})["files"] = sorted(spec.files)
    data["spec"] = spec_url
    staging = data.get("staging")
    enabled = isinstance(staging, dict) and staging.get("enabled")
    if enabled and staging_cache and not staging.get("cache"):
        staging["cache"] = f"{staging_cache.rstrip('/')}/{dataset}/"
    output = data.setdefault("output", {})
    output.setdefault("location", f"{models_url.rstrip('/')}/runs")
    output.setdefault("name", _model_name(dataset))
    # One run per DatasetSpec content: a retried job resumes from its checkpoints.
    digest = hashlib.sha256(spec.to_json().encode()).hexdigest()[:10]
    output["run_name"] = f"{_model_name(dataset)}-{digest}"
    return TrainConfig.from_dict(data)


def _model_name(dataset: str) -> str:
    name = "".join(c if c.isalnum() or c in "_-." else "-" for c in dataset.lower()).strip("-._")
    return name or "model"


def primary_of(summary: Mapping[str, Any]) -> str:
    """The metric a run of ``summary["task"]`` is judged by (``auc``, or ``loss``)."""
    from mlaas4hep.model.tasks import PRIMARY

    return PRIMARY.get(str(summary.get("task", "binary")), PRIMARY["binary"])[0]


def retrain(
    dataset: str,
    spec_url: str,
    models_url: str,
    *,
    recipe_url: str | None = None,
    alias: str = DEFAULT_ALIAS,
    margin: float = DEFAULT_MARGIN,
    log: Callable[[str], None] = print,
    train: Callable[[Any], dict[str, Any]] | None = None,
    registry_url: str | None = None,
    staging_cache: str | None = None,
) -> dict[str, Any]:
    """Train the dataset's recipe on its DatasetSpec, register, decide the promotion.

    ``registry_url``: the shared registry's ``s3://`` prefix, where the promotion is
    written for every serving replica (None: the local store's registry).
    ``staging_cache``: where a recipe's ``staging`` without a cache stages the files
    (:func:`recipe_config`).

    (The story of one retraining in the order it happens: recipe, training, registration,
    comparison, promotion, record; each step is a call of its own.)
    """
    from mlaas4hep.serve.registry import Registry
    from mlaas4hep.serve.registry_errors import ModelNotFound, StaleCandidate

    started = time.time()
    recipe_url = recipe_url or f"{models_url.rstrip('/')}/{RECIPE_NAME}"
    try:
        recipe_text = read_text(recipe_url)
    except FileNotFoundError as err:
        raise ConfigError(
            f"no training recipe for dataset {dataset!r} at {recipe_url}: upload a training "
            f"YAML there (its dataset.files are replaced by the DatasetSpec's files)"
        ) from err
    spec = DatasetSpec.from_json(read_text(spec_url))
    config = recipe_config(recipe_text, dataset, spec, spec_url, models_url, staging_cache)
    run = config.output.run_name
    log(f"retraining {dataset}: {len(spec.files)} files, {spec.entries} events, run {run}")
    if train is None:
        from mlaas4hep.training import run_training

        def train(cfg: Any) -> dict[str, Any]:
            return run_training(cfg, log=log)

    summary = train(config)
    tag = summary.get("tag")
    if not tag:
        raise ConfigError("the training recipe must keep output.bentoml_store true to retrain")
    registry = Registry(bucket=registry_url)
    try:
        current: str | None = registry.resolve(f"{tag.split(':')[0]}:{alias}")
    except ModelNotFound:  # no model behind the alias yet
        current = None
    comparison = None
    if current is not None and current != tag:
        comparison = compare_on_test(
            config, sorted(spec.files), registry.path(tag), registry.path(current)
        )
        theirs, metric = comparison.current_value, comparison.metric
        log(
            f"on {comparison.events} test events: {tag} {metric} "
            f"{comparison.candidate_value:.4f}, {current} {metric} "
            f"{theirs if theirs is not None else comparison.problem}"
        )
    metric = comparison.metric if comparison else primary_of(summary)
    decision = decide(
        tag,
        comparison.candidate_value if comparison else summary.get(f"test_{metric}"),
        current,
        comparison.current_value if comparison else None,
        margin,
        events=comparison.events if comparison else None,
        weighted=comparison.weighted if comparison else False,
        metric=metric,
    )
    spec_version = dataset_spec_version(spec_url)
    if decision.promote:
        reason = {
            "by": f"retraining of {dataset} (run {run})",
            "why": decision.reason,
            "decision": decision.to_dict(),
            "dataset_spec": spec_url,
            "dataset_spec_version": spec_version,
        }
        try:
            registry.promote(tag, alias, reason=reason, unless_newer=spec_version)
            log(f"promoted {tag} to {alias!r}: {decision.reason}")
        except StaleCandidate as err:
            decision = replace(decision, promote=False, reason=str(err))
            log(f"kept {current} as {alias!r}, not {tag}: {err}")
    else:
        log(f"kept {current} as {alias!r}, not {tag}: {decision.reason}")
    record = {
        "dataset": dataset,
        "dataset_spec": spec_url,
        "files": sorted(spec.files),
        "alias": alias,
        "decision": decision.to_dict(),
        "comparison": asdict(comparison) if comparison else None,
        "dataset_spec_version": spec_version,
        "training": summary,
        "started_at": started,
        "finished_at": time.time(),
    }
    run_dir = f"{config.output.location.rstrip('/')}/{config.output.run_name}"
    write_text(f"{run_dir}/decision.json", json.dumps(record, indent=1))
    return record


def dataset_spec_version(spec_url: str) -> float | None:
    """When the DatasetSpec at ``spec_url`` was last merged (seconds since the epoch): the
    ``updated-at`` the merge step stores with it in S3, else the file's modification
    time; None when neither is known. Orders two retrainings' DatasetSpecs."""
    if spec_url.startswith("s3://"):
        from mlaas4hep.io.aws import aws_client
        from mlaas4hep.io.s3 import split

        bucket, key = split(spec_url)
        try:
            head = aws_client("s3").head_object(Bucket=bucket, Key=key)
        except Exception:
            return None
        value = (head.get("Metadata") or {}).get("updated-at")
        try:
            return float(value) if value else head["LastModified"].timestamp()
        except (TypeError, ValueError, KeyError):
            return None
    try:
        return Path(spec_url.removeprefix("file://")).stat().st_mtime
    except OSError:
        return None
