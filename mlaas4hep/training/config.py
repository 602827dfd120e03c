"""The training configuration: one declarative YAML document, validated before any work.

Like weaver-core's data configuration, the whole training job is described by a single
file (dataset, spec, Vectorizer options, model, framework, training mode, scaling,
staging, output) that is saved in the model bundle next to the trained model. Every
key is checked when the file is loaded: an unknown key (a typo) fails with the list of
the keys allowed at that place and the closest match, a wrong type or value names the
field, so that a mistake costs seconds, not a Ray job.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlaas4hep.errors import ConfigError
from mlaas4hep.model.tasks import LOSSES, TASKS, Task

FRAMEWORKS = ("auto", "tensorflow", "torch")
MODES = ("standard", "per_chunk")
STAGING_MODES = ("before", "while")
#: ``32``: float32 throughout; ``bf16`` / ``fp16``: mixed precision (the forward pass in
#: bfloat16 / float16, the weights, the loss and the optimizer in float32).
PRECISIONS = ("32", "bf16", "fp16")
NORMALIZATIONS = ("minmax", "zscore", "robust", "none")
NONFINITE = ("mask", "keep", "zero", "raise")
REPRESENTATIONS = ("vector", "image")
#: Who runs the workers: ``ray_train`` (Ray Train's worker group, any number of workers),
#: ``actor`` (one worker as a plain Ray actor, started as the job begins: no worker group
#: to start, no collectives), ``auto`` (the actor for one worker, Ray Train for more).
TRAINERS = ("auto", "ray_train", "actor")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DatasetConfig:
    """Where the events come from and how they are labelled and split."""

    files: list[str] = field(default_factory=list)
    tree: str | None = None
    #: file (URL, name or glob) → label: 0/1 (binary), a class name or index (multiclass)
    labels: dict[str, float | str] | None = None
    #: an expression per event: the 0/1 label, the class index, or the regression target
    label: str | None = None
    #: multiclass: the class names in index order (default: as ``labels`` names them)
    classes: list[str] | None = None
    cut: str | None = None
    weight: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 0


@dataclass
class VectorizerConfig:
    """The Vectorizer options (see :class:`mlaas4hep.transform.vectorizer.Vectorizer`)."""

    normalization: str = "minmax"
    padding: int | str | dict[str, int | str] = "max"
    pad_value: float = 0.0
    nonfinite: str = "mask"
    #: Two quantiles, e.g. ``[p0.1, p99.9]``: each value is clipped to them before
    #: normalisation (from the spec's quantile sketches).
    clip: list[str] | None = None
    #: With ``normalization: robust``, normalised values are clipped to [-x, x].
    robust_clip: float | None = 5.0
    #: ``vector``: the branches' padded values. ``image``: the paper's matrix
    #: representation, a 2-D histogram per event of jagged ``x`` against jagged ``y``
    #: (weighted by ``weight``, else counts) in ``bins`` over ``range`` (default: the
    #: spec's min/max), axes ``periodic`` where their range is 2π wide unless given; the
    #: branches of ``dataset.include`` (none by default) are added as flat features.
    representation: str = "vector"
    x: str | None = None
    y: str | None = None
    weight: str | None = None
    bins: list[int] = field(default_factory=lambda: [32, 32])
    range: list[list[float]] | None = None
    periodic: list[bool] | None = None


@dataclass
class TrainingConfig:
    """How the model is trained."""

    mode: str = "standard"
    epochs: int = 3
    chunk_size: int = 10_000
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0
    with_mask: bool = False
    #: Batches produced ahead in a background thread while the model trains (0: none).
    prefetch_batches: int = 64
    #: ``32``, or mixed precision: ``bf16`` (CPU and GPU) or ``fp16`` (GPU, loss-scaled).
    precision: str = "32"
    #: The task's loss (None: bce, cce, mse); regression takes ``mse`` or ``huber``.
    loss: str | None = None
    #: Huber's threshold, in units of the target's standard deviation.
    huber_delta: float = 1.0


@dataclass
class ScalingConfig:
    """The training workers on Ray; ``use_gpu`` is passed through to Ray untouched;
    ``trainer``: one of :data:`TRAINERS`."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    trainer: str = "auto"

    @property
    def one_actor(self) -> bool:
        """Whether the job trains in one plain Ray actor rather than under Ray Train."""
        return self.trainer == "actor" or (self.trainer == "auto" and self.num_workers == 1)


@dataclass
class StagingConfig:
    """Copy ``root://`` inputs into a cache (an ``s3://`` prefix or a directory).

    ``before``: training starts once every file is staged. ``while``: training starts at
    once on the ``root://`` URLs and each file switches to its cached copy once staged
    (workers look at the cache at most every ``check_seconds`` per file).
    """

    enabled: bool = False
    cache: str | None = None
    parallel: int = 4
    mode: str = "before"
    check_seconds: float = 5.0


@dataclass
class OutputConfig:
    """Where checkpoints, metrics, plots and the bundle go; how the model is named."""

    location: str = "output"
    name: str = "mlaas4hep-model"
    run_name: str | None = None
    models_bucket: str | None = None
    bentoml_store: bool = True
    #: Export the model to ``model.onnx`` (checked against the framework): what serving
    #: runs, for any architecture, without the model's code.
    onnx: bool = True


@dataclass
class TrainConfig:
    """The whole training job."""

    dataset: DatasetConfig
    #: ``binary``, ``multiclass`` or ``regression`` (see :mod:`mlaas4hep.model.tasks`)
    task: str = "binary"
    spec: str = "compute"
    vectorizer: VectorizerConfig = field(default_factory=VectorizerConfig)
    model: str = "default"
    framework: str = "auto"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    staging: StagingConfig = field(default_factory=StagingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: Testing aid: make worker ``rank`` raise once after ``unit`` units (epochs or chunks).
    inject_failure: dict[str, int] | None = None

    # --- loading ------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load and validate a YAML file (a local path or an ``s3://`` URL)."""
        import yaml

        from mlaas4hep.io.documents import read_text

        try:
            text = read_text(str(path))
        except FileNotFoundError as err:
            raise ConfigError(f"training config {path} not found") from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"training config {path} is not valid YAML: {err}") from err
        config = cls.from_dict(data or {})
        base = Path(str(path)).parent
        if config.model not in ("default",) and not config.model.startswith("s3://"):
            model = Path(config.model)
            if not model.is_absolute() and not model.exists() and (base / model).exists():
                config.model = str(base / model)
        return config

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Validate a parsed document; errors name the offending key."""
        if not isinstance(data, Mapping):
            raise ConfigError("the training config must be a mapping of sections")
        config = _build(cls, data, "")
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- checks -------------------------------------------------------------------
    def validate(self) -> None:
        d = self.dataset
        if not d.files:
            raise ConfigError("dataset.files: give at least one file, directory or s3:// prefix")
        if d.labels is None and d.label is None:
            raise ConfigError("dataset: give labels per file (dataset.labels) or dataset.label")
        if d.labels is not None and d.label is not None:
            raise ConfigError("dataset: give dataset.labels or dataset.label, not both")
        self.task_of()  # checks the task, its labels, classes and loss
        if len(d.fractions) != 3 or min(d.fractions) < 0 or abs(sum(d.fractions) - 1) > 1e-9:
            raise ConfigError(
                f"dataset.fractions: three numbers >= 0 summing to 1, not {d.fractions}"
            )
        if min(d.fractions[1:]) <= 0:
            raise ConfigError("dataset.fractions: validation and test fractions must be > 0")
        _choice("vectorizer.normalization", self.vectorizer.normalization, NORMALIZATIONS)
        _choice("vectorizer.nonfinite", self.vectorizer.nonfinite, NONFINITE)
        if self.vectorizer.clip is not None and len(self.vectorizer.clip) != 2:
            raise ConfigError(
                f"vectorizer.clip: two quantiles such as [p0.1, p99.9], not {self.vectorizer.clip}"
            )
        if self.vectorizer.robust_clip is not None and self.vectorizer.robust_clip <= 0:
            raise ConfigError("vectorizer.robust_clip must be > 0 (or empty: no clip)")
        _check_image(self.vectorizer)
        _choice("framework", self.framework, FRAMEWORKS)
        t = self.training
        _choice("training.mode", t.mode, MODES)
        for name in ("epochs", "chunk_size", "batch_size"):
            if getattr(t, name) <= 0:
                raise ConfigError(f"training.{name} must be positive, not {getattr(t, name)}")
        if t.learning_rate <= 0:
            raise ConfigError(f"training.learning_rate must be positive, not {t.learning_rate}")
        s = self.scaling
        if s.num_workers < 1:
            raise ConfigError(f"scaling.num_workers must be >= 1, not {s.num_workers}")
        if s.cpus_per_worker <= 0 or s.max_failures < 0:
            raise ConfigError("scaling.cpus_per_worker must be > 0 and max_failures >= 0")
        _choice("scaling.trainer", s.trainer, TRAINERS)
        if s.trainer == "actor" and s.num_workers != 1:
            raise ConfigError(
                f"scaling.trainer actor runs one worker, not {s.num_workers}: "
                "use ray_train (or auto) for several"
            )
        if t.chunk_size < s.num_workers * t.batch_size:
            raise ConfigError(
                f"training.chunk_size ({t.chunk_size}) must hold at least one batch per worker "
                f"({s.num_workers} x {t.batch_size})"
            )
        if self.staging.enabled and not self.staging.cache:
            raise ConfigError("staging.cache: give an s3:// prefix or a directory to stage into")
        if self.staging.parallel < 1:
            raise ConfigError("staging.parallel must be >= 1")
        _choice("staging.mode", self.staging.mode, STAGING_MODES)
        if self.staging.check_seconds < 0:
            raise ConfigError("staging.check_seconds must be >= 0")
        _choice("training.precision", t.precision, PRECISIONS)
        if t.prefetch_batches < 0:
            raise ConfigError(f"training.prefetch_batches must be >= 0, not {t.prefetch_batches}")
        if not _NAME.match(self.output.name):
            raise ConfigError(
                f"output.name {self.output.name!r}: letters, digits, '_', '-', '.' only"
            )
        if self.output.run_name is not None and not _NAME.match(self.output.run_name):
            raise ConfigError(f"output.run_name {self.output.run_name!r}: letters, digits, _-.")
        if self.model != "default" and not self.model.endswith(".py"):
            raise ConfigError(
                f"model: 'default' or a Python file defining build_model(n_features), "
                f"not {self.model!r}"
            )
        if self.inject_failure is not None and set(self.inject_failure) - {"rank", "unit"}:
            raise ConfigError("inject_failure takes 'rank' and 'unit'")

    def task_of(self) -> Task:
        """The task the config describes (a regression's offset and scale not yet known)."""
        _choice("task", self.task, TASKS)
        d, t = self.dataset, self.training
        loss = t.loss or LOSSES[self.task][0]
        if self.task == "regression":
            if d.label is None:
                raise ConfigError(
                    "task regression: give the target as dataset.label (a branch or expression)"
                )
            if d.classes is not None:
                raise ConfigError("dataset.classes belongs to task multiclass")
            return Task("regression", loss=loss, delta=t.huber_delta)
        if self.task == "binary":
            if d.classes is not None:
                raise ConfigError("dataset.classes belongs to task multiclass")
            for key, value in (d.labels or {}).items():
                if isinstance(value, str):
                    raise ConfigError(
                        f"dataset.labels[{key!r}] is the class name {value!r}: "
                        "set task: multiclass, or give 0 or 1"
                    )
            return Task("binary", loss=loss)
        return Task("multiclass", classes=tuple(self.class_names()), loss=loss)

    def class_names(self) -> list[str]:
        """Multiclass: the class names in index order."""
        d = self.dataset
        named = [v for v in (d.labels or {}).values() if isinstance(v, str)]
        classes = list(d.classes) if d.classes is not None else list(dict.fromkeys(named))
        if d.classes is None and d.labels is not None and len(named) < len(d.labels):
            raise ConfigError(
                "dataset.labels: with class indices, name the classes in dataset.classes"
            )
        if d.classes is None and d.label is not None:
            raise ConfigError(
                "task multiclass with dataset.label (a class index per event): name the "
                "classes in dataset.classes"
            )
        for key, value in (d.labels or {}).items():
            if isinstance(value, str) and value not in classes:
                raise ConfigError(
                    f"dataset.labels[{key!r}]: class {value!r} is not in dataset.classes {classes}"
                )
            is_index = not isinstance(value, str) and value == int(value)
            if not isinstance(value, str) and not (is_index and 0 <= value < len(classes)):
                raise ConfigError(
                    f"dataset.labels[{key!r}]: {value!r} is not a class index 0..{len(classes) - 1}"
                )
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ConfigError(f"task multiclass needs two or more distinct classes, not {classes}")
        return classes

    def numeric_labels(self) -> dict[str, float] | None:
        """``dataset.labels`` as numbers (class names turned into their indices)."""
        labels = self.dataset.labels
        if labels is None:
            return None
        if self.task != "multiclass":
            return {k: float(v) for k, v in labels.items()}
        index = {name: i for i, name in enumerate(self.class_names())}
        return {k: float(index[v]) if isinstance(v, str) else float(v) for k, v in labels.items()}

    @property
    def worker_chunk_size(self) -> int:
        """Events per chunk on each worker: together the workers' chunks are one chunk."""
        return max(self.training.chunk_size // self.scaling.num_workers, 1)


def _check_image(v: VectorizerConfig) -> None:
    _choice("vectorizer.representation", v.representation, REPRESENTATIONS)
    if v.representation == "vector":
        given = [k for k in ("x", "y", "weight", "range", "periodic") if getattr(v, k) is not None]
        if given:
            raise ConfigError(
                f"vectorizer.{given[0]} belongs to the image representation: "
                "set vectorizer.representation: image"
            )
        return
    if v.x is None or v.y is None:
        raise ConfigError("vectorizer.representation image needs vectorizer.x and vectorizer.y")
    if len(v.bins) != 2 or min(v.bins) <= 0:
        raise ConfigError(f"vectorizer.bins: two positive integers such as [32, 32], not {v.bins}")
    if v.range is not None and (
        len(v.range) != 2 or any(len(r) != 2 or r[1] <= r[0] for r in v.range)
    ):
        raise ConfigError(
            f"vectorizer.range: two [low, high] pairs with high > low (x, then y), not {v.range}"
        )
    if v.periodic is not None and len(v.periodic) != 2:
        raise ConfigError(f"vectorizer.periodic: two booleans (x, then y), not {v.periodic}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}{extra}")


_SECTIONS = {
    "dataset": DatasetConfig,
    "vectorizer": VectorizerConfig,
    "training": TrainingConfig,
    "scaling": ScalingConfig,
    "staging": StagingConfig,
    "output": OutputConfig,
}


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """An instance of dataclass ``cls`` from ``data``, refusing unknown keys and bad types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping")
    known = {f.name: f for f in fields(cls)}
    unknown = [key for key in data if key not in known]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(str(key), list(known), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(
            f"unknown key {where}{key!r} in the training config{extra} "
            f"(allowed: {', '.join(known)})"
        )
    missing = [
        name
        for name, f in known.items()
        if name not in data and f.default is f.default_factory  # both MISSING: a required key
    ]
    if missing:
        raise ConfigError(f"missing key {where}{missing[0]!r} in the training config")
    values = {}
    for key, value in data.items():
        name = f"{where}{key}"
        if key in _SECTIONS and cls is TrainConfig:
            values[key] = _build(_SECTIONS[key], value or {}, f"{name}.")
        else:
            values[key] = _check_type(name, value, known[key].type)
    return cls(**values)


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    text = str(annotation)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{name} may not be empty")
    if text.startswith("int |") and "dict" in text:  # padding: int, str or mapping
        if isinstance(value, (int, str, dict)) and not isinstance(value, bool):
            return value
    elif text.startswith("list[str]"):
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    elif text.startswith("list[int]"):
        if isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return value
    elif text.startswith("list[bool]"):
        if isinstance(value, list) and all(isinstance(v, bool) for v in value):
            return value
    elif text.startswith("list[list[float]]"):
        if isinstance(value, list) and all(
            isinstance(r, list) and all(_is_number(v) for v in r) for r in value
        ):
            return [[float(v) for v in r] for r in value]
    elif text.startswith("list[float]"):
        if isinstance(value, list) and all(_is_number(v) for v in value):
            return [float(v) for v in value]
    elif text.startswith("dict[str, float | str]"):
        if isinstance(value, dict) and all(
            _is_number(v) or isinstance(v, str) for v in value.values()
        ):
            return {str(k): v if isinstance(v, str) else float(v) for k, v in value.items()}
    elif text.startswith("dict[str, float]"):
        if isinstance(value, dict) and all(_is_number(v) for v in value.values()):
            return {str(k): float(v) for k, v in value.items()}
    elif text.startswith("dict[str, int]"):
        if isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
            return {str(k): int(v) for k, v in value.items()}
    elif text.startswith("bool"):
        if isinstance(value, bool):
            return value
    elif text.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif text.startswith("float"):
        if _is_number(value):
            return float(value)
    elif text.startswith("str"):
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this function does not know
        raise ConfigError(f"{name}: unsupported field type {text}")
    expected = text.replace(" | None", "")
    raise ConfigError(f"{name} must be {expected}, not {type(value).__name__} {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
