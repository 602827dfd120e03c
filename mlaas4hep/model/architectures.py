"""Models: the paper's default classifier (Keras and PyTorch) and user models from a file.

A user model is a Python file defining ``build_model(n_features)`` that returns a Keras
model or a ``torch.nn.Module`` (it is also given ``n_outputs`` and ``task`` when it
names them as parameters); the framework is detected from what it returns unless
the configuration names it. A model that wants the padding mask declares
``with_mask = True`` in that file (or the config says ``training.with_mask``): it then
gets ``{"features": X, "mask": mask}`` instead of ``X``. Models output what their task
(:mod:`~mlaas4hep.model.tasks`) asks: one probability per event (binary), a softmax
over the classes ``[n, C]`` (multiclass), or the value in the target's units
(regression). A user's model for a multiclass task returns probabilities, not logits.

For the image representation (:mod:`mlaas4hep.transform.images`) the default model is a
small CNN: it takes the same ``features`` input, cuts the image out of it (its first
column and bins, :attr:`Vectorizer.image_input`), runs conv 16 → pool → conv 32 → pool
on it and joins the flattened maps with the flat features before dense 64 → dropout 0.5
→ sigmoid. The model's signature stays ``features`` ``[n, F]``, so the ONNX export,
the bundle and serving treat it as any other model.

Keras here means tf-keras (Keras 2): Keras 3 fails under Ray Train's
MultiWorkerMirroredStrategy, so :func:`keras` sets ``TF_USE_LEGACY_KERAS=1`` before
TensorFlow is first imported.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.model.tasks import BINARY, Task
from mlaas4hep.stream.batches import FEATURES, MASK, model_inputs


def keras() -> ModuleType:
    """tf-keras (Keras 2), the Keras that works with MultiWorkerMirroredStrategy."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    extras.tensorflow()
    return extras.require("tf_keras")


def default_keras_model(n_features: int, with_mask: bool = False, task: Task = BINARY) -> Any:
    """The paper's model: dense 128 (ReLU) → dropout 0.5 → dense 64 (ReLU) → the task's
    head (:func:`keras_head`)."""
    k = keras()
    features = k.Input(shape=(n_features,), name=FEATURES)
    x = features
    inputs: Any = features
    if with_mask:  # padded slots zeroed: the model sees the mask through its inputs
        mask = k.Input(shape=(n_features,), name=MASK, dtype="bool")
        x = k.layers.Multiply()([x, k.layers.Lambda(lambda m: k.backend.cast(m, "float32"))(mask)])
        inputs = model_inputs(features, mask, with_mask)
    x = k.layers.Dense(128, activation="relu")(x)
    x = k.layers.Dropout(0.5)(x)
    x = k.layers.Dense(64, activation="relu")(x)
    return k.Model(inputs=inputs, outputs=keras_head(x, task), name="mlaas4hep_default")


def keras_head(x: Any, task: Task) -> Any:
    """The last layer: one sigmoid, a softmax over the classes, or a linear output
    scaled to the regression target (``offset + scale × x``); in float32 under any
    precision policy (mixed precision: see keras_loop)."""
    k = keras()
    out = k.layers.Dense(task.outputs, activation=task.activation, dtype="float32")(x)
    if task.kind == "regression":
        out = k.layers.Rescaling(task.scale, offset=task.offset, dtype="float32")(out)
    return out


ImageInput = tuple[int, int, int]  # first column of the image in X, bins x, bins y


def default_keras_image_model(
    n_features: int, image: ImageInput, with_mask: bool = False, task: Task = BINARY
) -> Any:
    """The default image model in Keras (see the module docstring)."""
    k = keras()
    column, nx, ny = image
    features = k.Input(shape=(n_features,), name=FEATURES)
    x = features
    inputs: Any = features
    if with_mask:
        mask = k.Input(shape=(n_features,), name=MASK, dtype="bool")
        x = k.layers.Multiply()([x, k.layers.Lambda(lambda m: k.backend.cast(m, "float32"))(mask)])
        inputs = model_inputs(features, mask, with_mask)
    pixels = k.layers.Lambda(lambda t: t[:, column : column + nx * ny], name="image")(x)
    maps = k.layers.Reshape((nx, ny, 1))(pixels)
    maps = k.layers.Conv2D(16, 3, padding="same", activation="relu")(maps)
    maps = k.layers.MaxPooling2D(2, padding="same")(maps)
    maps = k.layers.Conv2D(32, 3, padding="same", activation="relu")(maps)
    maps = k.layers.MaxPooling2D(2, padding="same")(maps)
    joined = k.layers.Flatten()(maps)
    if column:
        flat = k.layers.Lambda(lambda t: t[:, :column], name="flat_features")(x)
        joined = k.layers.Concatenate()([flat, joined])
    hidden = k.layers.Dense(64, activation="relu")(joined)
    hidden = k.layers.Dropout(0.5)(hidden)
    out = keras_head(hidden, task)
    return k.Model(inputs=inputs, outputs=out, name="mlaas4hep_default_image")


def default_torch_image_model(
    n_features: int, image: ImageInput, with_mask: bool = False, task: Task = BINARY
) -> Any:
    """The same image model in PyTorch."""
    torch = extras.torch()
    nn = torch.nn
    column, nx, ny = image

    def pooled(n: int) -> int:  # a 2-wide pool that keeps a last odd row (ceil_mode)
        return (n + 1) // 2

    class DefaultImageClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.Flatten(),
            )
            maps = 32 * pooled(pooled(nx)) * pooled(pooled(ny))
            self.head = nn.Sequential(
                nn.Linear(column + maps, 64),
                nn.ReLU(),
                nn.Dropout(0.5),
                *torch_head(64, task),
            )

        def forward(self, x: Any) -> Any:
            if isinstance(x, dict):
                x = x[FEATURES] * x[MASK].to(x[FEATURES].dtype)
            pixels = x[:, column : column + nx * ny].reshape(-1, 1, nx, ny)
            joined = self.conv(pixels)
            if column:
                joined = torch.cat([x[:, :column], joined], dim=1)
            return _squeezed(self.head(joined), task)

    return DefaultImageClassifier()


def torch_head(width: int, task: Task) -> list[Any]:
    """The last layers in PyTorch, as :func:`keras_head`: a linear layer of
    ``task.outputs`` then the sigmoid, the softmax, or ``offset + scale × x``. (The
    linear layer keeps the index it had before tasks, so older bundles load.) The model
    squeezes a single output to ``[n]``."""
    torch = extras.torch()
    nn = torch.nn

    class Scaled(nn.Module):
        def forward(self, x: Any) -> Any:
            return x * task.scale + task.offset

    last = {"binary": nn.Sigmoid, "multiclass": lambda: nn.Softmax(dim=-1)}
    return [nn.Linear(width, task.outputs), last.get(task.kind, Scaled)()]


def _squeezed(out: Any, task: Task) -> Any:
    return out.squeeze(-1) if task.outputs == 1 else out


def default_torch_model(n_features: int, with_mask: bool = False, task: Task = BINARY) -> Any:
    """The same architecture in PyTorch."""
    torch = extras.torch()
    nn = torch.nn

    class DefaultClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(n_features, 128),
                nn.ReLU(),
                nn.Dropout(0.5),
                nn.Linear(128, 64),
                nn.ReLU(),
                *torch_head(64, task),
            )

        def forward(self, x: Any) -> Any:
            if isinstance(x, dict):
                x = x[FEATURES] * x[MASK].to(x[FEATURES].dtype)
            return _squeezed(self.net(x), task)

    return DefaultClassifier()


def read_model_code(path: str | os.PathLike[str]) -> str:
    """The text of a user's model file (it travels to the workers and into the bundle)."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"model file {source} not found")
    return source.read_text()


def load_user_module(code: str, origin: str = "model.py") -> ModuleType:
    """Import a user's model code under a name derived from its content."""
    name = f"mlaas4hep_user_model_{hashlib.sha1(code.encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    module = ModuleType(name)
    module.__file__ = origin
    try:
        exec(compile(code, origin, "exec"), module.__dict__)
    except Exception as err:
        raise ConfigError(f"model file {origin} failed to import: {err!r}") from err
    if not callable(getattr(module, "build_model", None)):
        raise ConfigError(f"model file {origin} must define build_model(n_features)")
    sys.modules[name] = module
    return module


def framework_of(model: Any) -> str:
    """``"torch"`` for a torch.nn.Module, ``"tensorflow"`` for a Keras model."""
    for cls in type(model).__mro__:
        module = cls.__module__ or ""
        if module.startswith("torch.nn"):
            return "torch"
        if module.startswith(("tf_keras", "keras", "tensorflow")):
            return "tensorflow"
    raise ConfigError(
        f"build_model returned a {type(model).__name__}: expected a Keras model or a "
        "torch.nn.Module"
    )


def detect_framework(code: str | None, framework: str) -> str:
    """The framework that trains the model (the configured one unless ``auto``)."""
    if framework != "auto":
        return framework
    if code is None:
        return "tensorflow"
    return _declared(code) or framework_of(call_build_model(load_user_module(code), 2))


def _declared(text: str) -> str | None:
    """A ``framework = "torch"`` line in the user's file saves importing both frameworks."""
    for line in text.splitlines():
        stripped = line.replace(" ", "")
        for name in ("torch", "tensorflow"):
            if stripped in (f'framework="{name}"', f"framework='{name}'"):
                return name
    return None


def build_model(
    code: str | None,
    framework: str,
    n_features: int,
    with_mask: bool,
    image: ImageInput | None = None,
    task: Task = BINARY,
) -> Any:
    """A fresh model: the default one for the task (the CNN when the features hold an
    ``image``), or the user's ``build_model(n_features)``."""
    if code is None:
        if image is not None:
            if framework == "torch":
                return default_torch_image_model(n_features, image, with_mask, task)
            return default_keras_image_model(n_features, image, with_mask, task)
        if framework == "torch":
            return default_torch_model(n_features, with_mask, task)
        return default_keras_model(n_features, with_mask, task)
    if framework == "tensorflow":
        keras()  # tf-keras must be chosen before the user's file imports TensorFlow
    built = call_build_model(load_user_module(code), n_features, task)
    if framework_of(built) != framework:
        raise ConfigError(f"the user's build_model does not return a {framework} model")
    check_outputs(built, framework, n_features, with_mask, task)
    return built


def call_build_model(module: ModuleType, n_features: int, task: Task = BINARY) -> Any:
    """The user's ``build_model(n_features)``, given what else it asks for by name:
    ``n_outputs`` (1, or the number of classes) and ``task`` (the
    :class:`~mlaas4hep.model.tasks.Task`: its kind, classes, a regression's offset and
    scale)."""
    import inspect

    build = module.build_model
    try:
        parameters = inspect.signature(build).parameters
    except (TypeError, ValueError):  # a builtin or C callable: the plain call
        parameters = {}  # type: ignore[assignment]
    extra: dict[str, Any] = {}
    if "n_outputs" in parameters:
        extra["n_outputs"] = task.outputs
    if "task" in parameters:
        extra["task"] = task
    return build(n_features, **extra)


def check_outputs(model: Any, framework: str, n_features: int, with_mask: bool, task: Task) -> None:
    """Refuse, before any training step, a model whose output width is not the task's
    (one value per event, or one probability per class)."""
    import numpy as np

    from mlaas4hep.model.frameworks import predict_arrays

    X = np.zeros((2, n_features), dtype=np.float32)
    training = getattr(model, "training", None) if framework == "torch" else None
    try:
        if training:
            model.eval()  # a batch norm's running statistics stay as built
        out = predict_arrays(model, framework, X, np.ones(X.shape, dtype=bool), with_mask)
    except Exception as err:
        raise ConfigError(
            f"the user's model fails on a batch of [2, {n_features}] features: "
            f"{type(err).__name__}: {err}"
        ) from None
    finally:
        if training:
            model.train()
    if out.size != 2 * task.outputs:
        raise ConfigError(
            f"the user's model gives {out.size // 2} value(s) per event; task {task.kind} "
            f"needs {task.outputs} (build_model may take n_outputs or task by name)"
        )


def wants_mask(code: str | None, configured: bool) -> bool:
    """Whether the model takes ``{"features", "mask"}``: configured, or declared in its file."""
    if configured or code is None:
        return configured
    return bool(getattr(load_user_module(code), "with_mask", False))
