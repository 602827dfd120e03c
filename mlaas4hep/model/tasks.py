"""What a model learns: a binary score, one probability per class, or a regressed value.

One :class:`Task` travels from the training config through the workers, the ONNX check
and the bundle to serving, so that every place that shapes scores, computes a loss or a
metric, or names the outputs agrees:

============  ========================  ===========================  =====================
task          output per event          loss                         metrics
============  ========================  ===========================  =====================
binary        1 probability (sigmoid)   binary cross-entropy         exact ROC AUC
multiclass    C probabilities (softmax) categorical cross-entropy    one-vs-rest AUC per
                                                                     class, their mean,
                                                                     accuracy, confusion
regression    the value itself          MSE or Huber, on the target  bias, RMS, MAE,
                                        in units of its spread       resolution
============  ========================  ===========================  =====================

Labels are float32 per event as the streams give them: 0/1, the class index, or the
target. For regression the default model's last layer is followed by ``offset +
scale × x`` (the training target's mean and standard deviation, measured by the job on
its first chunk), so it starts where the target is and its output is in the target's
units; the loss divides the residual by ``scale`` for the same reason, so one learning
rate fits a target in GeV as well as one near 1. Sample weights enter every loss and
metric (a loss is the mean of ``w × loss`` over the events, as Keras and torch reduce
it; a metric is weighted by ``w``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from mlaas4hep.errors import ConfigError
from mlaas4hep.model.metrics import auc

TASKS = ("binary", "multiclass", "regression")
LOSSES = {"binary": ("bce",), "multiclass": ("cce",), "regression": ("mse", "huber")}
#: The metric each task is judged and promoted by, and whether a larger value is better.
PRIMARY = {"binary": ("auc", True), "multiclass": ("auc", True), "regression": ("loss", False)}
_EPS = 1e-7


@dataclass(frozen=True)
class Task:
    """The task of a model (see the module docstring)."""

    kind: str = "binary"
    classes: tuple[str, ...] = ()
    loss: str = "bce"
    #: regression: the default model outputs ``offset + scale × net(x)``; the loss is
    #: computed on residuals divided by ``scale``
    offset: float = 0.0
    scale: float = 1.0
    #: Huber's threshold in units of ``scale``
    delta: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, not {self.kind!r}")
        if self.loss not in LOSSES[self.kind]:
            raise ConfigError(
                f"training.loss {self.loss!r} does not fit task {self.kind} "
                f"(allowed: {', '.join(LOSSES[self.kind])})"
            )
        if self.kind == "multiclass":
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise ConfigError(
                    f"task multiclass needs two or more distinct class names, not {self.classes}"
                )
        elif self.classes:
            raise ConfigError(f"class names belong to task multiclass, not {self.kind}")
        if not (np.isfinite(self.scale) and self.scale > 0 and np.isfinite(self.offset)):
            raise ConfigError(f"the regression target's scale must be > 0, not {self.scale}")
        if not self.delta > 0:
            raise ConfigError(f"training.huber_delta must be > 0, not {self.delta}")

    # --- shape ----------------------------------------------------------------------
    @property
    def outputs(self) -> int:
        """Values the model gives per event."""
        return len(self.classes) if self.kind == "multiclass" else 1

    @property
    def activation(self) -> str | None:
        """The last layer's activation of the default models (None: linear)."""
        return {"binary": "sigmoid", "multiclass": "softmax"}.get(self.kind)

    @property
    def output_names(self) -> list[str]:
        """What each output column is: ``score``, the class names, or ``value``."""
        if self.kind == "multiclass":
            return list(self.classes)
        return ["score" if self.kind == "binary" else "value"]

    @property
    def train_metric(self) -> str:
        """The metric the training loops report per unit next to the loss."""
        return {"binary": "auc", "multiclass": "accuracy"}.get(self.kind, "mae")

    def shaped(self, values: Any) -> np.ndarray:
        """Model outputs as float32 ``[n]`` (one output) or ``[n, C]``."""
        return shaped(values, self.outputs)

    # --- loss and metrics -------------------------------------------------------------
    def loss_value(
        self, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
    ) -> float:
        """The training loss of ``scores`` against ``labels`` (numpy, float64)."""
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        p = np.asarray(scores, dtype=np.float64)
        if self.kind == "binary":
            p = np.clip(p.reshape(-1), _EPS, 1 - _EPS)
            per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        elif self.kind == "multiclass":
            p = p.reshape(len(y), self.outputs)
            picked = p[np.arange(len(y)), class_indices(y, self.outputs)]
            per = -np.log(np.clip(picked, _EPS, 1.0))
        else:
            r = np.abs(p.reshape(-1) - y) / self.scale
            per = r**2 if self.loss == "mse" else huber(r, self.delta)
        if weights is None:
            return float(np.mean(per)) if per.size else float("nan")
        # the frameworks' reduction: the mean of w × loss over the events
        return float(np.mean(per * np.asarray(weights, dtype=np.float64).reshape(-1)))

    def metrics(
        self, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Every metric of the task (weighted when ``weights`` is given); the primary
        one under its :data:`PRIMARY` name (``auc``, or ``loss`` for regression)."""
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        out: dict[str, Any] = {"loss": self.loss_value(y, scores, weights)}
        if self.kind == "binary":
            out["auc"] = _safe_auc(y, np.asarray(scores).reshape(-1), weights)
        elif self.kind == "multiclass":
            p = np.asarray(scores, dtype=np.float64).reshape(len(y), self.outputs)
            index = class_indices(y, self.outputs)
            per_class = {
                name: _safe_auc(index == c, p[:, c], weights) for c, name in enumerate(self.classes)
            }
            finite = [v for v in per_class.values() if np.isfinite(v)]
            out["auc"] = float(np.mean(finite)) if finite else float("nan")
            out["auc_per_class"] = per_class
            out["accuracy"] = _weighted_mean(np.argmax(p, axis=1) == index, weights)
            out["confusion"] = confusion_matrix(index, np.argmax(p, axis=1), self.outputs, weights)
        else:
            residual = np.asarray(scores, dtype=np.float64).reshape(-1) - y
            out["bias"] = _weighted_mean(residual, weights)
            out["rmse"] = float(np.sqrt(_weighted_mean(residual**2, weights)))
            out["mae"] = _weighted_mean(np.abs(residual), weights)
            out["resolution"] = resolution(y, residual, weights)
        return out

    def primary(self, metrics: Mapping[str, Any]) -> float | None:
        """The primary metric's value in ``metrics`` (None when absent)."""
        value = metrics.get(PRIMARY[self.kind][0])
        return None if value is None else float(value)

    # --- documents ----------------------------------------------------------------------
    def with_target(self, labels: np.ndarray, weights: np.ndarray | None = None) -> Task:
        """A regression task whose offset and scale are the (weighted) mean and standard
        deviation of ``labels``; any other task unchanged."""
        if self.kind != "regression":
            return self
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        y = y[np.isfinite(y)]
        if y.size == 0:
            raise ConfigError("the regression target has no finite value in the first chunk")
        w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w is not None:
            w = w[np.isfinite(np.asarray(labels, dtype=np.float64).reshape(-1))]
        mean = float(np.average(y, weights=w)) if w is not None and w.sum() > 0 else y.mean()
        spread = float(np.sqrt(np.mean((y - mean) ** 2)))
        return replace(self, offset=float(mean), scale=spread if spread > 0 else 1.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Task:
        """The task a manifest or worker config records (none: binary, as before tasks)."""
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"task must be an object, not {type(data).__name__}")
        allowed = {"kind", "classes", "loss", "offset", "scale", "delta"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"task: unknown key {sorted(unknown)[0]!r}")
        classes = data.get("classes") or ()
        if not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
            raise ConfigError("task.classes must be a list of class names")
        kind = str(data.get("kind", "binary"))
        default_loss = LOSSES.get(kind, ("bce",))[0]
        try:
            return cls(
                kind=kind,
                classes=tuple(classes),
                loss=str(data.get("loss", default_loss)),
                offset=float(data.get("offset", 0.0)),
                scale=float(data.get("scale", 1.0)),
                delta=float(data.get("delta", 1.0)),
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"task: {err}") from None


BINARY = Task()


def shaped(values: Any, outputs: int) -> np.ndarray:
    """``values`` as float32 ``[n]`` when there is one output per event, else ``[n, C]``."""
    a = np.asarray(values, dtype=np.float32)
    return a.reshape(-1) if outputs == 1 else a.reshape(-1, outputs)


def max_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference of two models' outputs, relative where a value exceeds 1:
    probabilities are compared absolutely, a regressed value in GeV to float32's own
    precision (``|a - b| / max(1, |b|)``)."""
    a = np.asarray(got, dtype=np.float64).reshape(-1)
    b = np.asarray(expected, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


def class_indices(labels: np.ndarray, classes: int) -> np.ndarray:
    """Float labels as class indices; ValueError for one outside ``0..classes-1``."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    index = y.astype(np.int64)
    bad = (index != y) | (index < 0) | (index >= classes)
    if bad.any():
        raise ValueError(f"label {y[np.argmax(bad)]!r} is not a class index 0..{classes - 1}")
    return index


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber's loss of absolute residuals ``r``: quadratic below ``delta``, linear above."""
    return np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))


def confusion_matrix(
    truth: np.ndarray, predicted: np.ndarray, classes: int, weights: np.ndarray | None = None
) -> list[list[float]]:
    """Row: true class, column: predicted class; each row normalised to 1 (weighted)."""
    w = np.ones(len(truth)) if weights is None else np.asarray(weights, dtype=np.float64)
    counts = np.bincount(truth * classes + predicted, weights=w, minlength=classes * classes)
    matrix = counts.reshape(classes, classes)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0).tolist()


def resolution(target: np.ndarray, residual: np.ndarray, weights: np.ndarray | None) -> float:
    """Half the 16–84 % interval of ``residual / |target|`` (events with target ≠ 0):
    the relative resolution as a physicist quotes it, robust to the tails."""
    keep = np.abs(target) > 0
    if not keep.any():
        return float("nan")
    relative = residual[keep] / np.abs(target[keep])
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[keep]
    low, high = weighted_quantiles(relative, [0.16, 0.84], w)
    return float((high - low) / 2)


def weighted_quantiles(
    values: np.ndarray, q: Sequence[float], weights: np.ndarray | None = None
) -> np.ndarray:
    """Quantiles ``q`` of ``values`` with ``weights`` (the plain ones without)."""
    if weights is None:
        return np.quantile(values, q)
    order = np.argsort(values, kind="stable")
    v, w = values[order], np.clip(weights[order], 0, None)
    cumulative = np.cumsum(w) - 0.5 * w
    if cumulative[-1] <= 0:
        return np.quantile(values, q)
    return np.interp(np.asarray(q) * w.sum(), cumulative, v)


def _weighted_mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    """The mean of ``values`` weighted by ``weights`` (sum of w × v over sum of w)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return float("nan")
    if weights is None:
        return float(np.mean(v))
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    return float(np.sum(v * w) / np.sum(w)) if np.sum(w) > 0 else float("nan")


def _safe_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None) -> float:
    """The exact AUC, or NaN where a class is missing from the events."""
    try:
        return auc(labels, scores, weights)
    except ValueError:
        return float("nan")
