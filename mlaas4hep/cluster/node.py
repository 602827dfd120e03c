"""One node of the Ray cluster that ``infra/modules/ray_cluster`` declares.

The node's systemd unit runs ``mlaas4hep cluster start-node``: it reads the cluster's
token from Secrets Manager (the head makes one and puts it there when the secret has no
value yet; a worker waits until the head did), then replaces itself with ``ray start
--block`` under Ray's token authentication (``RAY_AUTH_MODE=token``), so that systemd
supervises Ray itself. The token is passed in the environment, never on a command line
(which every user of the machine can read in ``/proc``).
"""

from __future__ import annotations

import json
import os
import secrets as token_source
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlaas4hep.errors import ConfigError
from mlaas4hep.io.aws import secret_string

ROLES = ("head", "worker")
#: How long a worker waits for the head to put the token (the head installs the same
#: packages first, so minutes).
TOKEN_WAIT_SECONDS = 1800.0


@dataclass(frozen=True)
class NodeSettings:
    """What one node is: its role and ports, where its token is, what its jobs see.

    ``head_address`` (host:port of the head's GCS) is required of a worker; ``num_cpus``
    and ``num_gpus`` (None: what Ray detects) are what the node offers to Ray tasks."""

    role: str
    head_address: str = ""
    gcs_port: int = 6379
    dashboard_port: int = 8265
    num_cpus: int | None = None
    num_gpus: int | None = None
    token_secret: str = ""
    create_token: bool = False
    environment: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"node role {self.role!r}: expected one of {', '.join(ROLES)}")
        if self.role == "worker" and not self.head_address:
            raise ConfigError("a worker node needs the head's address (--head-address)")
        if self.create_token and self.role != "head":
            raise ConfigError("only the head makes the cluster's token (--create-token)")
        for name, value in self.environment.items():
            if not isinstance(name, str) or not isinstance(value, str) or not name:
                raise ConfigError(f"node environment: {name!r} must map a name to a string")


def ray_start_command(settings: NodeSettings, ray: str = "ray") -> list[str]:
    """``ray start --block`` for this node: the head with its GCS and dashboard (the Jobs
    API) on every interface of the instance, which only the security groups narrow; a
    worker joining the head's GCS."""
    if settings.role == "head":
        command = [
            ray,
            "start",
            "--head",
            "--block",
            f"--port={settings.gcs_port}",
            "--dashboard-host=0.0.0.0",
            f"--dashboard-port={settings.dashboard_port}",
            "--include-dashboard=true",
        ]
    else:
        command = [ray, "start", "--block", f"--address={settings.head_address}"]
    if settings.num_cpus is not None:
        command.append(f"--num-cpus={settings.num_cpus}")
    if settings.num_gpus is not None:
        command.append(f"--num-gpus={settings.num_gpus}")
    return [*command, "--disable-usage-stats"]


def cluster_token(
    settings: NodeSettings,
    client: Any,
    *,
    wait_seconds: float = TOKEN_WAIT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """The cluster's token from ``settings.token_secret`` ("" without a secret: Ray runs
    without authentication).

    The head, with ``create_token``, puts a fresh random token when the secret has no
    value (a first boot); a node without that right waits for a value, polling with
    backoff up to ``wait_seconds``, then fails naming the secret.
    """
    if not settings.token_secret:
        return ""
    token = secret_string(client, settings.token_secret)
    if token:
        return token
    if settings.create_token:
        token = token_source.token_urlsafe(32)
        client.put_secret_value(SecretId=settings.token_secret, SecretString=token)
        # Read back: a token someone put meanwhile (the newest version) wins, so that
        # every node and client agrees on one.
        return secret_string(client, settings.token_secret) or token
    deadline = clock() + wait_seconds
    delay = 2.0
    while clock() < deadline:
        sleep(delay)
        token = secret_string(client, settings.token_secret)
        if token:
            return token
        delay = min(delay * 2, 30.0)
    raise ConfigError(
        f"the Ray token secret {settings.token_secret} still has no value after "
        f"{wait_seconds:g} s: the head puts one when it starts (is it running?)"
    )


def node_environment(
    settings: NodeSettings, token: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of ``ray start``, hence of every job the node runs: ``base``
    (this process's), the node's ``environment``, and token authentication when there
    is a token (without one, authentication is off whatever ``base`` says)."""
    env = dict(os.environ if base is None else base)
    env.update(settings.environment)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_AUTH_TOKEN", None)
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    return env


def read_environment_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The node's extra environment: a JSON object of names to strings (written by the
    node's user data from Terraform's ``environment``)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"node environment file {path}: {err}") from err
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"node environment file {path}: expected a JSON object of strings")
    return value


def ray_executable() -> str:
    """The ``ray`` of this Python environment (the node's virtualenv), else PATH's."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def start_node(
    settings: NodeSettings,
    client: Any,
    *,
    execute: Callable[[str, Sequence[str], Mapping[str, str]], Any] = os.execve,
) -> Any:
    """Read the token, then run ``ray start --block`` in place of this process
    (``execute``, :func:`os.execve` by default: it does not return)."""
    token = cluster_token(settings, client)
    command = ray_start_command(settings, ray_executable())
    return execute(command[0], command, node_environment(settings, token))
