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
``MLAAS4HEP_SERVE_PREDICT_AUTH``    ``1``: prediction endpoints need the token too
``MLAAS4HEP_SERVE_TRUST_USER_CODE`` ``1``: load bundles that hold a user ``model.py``
                                    (arbitrary code); off by default (safe mode)
``MLAAS4HEP_SERVE_WORKERS``         worker processes (default: 2)
``MLAAS4HEP_MODELS_BUCKET``         ``s3://`` prefix to pull ``<name>/<run>/`` bundles from
                                    when the served model is not in the local store
==================================  =======================================================

The YAML file takes the same settings by their field names (``model``, ``token``,
``predict_requires_token``, ``trust_user_code``, ``workers``, ``models_bucket``,
``poll_seconds``) plus the ``limits`` below; unknown keys are refused with a suggestion.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve.protocol import DEFAULT_ALIAS

ENV_PREFIX = "MLAAS4HEP_SERVE_"
MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Request limits: bodies above them get a 413, batches are cut at ``batch_events``."""

    json_bytes: int = 16 * MiB  # POST /predict
    bulk_bytes: int = 1024 * MiB  # POST /predict_arrow
    file_bytes: int = 1024 * MiB  # POST /predict_file (a ROOT file upload)
    model_bytes: int = 512 * MiB  # POST /models (an uploaded archive)
    model_unpacked_bytes: int = 2048 * MiB  # an archive's content once unpacked
    json_events: int = 100_000  # events in one /predict body
    batch_events: int = 4096  # events scored together by the adaptive batcher
    file_step_events: int = 100_000  # events read per chunk of a ROOT file


@dataclass(frozen=True)
class ServeConfig:
    """Everything the service reads at start-up (see the module docstring)."""

    model: str = DEFAULT_ALIAS
    token: str | None = None
    predict_requires_token: bool = False
    trust_user_code: bool = False
    workers: int = 2
    models_bucket: str | None = None
    poll_seconds: float = 1.0
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("serving config: model may not be empty")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("serving config: token must be at least 16 characters long")
        if self.workers < 1:
            raise ConfigError(f"serving config: workers must be >= 1, not {self.workers}")
        if self.poll_seconds <= 0:
            raise ConfigError("serving config: poll_seconds must be > 0")
        for f in fields(Limits):
            if getattr(self.limits, f.name) <= 0:
                raise ConfigError(f"serving config: limits.{f.name} must be > 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """The YAML file named by ``MLAAS4HEP_SERVE_CONFIG`` (if any), then the env vars."""
        env = os.environ if environ is None else environ
        config = cls()
        path = env.get(ENV_PREFIX + "CONFIG")
        if path:
            config = cls.from_yaml(path)
        updates: dict[str, Any] = {}
        for key, name in (("model", "MODEL"), ("token", "TOKEN")):
            if env.get(ENV_PREFIX + name):
                updates[key] = env[ENV_PREFIX + name]
        for key, name in (
            ("predict_requires_token", "PREDICT_AUTH"),
            ("trust_user_code", "TRUST_USER_CODE"),
        ):
            if env.get(ENV_PREFIX + name):
                updates[key] = _flag(ENV_PREFIX + name, env[ENV_PREFIX + name])
        if env.get(ENV_PREFIX + "WORKERS"):
            updates["workers"] = _integer(ENV_PREFIX + "WORKERS", env[ENV_PREFIX + "WORKERS"])
        if env.get("MLAAS4HEP_MODELS_BUCKET"):
            updates["models_bucket"] = env["MLAAS4HEP_MODELS_BUCKET"]
        return replace(config, **updates)

    @classmethod
    def from_yaml(cls, path: str) -> ServeConfig:
        import yaml

        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"serving config {path} not found") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"serving config {path} is not valid YAML: {err}") from err
        return cls.from_dict(data, where=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "serving config") -> ServeConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of settings")
        values = _checked(cls, data, where)
        if "limits" in values:
            values["limits"] = Limits(**_checked(Limits, values["limits"] or {}, where, "limits."))
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The settings without the token (for ``GET /status`` and logs)."""
        return {
            "model": self.model,
            "token_configured": self.token is not None,
            "predict_requires_token": self.predict_requires_token,
            "trust_user_code": self.trust_user_code,
            "workers": self.workers,
            "models_bucket": self.models_bucket,
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
