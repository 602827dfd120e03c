"""The local stack: moto, XRootD and a Ray head on loopback, the Terraform pipeline
applied to moto, the local function runtime and (``serve``) ``bentoml serve``; started
and stopped as one.

With ``serve`` the stack is the whole service, wired as deployed: the retrain function
submits the real retraining job (``ray_jobs/retrain.py``, on the Ray head), which
registers and promotes a new model version in the shared registry in the models bucket
(``MLAAS4HEP_REGISTRY_URL``, added to the job's runtime_env by Terraform), and ``bentoml
serve`` follows that registry (``MLAAS4HEP_MODELS_BUCKET``, the same URL: the Terraform
output ``registry_url``) and its ``production`` alias. The job and the service keep
stores of their own, as a Ray node and a serving task would: a version reaches the
service through the bucket only. Without ``serve`` the retrain entry point is a one-line
placeholder, enough to watch the events flow.

``make stack-up`` runs :meth:`LocalStack.up` in a supervisor process that
owns every child (servers by process group, the runtime by PID) and writes what it
started to ``.stack/stack.json``: PIDs, ports, addresses. ``down`` asks that supervisor
to stop (SIGTERM); it stops its children and forgets the Terraform state (everything it
holds lived in the stack's own moto server, in memory). If the supervisor is gone,
``down`` stops the PIDs recorded in ``stack.json`` that are still the processes it
started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlaas4hep.local.bento import BentoServer
from mlaas4hep.local.moto import MotoServer
from mlaas4hep.local.processes import (
    ManagedServer,
    ServerError,
    free_ports,
    listening_sockets,
    process_group,
)
from mlaas4hep.local.project import infra_dir, project_dir
from mlaas4hep.local.project import state_dir as default_state_dir
from mlaas4hep.local.terraform import Terraform, security_group_ids
from mlaas4hep.local.xrootd import XRootDServer
from mlaas4hep.pipeline.jobs_api import TOKEN_FILE

if TYPE_CHECKING:
    from mlaas4hep.serve.registry import Registry

#: The local stack's stand-in job (no training): placeholders stand as whole words, since
#: their values are shell-quoted (see :func:`mlaas4hep.pipeline.retrain_step.retrain_command`).
DEFAULT_RETRAIN_ENTRYPOINT = (
    "python -c \"import sys; print('retrain', *sys.argv[1:])\" {dataset} {dataset_spec_url}"
)
#: The ECS/ALB serving deployment is for AWS: locally ``bentoml serve`` runs instead, so
#: only its image repository is created (``serving_image_tag = null``), saving a minute.
LOCAL_STACK_VARS = {"serving_image_tag": None}


def retrain_entrypoint_for(margin: float, python: str = sys.executable) -> str:
    """The retraining job the retrain function submits (formatted per dataset).

    It runs the installed ``ray_jobs`` package: the Jobs REST API takes a
    ``working_dir`` only as an uploaded package URI (``gcs://``, ``s3://``), which is
    what a real deployment gives in ``retrain_runtime_env``; on one machine the package
    is already installed.
    """
    return (
        f"{python} -m ray_jobs.retrain --dataset {{dataset}} "
        f"--dataset-spec {{dataset_spec_url}} --models {{models_url}} --margin {margin}"
    )


class RayHead(ManagedServer):
    """A single-node Ray head (``ray start --head --block``) with its dashboard and Jobs
    API on loopback. Every port Ray would otherwise take by default is chosen free, so
    two stacks (or a stack and a test session) never collide; its temporary folder is
    short, as Ray's Unix sockets require.

    The head, and every job it runs, has this Python environment's ``bin`` first on its
    ``PATH``: the Jobs API runs an entrypoint such as ``python ray_jobs/train.py``
    through a shell, so without it ``python`` would be whichever one the PATH of the
    shell that started the stack found (one without the project's packages, when the
    virtualenv was not activated there). ``env`` adds variables for the head and its
    jobs (the local stack's S3 endpoint, for jobs that read its buckets). With
    ``auth_token`` the head runs with Ray's token authentication (``RAY_AUTH_MODE=token``):
    the Jobs API then refuses every call without that token."""

    name = "ray"

    def __init__(
        self,
        num_cpus: int = 1,
        env: Mapping[str, str] | None = None,
        auth_token: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_cpus = num_cpus
        self.extra_env = dict(env or {})
        self.auth_token = auth_token
        # every port the head takes, distinct (the GCS port is the server's own)
        self.dashboard_port, self.client_port, self.agent_port, self.workers_port = free_ports(
            4, self.host, avoid=[self.port]
        )
        taken = (self.port, self.dashboard_port, self.client_port, self.agent_port)
        if any(self.workers_port <= port <= self.workers_port + 50 for port in taken):
            self.workers_port = max(taken) + 1  # the workers' range clear of the others
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))
        self.stop_timeout = min(self.stop_timeout, 5.0)

    @property
    def address(self) -> str:
        """The Jobs API (dashboard) address the retrain function submits to."""
        return f"http://{self.host}:{self.dashboard_port}"

    def _command(self) -> list[str]:
        ray = Path(sys.executable).parent / "ray"
        workers = self.workers_port
        return [
            str(ray),
            "start",
            "--head",
            "--block",
            f"--node-ip-address={self.host}",
            f"--port={self.port}",
            f"--dashboard-host={self.host}",
            f"--dashboard-port={self.dashboard_port}",
            "--include-dashboard=true",
            f"--ray-client-server-port={self.client_port}",
            f"--dashboard-agent-listen-port={self.agent_port}",
            f"--min-worker-port={workers}",
            f"--max-worker-port={workers + 50}",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.temp_dir}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
        ]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Loopback only. ``ray start`` replaces a loopback --node-ip-address with the
        # machine's routable IP (services.resolve_ip_for_localhost), and every Ray server
        # binds all interfaces unless the node IP is loopback (GCS, raylet, workers:
        # node_ip == "127.0.0.1"; agents, metrics, client server: is_localhost(ip)).
        # With this variable off, Ray's node IP lookup answers loopback (it is Ray's
        # "single-machine" mode, meant for Windows and macOS): the head then keeps
        # 127.0.0.1 and binds only there. The one cost: no other node can join.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        # A local ray.init() elsewhere leaves ~/.ray/auth_token, which would turn token
        # authentication on for this head and refuse our unauthenticated Jobs API calls.
        env.setdefault("RAY_AUTH_MODE", "disabled")
        env.pop("RAY_AUTH_TOKEN", None)
        if self.auth_token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.auth_token)
        env.update(self.extra_env)
        bin_dir = str(Path(sys.executable).parent)
        rest = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
        env["PATH"] = os.pathsep.join([bin_dir, *rest])
        if sys.prefix != sys.base_prefix:
            env["VIRTUAL_ENV"] = sys.prefix
        return env

    def listening(self) -> list[tuple[int, str, int]]:
        """``(pid, address, port)`` of every TCP socket the head's processes listen on."""
        assert self._proc is not None, "the Ray head is not running"
        return listening_sockets(process_group(self._proc.pid))

    def _request(self, path: str) -> urllib.request.Request:
        headers = {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else {}
        return urllib.request.Request(f"{self.address}{path}", headers=headers)

    def _protocol_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self._request("/api/version"), timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def _wait_ready(self) -> None:
        # The GCS port is held by a child of ``ray start``, not by the process we
        # started: readiness is the Jobs API answering while our process lives.
        assert self._proc is not None
        deadline = time.monotonic() + max(self.start_timeout, 90.0)
        while not self._protocol_ready():
            if self._proc.poll() is not None:
                raise ServerError(f"ray start exited with status {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise ServerError(f"the Ray head did not answer on {self.address}")
            time.sleep(0.25)

    def jobs(self) -> list[dict[str, Any]]:
        """The jobs the Jobs API knows (submission id, status, metadata, ...)."""
        with urllib.request.urlopen(self._request("/api/jobs/"), timeout=10) as answer:
            return json.loads(answer.read())

    def _cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)


class LocalStack:
    """Everything ``local_stack up`` starts, in ``state_dir`` (default ``.stack/``)."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        workers: dict[str, int] | None = None,
        retrain_entrypoint: str | None = None,
        variables: dict[str, Any] | None = None,
        serve: bool = False,
        retrain_margin: float = 0.02,
    ) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self.workers = workers or {}
        self.serve = serve
        if retrain_entrypoint is None:
            retrain_entrypoint = (
                retrain_entrypoint_for(retrain_margin) if serve else DEFAULT_RETRAIN_ENTRYPOINT
            )
        self.retrain_entrypoint = retrain_entrypoint
        self.variables = dict(variables or {})
        #: the service's BentoML store: a cache of the shared registry's versions
        self.bentoml_home = self.state_dir / "bentoml"
        #: the retraining jobs' store, where training registers a version before its
        #: promotion publishes it to the shared registry
        self.jobs_bentoml_home = self.state_dir / "bentoml-jobs"
        self.moto: MotoServer | None = None
        self.xrootd: XRootDServer | None = None
        self.ray: RayHead | None = None
        self.bento: BentoServer | None = None
        self.runtime: subprocess.Popen[bytes] | None = None
        self.outputs: dict[str, Any] = {}
        self.terraform = Terraform(state_dir=self.state_dir / "terraform")

    @property
    def record_path(self) -> Path:
        return self.state_dir / "stack.json"

    def tf_variables(self) -> dict[str, Any]:
        assert self.moto is not None and self.ray is not None
        variables: dict[str, Any] = {
            "aws_endpoint_url": self.moto.endpoint_url,
            "ray_address": self.ray.address,
            "retrain_entrypoint": self.retrain_entrypoint,
        }
        if self.serve:
            variables["retrain_runtime_env"] = self.retrain_runtime_env()
        variables["lambda_package_path"] = str(self.state_dir / "lambda" / "functions.zip")
        return {**variables, **self.variables}

    def retrain_runtime_env(self) -> dict[str, Any]:
        """The Ray runtime_env of retraining jobs: moto and the jobs' own model store.

        The registry they promote into (``MLAAS4HEP_REGISTRY_URL``) is not set here:
        Terraform adds it, the URL the service follows, as it does on AWS."""
        from mlaas4hep.model.lineage import git_revision

        assert self.moto is not None
        env_vars = {
            **self.moto.env(),
            "BENTOML_HOME": str(self.jobs_bentoml_home),
            "BENTOML_DO_NOT_TRACK": "true",
            "TF_USE_LEGACY_KERAS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "RAY_USAGE_STATS_ENABLED": "0",
            "MLAAS4HEP_GIT_REVISION": git_revision(project_dir()),
        }
        return {"env_vars": env_vars}

    def _var_files(self) -> list[Path]:
        """``envs/local.tfvars`` and the stack's own overrides (which may hold nulls)."""
        overrides = self.state_dir / "stack.tfvars.json"
        overrides.write_text(json.dumps(LOCAL_STACK_VARS))
        return [infra_dir() / "envs" / "local.tfvars", overrides]

    def up(self) -> dict[str, Any]:
        """Start the servers, apply Terraform, start the runtime; return the record."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # The stack's own package: another build (another stack, a benchmark) rewriting a
        # shared zip in the middle of this apply would change its hash under Terraform.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mlaas4hep.local.lambda_package",
                "--out",
                str(self.state_dir / "lambda"),
            ],
            check=True,
            capture_output=True,
        )
        # Outside the repository: the daemon's unprivileged user must reach every parent.
        export = Path(tempfile.mkdtemp(prefix="mlaas4hep-stack-export-"))
        export.chmod(0o755)
        self.moto = MotoServer(workdir=self._workdir("moto")).start()
        # Ray's token authentication, as a deployment should run it: the token is the
        # stack's own (its state directory, mode 0600), put in the Secrets Manager secret
        # the retrain function reads it from once Terraform has created it.
        token = secrets.token_urlsafe(32)
        token_file = self.state_dir / TOKEN_FILE
        token_file.touch(mode=0o600)
        token_file.write_text(token)
        self.ray = RayHead(
            num_cpus=2 if self.serve else 1,
            env=self.moto.env(),
            auth_token=token,
            workdir=self._workdir("ray"),
        ).start()
        # Its own (temporary, traversable) work directory: the state directory may sit
        # under a private home that the daemon's user cannot reach.
        self.xrootd = XRootDServer(export).start()
        env = {**os.environ, **self.moto.env()}
        self.terraform.extra_env.update(self.moto.env())
        self.terraform.init()
        # The one recovery a fresh moto needs (see mlaas4hep.local.terraform): a function
        # or a security group it holds from a create whose answer was lost is imported,
        # then applied again.
        import boto3

        ec2 = boto3.client("ec2", **_client_args(self.moto.env()))
        self.terraform.apply_adopting(
            self._var_files(),
            self.tf_variables(),
            import_ids={"aws_security_group": security_group_ids(ec2)},
        )
        outputs = self.outputs = self.terraform.output()
        if outputs.get("ray_token_secret_arn"):
            boto3.client("secretsmanager", **_client_args(self.moto.env())).put_secret_value(
                SecretId=outputs["ray_token_secret_arn"], SecretString=token
            )
        (self.state_dir / "outputs.json").write_text(json.dumps(outputs, indent=1))
        runtime_log = open(self.state_dir / "runtime.log", "ab")  # noqa: SIM115 - child's log
        worker_args = [f"{name}={count}" for name, count in self.workers.items()]
        self.runtime = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "functions.local_runtime",
                "--outputs",
                str(self.state_dir / "outputs.json"),
                *(["--workers", *worker_args] if worker_args else []),
            ],
            cwd=project_dir(),
            env=env,
            stdout=runtime_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.serve:
            self.bentoml_home.mkdir(parents=True, exist_ok=True)
            self.bento = BentoServer(
                env={
                    "BENTOML_HOME": str(self.bentoml_home),
                    "MLAAS4HEP_MODELS_BUCKET": self.registry_url,
                    **self.moto.env(),
                },
                workdir=self._workdir("bento"),
            ).start()
        record = self.record(outputs)
        self.record_path.write_text(json.dumps(record, indent=1))
        return record

    @property
    def registry_url(self) -> str:
        """The shared registry (Terraform's ``registry_url``): what the service follows and
        the retraining jobs write to. Raises when the applied stack declares no serving."""
        url = self.outputs.get("registry_url")
        if not url:
            raise ServerError(
                "the applied stack has no registry_url (serving_enabled is false): the "
                "service and the retraining jobs would not share a registry"
            )
        return url

    def registry(self) -> Registry:
        """The shared registry as the service sees it, read from here through a cache of
        its own (``bentoml-client/``), so that the service's store stays the service's."""
        from mlaas4hep.serve.registry import Registry
        from mlaas4hep.serve.registry_bucket import RegistryBucket

        assert self.moto is not None, "the stack is not up"
        bucket = RegistryBucket(self.registry_url, client=self.moto.client("s3"))
        return Registry(self.state_dir / "bentoml-client", bucket=bucket)

    def _workdir(self, name: str) -> Path:
        path = self.state_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, outputs: dict[str, Any]) -> dict[str, Any]:
        assert self.moto and self.ray and self.xrootd and self.runtime
        return {
            "supervisor_pid": os.getpid(),
            "started_at": time.time(),
            "moto": {"pid": self.moto.pid, "endpoint_url": self.moto.endpoint_url},
            "xrootd": {
                "pid": self.xrootd.pid,
                "url": self.xrootd.url,
                "export_dir": str(self.xrootd.export_dir),
            },
            "ray": {
                "pid": self.ray.pid,
                "gcs_port": self.ray.port,
                "address": self.ray.address,
                "token_file": str(self.state_dir / TOKEN_FILE),
            },
            "runtime": {"pid": self.runtime.pid},
            "bento": None
            if self.bento is None
            else {
                "pid": self.bento.pid,
                "url": self.bento.url,
                "home": str(self.bentoml_home),
                "registry_url": self.registry_url,
            },
            "terraform_state": str(self.terraform.state_path),
            "buckets": outputs["buckets"],
            "queues": {
                name: {
                    "queue_url": fn["queue_url"],
                    "dlq_url": fn["dlq_url"],
                    "dlq_alarm": fn.get("dlq_alarm_name"),
                }
                for name, fn in outputs["functions"].items()
            },
            "env": self.moto.env(),
        }

    def down(self) -> None:
        """Destroy the Terraform resources and stop every child (by PID / group)."""
        if self.bento is not None:
            self.bento.stop()
        if self.runtime is not None and self.runtime.poll() is None:
            os.killpg(self.runtime.pid, signal.SIGTERM)
            try:
                self.runtime.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.runtime.pid, signal.SIGKILL)
                self.runtime.wait()
        for server in (self.xrootd, self.ray, self.moto):
            if server is not None:
                server.stop()
        # Every resource the Terraform state holds lived in the moto server just stopped
        # (in memory): destroying them one by one first, a minute of API calls, would
        # leave the same nothing. The state goes with them, so the next `up` starts clean.
        self.terraform.forget_state()
        if self.xrootd is not None:
            shutil.rmtree(self.xrootd.export_dir, ignore_errors=True)
        self.record_path.unlink(missing_ok=True)


def read_record(state_dir: Path | None = None) -> dict[str, Any] | None:
    """What ``local_stack up`` recorded in ``state_dir`` (None when nothing is up)."""
    path = Path(state_dir or default_state_dir()) / "stack.json"
    return json.loads(path.read_text()) if path.exists() else None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def status(state_dir: Path | None = None) -> dict[str, Any]:
    """What runs, where, how many messages wait in each queue and dead-letter queue, and
    the state of each dead-letter queue's CloudWatch alarm."""
    record = read_record(state_dir)
    if record is None:
        return {"running": False}
    out: dict[str, Any] = {"running": pid_alive(record["supervisor_pid"])}
    for name in ("moto", "xrootd", "ray", "runtime", "bento"):
        if record.get(name):
            out[name] = {**record[name], "alive": pid_alive(record[name]["pid"])}
    if out["moto"]["alive"]:
        import boto3

        sqs = boto3.client("sqs", **_client_args(record["env"]))
        depths = {}
        for name, queues in record["queues"].items():
            depths[name] = {
                kind: int(
                    sqs.get_queue_attributes(
                        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
                    )["Attributes"]["ApproximateNumberOfMessages"]
                )
                for kind, url in (("queue", queues["queue_url"]), ("dlq", queues["dlq_url"]))
            }
        out["queue_depths"] = depths
        alarms = [q["dlq_alarm"] for q in record["queues"].values() if q.get("dlq_alarm")]
        if alarms:
            cloudwatch = boto3.client("cloudwatch", **_client_args(record["env"]))
            found = cloudwatch.describe_alarms(AlarmNames=alarms)["MetricAlarms"]
            out["dlq_alarms"] = {a["AlarmName"]: a["StateValue"] for a in found}
    out["buckets"] = record["buckets"]
    return out


def _client_args(env: dict[str, str]) -> dict[str, str]:
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def stop_recorded(state_dir: Path | None = None, timeout: float = 180.0) -> bool:
    """Ask the supervisor to tear the stack down; if it is gone, stop the recorded PIDs.

    Returns True when the supervisor did the teardown (destroy included).
    """
    record = read_record(state_dir)
    if record is None:
        return True
    supervisor = record["supervisor_pid"]
    if pid_alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not pid_alive(supervisor):
            return True
    # Orphans: stop each recorded process group still led by the recorded PID.
    for name in ("bento", "runtime", "xrootd", "ray", "moto"):
        if not record.get(name):
            continue
        pid = record[name]["pid"]
        if pid_alive(pid) and os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    (Path(state_dir or default_state_dir()) / "stack.json").unlink(missing_ok=True)
    return False
