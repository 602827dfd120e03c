"""The Ray cluster's node start (mlaas4hep.cluster.node): the command, the environment,
the token's life (made by the head on first boot, waited for by workers). The same
command runs against moto's Secrets Manager in tests/integration/test_infra_ray_cluster.py."""

from __future__ import annotations

import pytest

from mlaas4hep.cli import main as cli_main
from mlaas4hep.cluster.node import (
    NodeSettings,
    cluster_token,
    node_environment,
    ray_start_command,
    read_environment_file,
)
from mlaas4hep.errors import ConfigError


class NoValue(Exception):
    """What botocore raises for a secret without a value (its error code is read)."""

    def __init__(self) -> None:
        super().__init__("no value")
        self.response = {"Error": {"Code": "ResourceNotFoundException"}}


class Secrets:
    """Secrets Manager's two calls the node makes, over one secret held in memory; the
    value appears after ``appears_after`` reads (a head putting it meanwhile)."""

    def __init__(self, value: str = "", appears_after: int | None = None) -> None:
        self.value, self.appears_after, self.reads, self.puts = value, appears_after, 0, []

    def get_secret_value(self, SecretId: str) -> dict:
        self.reads += 1
        if self.appears_after is not None and self.reads > self.appears_after:
            self.value = "put-by-the-head"
        if not self.value:
            raise NoValue()
        return {"SecretString": self.value + "\n"}

    def put_secret_value(self, SecretId: str, SecretString: str) -> None:
        self.puts.append(SecretString)
        self.value = SecretString


def test_head_and_worker_commands():
    head = ray_start_command(NodeSettings(role="head", num_cpus=0), ray="ray")
    assert head[:4] == ["ray", "start", "--head", "--block"]
    assert "--dashboard-port=8265" in head and "--port=6379" in head and "--num-cpus=0" in head
    worker = ray_start_command(NodeSettings(role="worker", head_address="10.0.0.10:6379"))
    assert "--address=10.0.0.10:6379" in worker and "--head" not in worker


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"role": "driver"}, "role"),
        ({"role": "worker"}, "--head-address"),
        ({"role": "worker", "head_address": "h:1", "create_token": True}, "only the head"),
        ({"role": "head", "environment": {"A": 1}}, "environment"),
    ],
)
def test_bad_settings_are_refused_naming_them(settings, named):
    with pytest.raises(ConfigError, match=named):
        NodeSettings(**settings)


def test_the_head_makes_the_token_once_and_keeps_it():
    secrets = Secrets()
    settings = NodeSettings(role="head", token_secret="arn:secret", create_token=True)
    token = cluster_token(settings, secrets)
    assert len(token) >= 32 and secrets.puts == [token]
    assert cluster_token(settings, secrets) == token and len(secrets.puts) == 1


def test_a_worker_waits_for_the_token_with_backoff_then_gives_up_naming_the_secret():
    waits: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    settings = NodeSettings(role="worker", head_address="h:6379", token_secret="arn:secret")
    secrets = Secrets(appears_after=3)
    assert cluster_token(settings, secrets, clock=lambda: now[0], sleep=sleep) == "put-by-the-head"
    assert waits == [2.0, 4.0, 8.0] and secrets.puts == []
    with pytest.raises(ConfigError, match="arn:secret still has no value"):
        cluster_token(settings, Secrets(), wait_seconds=60, clock=lambda: now[0], sleep=sleep)
    assert max(waits) <= 30.0


def test_environment_turns_authentication_on_only_with_a_token():
    settings = NodeSettings(role="head", environment={"MLAAS4HEP_REGISTRY_URL": "s3://m/r/"})
    base = {"RAY_AUTH_TOKEN": "stale", "PATH": "/bin"}
    on = node_environment(settings, "tok", base)
    assert (on["RAY_AUTH_MODE"], on["RAY_AUTH_TOKEN"]) == ("token", "tok")
    assert on["MLAAS4HEP_REGISTRY_URL"] == "s3://m/r/" and on["PATH"] == "/bin"
    off = node_environment(settings, "", base)
    assert off["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN" not in off


def test_environment_file_must_be_an_object_of_strings(tmp_path):
    good = tmp_path / "env.json"
    good.write_text('{"A": "1"}')
    assert read_environment_file(good) == {"A": "1"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"A": 1}')
    with pytest.raises(ConfigError, match="bad.json"):
        read_environment_file(bad)


def test_cli_prints_the_command_without_starting_anything(capsys):
    code = cli_main(
        ["cluster", "start-node", "--role", "worker", "--head-address", "h:6379", "--print"]
    )
    shown = capsys.readouterr().out
    assert code == 0 and "--address=h:6379" in shown and "RAY_AUTH_MODE=disabled" in shown
    assert cli_main(["cluster", "start-node", "--role", "worker", "--print"]) == 1
