"""The serving configuration: which model to serve, who may change the registry, limits.

Read once per process by ``serving/service.py`` from an optional YAML file (its path in
``MLAAS4HEP_SERVE_CONFIG``) and then from environment variables, which win:

==================================  =======================================================
``MLAAS4HEP_SERVE_MODEL``           what to serve: ``name`` (its ``production`` alias, else
                                    its latest version), ``name:alias``, ``name:version``,
                                    or a bare alias held by one model (default
                                    ``production``); aliases are followed live
``MLAAS4HEP_SERVE_TOKEN``           the bearer token for mutating registry endpoints (no
                                    token: those endpoints are refused; never a default)
``MLAAS4HEP_SERVE_PREDICT_AUTH``    ``1``: prediction and every read endpoint need the
                                    token too (``/metrics`` included)
``MLAAS4HEP_SERVE_OPEN_METRICS``    ``1``: ``/metrics`` stays open under predict-auth (for
                                    a scraper that cannot send a token)
``MLAAS4HEP_SERVE_TRUST_USER_CODE`` ``1``: load bundles that hold a user ``model.py``
                                    (arbitrary code); off by default (safe mode)
``MLAAS4HEP_SERVE_WORKERS``         worker processes (default: 2)
``MLAAS4HEP_SERVE_ENGINE``          what scores: ``auto`` (the bundle's ONNX graph with
                                    ONNX Runtime, else the numpy forward pass of the
                                    default model), ``onnx`` or ``numpy`` (that one only:
                                    a bundle without it is not loaded)
``MLAAS4HEP_SERVE_BULK_THREADS``    ONNX Runtime threads for the blocks of a bulk request
                                    (default 0: the CPUs this process may run on); one-event
                                    requests keep one thread per worker
``MLAAS4HEP_MODELS_BUCKET``         ``s3://`` prefix of the shared registry: versions and
                                    aliases live there, every replica follows them, the
                                    local store is a cache (none: the local store alone)
``MLAAS4HEP_SERVE_FILE_SOURCES``    comma-separated ``s3://bucket/prefix``,
                                    ``root://host[:port]/path`` and
                                    ``https://host[:port]/path`` prefixes that
                                    ``POST /predict_file`` may read by URL (default: the
                                    data bucket, ``MLAAS4HEP_DATA_BUCKET``; none: only
                                    uploaded files are scored)
``MLAAS4HEP_SERVE_MEMORY_MIB``      memory of the task (MiB) the default limits are sized
                                    from (default: the container's cgroup limit, else the
                                    machine's memory)
==================================  =======================================================

The YAML file takes the same settings by their field names (``model``, ``token``,
``predict_requires_token``, ``open_metrics``, ``trust_user_code``, ``engine``,
``bulk_threads``, ``workers``, ``models_bucket``, ``poll_seconds``, ``file_sources``)
plus the ``limits`` below; unknown keys are refused with a suggestion. Limits not given
are sized from the task's memory and the number of workers (:meth:`Limits.sized`): each
worker may hold one bulk request at a time, so what one request may decode is its share
of the memory, not a fixed number.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve.protocol import DEFAULT_ALIAS
from mlaas4hep.serve.sources import parse_source

ENV_PREFIX = "MLAAS4HEP_SERVE_"
MiB = 1 << 20
GiB = 1 << 30
#: Bytes of memory a bulk request may take per event it scores, roughly: its columns as
#: decoded, the padded feature matrix and the scores (a few hundred bytes for a NanoAOD-
#: like model); sizes ``bulk_events`` from a worker's share of the memory.
BYTES_PER_EVENT = 1024


@dataclass(frozen=True)
class Limits:
    """Request limits: above them a request gets a 413 naming the limit, before the work.

    The defaults are those of a 2 GiB task with 2 workers (the Fargate default of the
    deployment); :meth:`sized` scales them to another memory and worker count.
    """

    json_bytes: int = 16 * MiB  # POST /predict body
    bulk_bytes: int = 128 * MiB  # POST /predict_arrow body (Arrow IPC or Parquet)
    file_bytes: int = 128 * MiB  # POST /predict_file body (a ROOT file upload)
    model_bytes: int = 512 * MiB  # POST /models (an uploaded archive)
    model_unpacked_bytes: int = 2048 * MiB  # an archive's content once unpacked
    decoded_bytes: int = 256 * MiB  # an Arrow/Parquet body once decompressed
    json_events: int = 100_000  # events in one /predict body
    bulk_events: int = 1 << 20  # events in one /predict_arrow or /predict_file request
    list_items: int = 10_000  # items in one event's list (a jagged branch)
    batch_events: int = 4096  # events scored together by the adaptive batcher
    file_step_events: int = 100_000  # events read per chunk of a ROOT file

    @classmethod
    def sized(cls, memory_bytes: int, workers: int, **given: int) -> Limits:
        """Limits for a task of ``memory_bytes`` running ``workers`` workers.

        A worker's share of the memory bounds what one bulk request may decode (a
        quarter of it: the decoded columns, the feature matrix and the scores are held
        together, next to the model and the interpreter), the compressed body it may send
        (an eighth, never above 1 GiB) and the events it may hold. ``given`` limits (from
        the configuration) are kept as they are.
        """
        share = max(memory_bytes // max(workers, 1), 256 * MiB)
        sized = {
            "bulk_bytes": min(share // 8, GiB),
            "file_bytes": min(share // 8, GiB),
            "decoded_bytes": share // 4,
            "bulk_events": max(10_000, share // BYTES_PER_EVENT),
        }
        return cls(**{**sized, **given})


@dataclass(frozen=True)
class ServeConfig:
    """Everything the service reads at start-up (see the module docstring)."""

    model: str = DEFAULT_ALIAS
    token: str | None = None
    predict_requires_token: bool = False
    open_metrics: bool = False
    trust_user_code: bool = False
    engine: str = "auto"
    bulk_threads: int = 0
    workers: int = 2
    models_bucket: str | None = None
    poll_seconds: float = 1.0
    file_sources: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("serving config: model may not be empty")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("serving config: token must be at least 16 characters long")
        if self.workers < 1:
            raise ConfigError(f"serving config: workers must be >= 1, not {self.workers}")
        if self.engine not in ENGINES:
            raise ConfigError(
                f"serving config: engine must be one of {', '.join(ENGINES)}, not {self.engine!r}"
            )
        if self.bulk_threads < 0:
            raise ConfigError(f"serving config: bulk_threads must be >= 0, not {self.bulk_threads}")
        if self.poll_seconds <= 0:
            raise ConfigError("serving config: poll_seconds must be > 0")
        for f in fields(Limits):
            if getattr(self.limits, f.name) <= 0:
                raise ConfigError(f"serving config: limits.{f.name} must be > 0")
        for source in self.file_sources:
            check_source(source)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """The YAML file named by ``MLAAS4HEP_SERVE_CONFIG`` (if any), then the env vars."""
        env = os.environ if environ is None else environ
        path = env.get(ENV_PREFIX + "CONFIG")
        data = _yaml(path) if path else {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping of settings")
        data = dict(data)
        if "file_sources" not in data and env.get("MLAAS4HEP_DATA_BUCKET"):
            data["file_sources"] = [f"s3://{env['MLAAS4HEP_DATA_BUCKET']}/"]
        if env.get(ENV_PREFIX + "FILE_SOURCES") is not None:
            sources = env[ENV_PREFIX + "FILE_SOURCES"].split(",")
            data["file_sources"] = [s.strip() for s in sources if s.strip()]
        workers = None  # the file's, unless the environment says otherwise
        if env.get(ENV_PREFIX + "WORKERS"):
            workers = _integer(ENV_PREFIX + "WORKERS", env[ENV_PREFIX + "WORKERS"])
        memory = task_memory(env)
        config = cls.from_dict(data, where=path or "serving config", memory=memory, workers=workers)
        updates: dict[str, Any] = {}
        for key, name in (("model", "MODEL"), ("token", "TOKEN"), ("engine", "ENGINE")):
            if env.get(ENV_PREFIX + name):
                updates[key] = env[ENV_PREFIX + name]
        for key, name in (
            ("predict_requires_token", "PREDICT_AUTH"),
            ("open_metrics", "OPEN_METRICS"),
            ("trust_user_code", "TRUST_USER_CODE"),
        ):
            if env.get(ENV_PREFIX + name):
                updates[key] = _flag(ENV_PREFIX + name, env[ENV_PREFIX + name])
        if workers is not None:
            updates["workers"] = workers
        if env.get(ENV_PREFIX + "BULK_THREADS"):
            value = env[ENV_PREFIX + "BULK_THREADS"]
            updates["bulk_threads"] = _integer(ENV_PREFIX + "BULK_THREADS", value)
        if env.get("MLAAS4HEP_MODELS_BUCKET"):
            updates["models_bucket"] = env["MLAAS4HEP_MODELS_BUCKET"]
        return replace(config, **updates)

    @classmethod
    def from_yaml(cls, path: str) -> ServeConfig:
        return cls.from_dict(_yaml(path), where=path)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        where: str = "serving config",
        *,
        memory: int | None = None,
        workers: int | None = None,
    ) -> ServeConfig:
        """The settings of ``data``; with ``memory`` (bytes), the limits it does not give
        are sized for that memory and ``workers`` (default: its own ``workers``)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of settings")
        values = _checked(cls, data, where)
        given = _checked(Limits, values.pop("limits", None) or {}, where, "limits.")
        if memory is None:
            values["limits"] = Limits(**given)
        else:
            values["limits"] = Limits.sized(memory, workers or values.get("workers", 2), **given)
        if "file_sources" in values:
            values["file_sources"] = tuple(values["file_sources"])
        return cls(**values)

    @property
    def threads_for_bulk(self) -> int:
        """ONNX Runtime's threads for a bulk request's blocks: ``bulk_threads``, or the
        CPUs this process may run on (the threads do not spin: a worker that waits for
        the next request leaves its cores to the others)."""
        if self.bulk_threads:
            return self.bulk_threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)

    def public(self) -> dict[str, Any]:
        """The settings without the token (for ``GET /status`` and logs)."""
        return {
            "model": self.model,
            "token_configured": self.token is not None,
            "predict_requires_token": self.predict_requires_token,
            "open_metrics": self.open_metrics,
            "trust_user_code": self.trust_user_code,
            "engine": self.engine,
            "bulk_threads": self.threads_for_bulk,
            "workers": self.workers,
            "models_bucket": self.models_bucket,
            "file_sources": list(self.file_sources),
            "limits": {f.name: getattr(self.limits, f.name) for f in fields(Limits)},
        }


def _checked(cls: type, data: Any, where: str, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping")
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            hint = difflib.get_close_matches(str(key), list(known), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{where}: unknown key {prefix}{key!r}{extra} (allowed: {', '.join(known)})"
            )
        kind = str(known[key].type)
        name = f"{prefix}{key}"
        if kind == "Limits":
            out[key] = value
        elif kind.startswith("tuple"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {name} must be a list of strings, not {value!r}")
            out[key] = value
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {name} must be true or false, not {value!r}")
            out[key] = value
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}: {name} must be an integer, not {value!r}")
            out[key] = value
        elif kind == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}: {name} must be a number, not {value!r}")
            out[key] = float(value)
        else:  # str or str | None
            if not (isinstance(value, str) or (value is None and "None" in kind)):
                raise ConfigError(f"{where}: {name} must be a string, not {value!r}")
            out[key] = value
    return out


#: What scores a bundle (see the module docstring).
ENGINES = ("auto", "onnx", "numpy")

_SOURCE = re.compile(
    r"^(s3://[a-z0-9][a-z0-9.-]{1,62}/|(root|https?)://[A-Za-z0-9.-]+(:[0-9]{1,5})?/)"
)


def check_source(source: str) -> str:
    """``source`` if it can be a ``file_sources`` entry: an ``s3://bucket/``,
    ``root://host[:port]/`` or ``https://host[:port]/`` (``http://``) prefix (with an
    optional path after the slash), which
    :func:`~mlaas4hep.serve.sources.parse_source`, the rule requests are matched by,
    accepts."""
    if not _SOURCE.match(source) or parse_source(source) is None:
        raise ConfigError(
            f"serving config: file source {source!r}: write s3://bucket/prefix, "
            "root://host[:port]/path or https://host[:port]/path (with the slash after "
            "the bucket or host)"
        )
    return source


def task_memory(environ: Mapping[str, str]) -> int:
    """Bytes of memory the service may use: ``MLAAS4HEP_SERVE_MEMORY_MIB``, else the
    container's cgroup limit, else the machine's physical memory."""
    value = environ.get(ENV_PREFIX + "MEMORY_MIB")
    if value:
        mib = _integer(ENV_PREFIX + "MEMORY_MIB", value)
        if mib <= 0:
            raise ConfigError(f"{ENV_PREFIX}MEMORY_MIB must be > 0, not {mib}")
        return mib * MiB
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < physical:
            return int(text)
    return physical


def _yaml(path: str) -> Any:
    import yaml

    try:
        with open(path) as fh:
            return yaml.safe_load(fh) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"serving config {path} not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"serving config {path} is not valid YAML: {err}") from err


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, not {value!r}")


def _integer(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError as err:
        raise ConfigError(f"{name} must be an integer, not {value!r}") from err
