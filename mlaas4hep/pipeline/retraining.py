"""Continuous training: a changed DatasetSpec → a new model version → promoted, or not.

The retrain function submits ``ray_jobs/retrain.py`` for a dataset (see
:func:`mlaas4hep.pipeline.retrain_if_quiet`). That job runs :func:`retrain`:

1. the dataset's training recipe (``<models_url>train.yaml``, a normal training YAML)
   is loaded, and its ``dataset.files`` replaced by the files the DatasetSpec holds,
   its ``spec`` by the DatasetSpec's URL: the model is trained on exactly the files the
   pipeline has seen, and its lineage names them with their identities;
2. the training job runs (Ray Train) and registers the bundle in the model store;
3. the new version is promoted to the alias (``production``) unless its validation AUC
   is worse than the current one's by more than ``margin``; the decision and its reason
   are written next to the run (``<models_url>runs/<run>/decision.json``).

A job that fails anywhere before step 3 promotes nothing: serving keeps its model.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mlaas4hep.errors import ConfigError
from mlaas4hep.io.documents import read_text, write_text
from mlaas4hep.serve.protocol import DEFAULT_ALIAS
from mlaas4hep.spec.documents import DatasetSpec

RECIPE_NAME = "train.yaml"

DEFAULT_MARGIN = 0.01


@dataclass(frozen=True)
class Decision:
    """Whether a new version replaces the one behind the alias, and why."""

    promote: bool
    reason: str
    candidate: str
    candidate_val_auc: float | None
    current: str | None = None
    current_val_auc: float | None = None
    margin: float = DEFAULT_MARGIN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate: str,
    candidate_val_auc: float | None,
    current: str | None,
    current_val_auc: float | None,
    margin: float = DEFAULT_MARGIN,
) -> Decision:
    """Promote unless the candidate's validation AUC is worse by more than ``margin``.

    No current version: promote. A candidate without a finite AUC: keep the current one
    (a model that cannot be judged does not replace one that was).
    """
    args = (candidate, candidate_val_auc, current, current_val_auc, margin)
    if current is None:
        return Decision(True, "no model behind the alias yet", *args)
    if candidate_val_auc is None or not math.isfinite(candidate_val_auc):
        return Decision(False, "the new model has no finite validation AUC", *args)
    if current_val_auc is None or not math.isfinite(current_val_auc):
        return Decision(True, f"the current model {current} has no validation AUC", *args)
    delta = candidate_val_auc - current_val_auc
    if delta < -margin:
        return Decision(
            False,
            f"validation AUC {candidate_val_auc:.4f} is {-delta:.4f} below the current "
            f"{current_val_auc:.4f} ({current}), more than the margin {margin}",
            *args,
        )
    return Decision(
        True,
        f"validation AUC {candidate_val_auc:.4f} vs {current_val_auc:.4f} ({current}): "
        f"{delta:+.4f}, within the margin {margin}",
        *args,
    )


def recipe_config(
    recipe_text: str, dataset: str, spec: DatasetSpec, spec_url: str, models_url: str
) -> Any:
    """The training config of one retraining: the recipe, on the DatasetSpec's files."""
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


def val_auc_of(metrics: Mapping[str, Any]) -> float | None:
    """The last validation AUC of a bundle's ``metrics.json`` (None if it has none)."""
    history = metrics.get("history") or []
    for unit in reversed(history):
        value = unit.get("val_auc")
        if value is not None:
            return float(value)
    return None


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
) -> dict[str, Any]:
    """Train the dataset's recipe on its DatasetSpec, register, decide the promotion.

    (The story of one retraining in the order it happens: recipe, training, registration,
    comparison, promotion, record; each step is a call of its own.)
    """
    from mlaas4hep.serve.registry import Registry
    from mlaas4hep.serve.registry_errors import ModelNotFound

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
    config = recipe_config(recipe_text, dataset, spec, spec_url, models_url)
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
    registry = Registry()
    try:
        current: str | None = registry.resolve(f"{tag.split(':')[0]}:{alias}")
    except ModelNotFound:  # no model behind the alias yet
        current = None
    current_auc = None
    if current is not None:  # the registry knows where a version's bundle lies
        current_auc = val_auc_of(json.loads((registry.path(current) / "metrics.json").read_text()))
    decision = decide(tag, summary.get("val_auc"), current, current_auc, margin)
    if decision.promote:
        registry.promote(tag, alias)
        log(f"promoted {tag} to {alias!r}: {decision.reason}")
    else:
        log(f"kept {current} as {alias!r}, not {tag}: {decision.reason}")
    record = {
        "dataset": dataset,
        "dataset_spec": spec_url,
        "files": sorted(spec.files),
        "alias": alias,
        "decision": decision.to_dict(),
        "training": summary,
        "started_at": started,
        "finished_at": time.time(),
    }
    run_dir = f"{config.output.location.rstrip('/')}/{config.output.run_name}"
    write_text(f"{run_dir}/decision.json", json.dumps(record, indent=1))
    return record
