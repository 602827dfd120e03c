"""Running the project's Terraform (``infra/``) offline, from a provider filesystem mirror.

Terraform is called as a subprocess (the ``terraform`` binary, 1.9 or later); the
Python wrappers on PyPI do not follow Terraform 1.x's flags. The AWS provider comes from
a filesystem mirror, found once by :func:`find_provider_mirror` (the
``TF_PROVIDER_MIRROR`` variable, else the usual plugin folders, else a bounded search)
and written into a CLI configuration file by :func:`write_cli_config`, so that
``terraform init`` never reaches the registry. Each stack keeps its state and its
``.terraform`` folder in its own directory, so that a test stack and a developer's
stack never share state.

:meth:`Terraform.apply_adopting` recovers from one known failure of an apply to moto: a
Lambda function that moto holds and the state lacks. The provider's create retries a
``CreateFunction`` refused with a conflict (409 ``ResourceConflictException``, which on AWS
means "still initialising") for 5 minutes; when an earlier attempt of the same create did
reach moto but its answer was lost, every retry is refused with "Function already exist"
and the apply fails. The function then holds what this very apply asked for: it is
imported into the state and the apply runs once more. A security group whose
``CreateSecurityGroup`` answer was lost fails the same way (``InvalidGroup.Duplicate``); its
import id is the group's id, which the caller looks up by name (:func:`security_group_ids`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlaas4hep.local.project import infra_dir

PROVIDER = ("registry.terraform.io", "hashicorp", "aws")
PROVIDER_VERSION = "5.100.0"
MIRROR_ENV = "TF_PROVIDER_MIRROR"
#: The CLI configuration written next to the root module (ignored by git).
CLI_CONFIG_NAME = "terraform.offline.tfrc"

_CANDIDATE_ROOTS = (
    "/opt/tf-plugins",
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
)
_SEARCH_SKIP = {"/proc", "/sys", "/dev", "/run"}


class TerraformError(RuntimeError):
    """A terraform command failed; the message holds the command and its output's tail,
    :attr:`output` the whole of it."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class Orphan:
    """A resource an apply failed to create because the endpoint already holds it."""

    address: str  # e.g. module.function["retrain"].aws_lambda_function.this
    import_id: str  # what ``terraform import`` takes for it (a function's name)


#: Per resource type, the refusal that means "it exists already", with the name it exists by.
_ALREADY_EXISTS = {
    "aws_lambda_function": re.compile(r"ResourceConflictException: Function already exist: (\S+)"),
    "aws_security_group": re.compile(
        r"InvalidGroup\.Duplicate: The security group '([^']+)' already exists"
    ),
}
#: Turns the name a refusal gives into what ``terraform import`` takes (None: not adoptable).
ImportId = Callable[[str], str | None]
#: A function is imported by its name; other kinds need a lookup from the caller.
_IMPORT_BY_NAME: dict[str, ImportId] = {"aws_lambda_function": lambda name: name}


def security_group_ids(ec2: Any) -> ImportId:
    """An :data:`ImportId` for ``aws_security_group`` from a boto3 EC2 client: the id of
    the one group of that name (None when there is none, or several in different VPCs,
    which is not a lost answer to adopt)."""

    def group_id(name: str) -> str | None:
        groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])[
            "SecurityGroups"
        ]
        return groups[0]["GroupId"] if len(groups) == 1 else None

    return group_id


_ADDRESS = re.compile(r"^\s*with (\S+),$", re.MULTILINE)


def orphaned_resources(
    output: str, import_ids: Mapping[str, ImportId] | None = None
) -> list[Orphan]:
    """The resources that an apply's ``output`` says it could not create because they
    exist already (each from its own ``Error:`` block: the refusal and the address), for
    the kinds whose import id is known: functions by name, others by ``import_ids``."""
    resolvers = {**_IMPORT_BY_NAME, **(import_ids or {})}
    found = []
    for block in output.split("Error: ")[1:]:
        address = _ADDRESS.search(block)
        if address is None:
            continue
        kind = address.group(1).split(".")[-2]
        refusal = _ALREADY_EXISTS.get(kind)
        match = refusal.search(block) if refusal and kind in resolvers else None
        import_id = resolvers[kind](match.group(1)) if match else None
        if import_id:
            found.append(Orphan(address.group(1), import_id))
    return found


def _holds_provider(root: Path) -> bool:
    return (root.joinpath(*PROVIDER) / PROVIDER_VERSION).is_dir()


def find_provider_mirror(search: bool = True) -> Path:
    """The folder that holds ``registry.terraform.io/hashicorp/aws/<version>/``.

    ``TF_PROVIDER_MIRROR`` wins when set (and must hold the provider); then the usual
    plugin folders; then, when ``search``, a walk of the filesystem that skips virtual
    file systems. Raises FileNotFoundError with what to set when nothing is found.
    """
    explicit = os.environ.get(MIRROR_ENV)
    if explicit:
        root = Path(explicit).expanduser()
        if not _holds_provider(root):
            raise FileNotFoundError(
                f"{MIRROR_ENV}={explicit} does not hold {'/'.join(PROVIDER)}/{PROVIDER_VERSION}/"
            )
        return root
    for candidate in _CANDIDATE_ROOTS:
        root = Path(candidate).expanduser()
        if _holds_provider(root):
            return root
    if search:
        for dirpath, dirnames, _ in os.walk("/", followlinks=False):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in _SEARCH_SKIP]
            if PROVIDER[0] in dirnames and _holds_provider(Path(dirpath)):
                return Path(dirpath)
    raise FileNotFoundError(
        f"no Terraform provider mirror holding {'/'.join(PROVIDER)}/{PROVIDER_VERSION}; "
        f"set {MIRROR_ENV} to the folder that contains {PROVIDER[0]}/"
    )


def write_cli_config(path: Path | None = None, mirror: Path | None = None) -> Path:
    """Write a Terraform CLI configuration that installs providers from the mirror only.

    Rewritten only when its content changes (it is cheap to call before every command).
    """
    mirror = mirror or find_provider_mirror()
    text = (
        "# Generated by mlaas4hep.local.terraform: installs the providers from a\n"
        "# filesystem mirror, never from the registry. Not committed: the\n"
        "# mirror's location depends on the machine.\n"
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f'    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/*/*"]\n'
        "  }\n"
        "  direct {\n"
        '    exclude = ["registry.terraform.io/*/*"]\n'
        "  }\n"
        "}\n"
    )
    path = Path(path) if path is not None else infra_dir() / CLI_CONFIG_NAME
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def terraform_binary() -> str:
    binary = shutil.which("terraform")
    if binary is None:
        raise FileNotFoundError("the terraform binary (1.9 or later) is not on the PATH")
    return binary


class Terraform:
    """One Terraform working directory (``infra/`` or an example) with its own state.

    ``state_dir`` holds the state file and the ``.terraform`` data folder; by default
    Terraform's own places in the working directory are used.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        state_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir if workdir is not None else infra_dir()).resolve()
        self.state_dir = Path(state_dir).resolve() if state_dir else None
        self.extra_env = dict(env or {})

    @property
    def state_path(self) -> Path | None:
        return self.state_dir / "terraform.tfstate" if self.state_dir else None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        # The project's offline configuration, whatever the user's shell points at.
        env["TF_CLI_CONFIG_FILE"] = str(write_cli_config())
        env["TF_IN_AUTOMATION"] = "1"
        env["TF_INPUT"] = "0"
        env.setdefault("CHECKPOINT_DISABLE", "1")
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            env["TF_DATA_DIR"] = str(self.state_dir / ".terraform")
            # One unpacked copy of the provider (hundreds of MB) for every stack.
            cache = Path(env.get("TF_PLUGIN_CACHE_DIR", Path.home() / ".cache/terraform-plugins"))
            cache.mkdir(parents=True, exist_ok=True)
            env["TF_PLUGIN_CACHE_DIR"] = str(cache)
        return env

    def run(
        self, *args: str, check: bool = True, capture: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        command = [terraform_binary(), f"-chdir={self.workdir}", *args]
        result = subprocess.run(
            command,
            env=self.environment(),
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            output = (result.stdout or "") + (result.stderr or "")
            raise TerraformError(
                f"terraform {' '.join(args)} failed ({result.returncode}):\n{output[-4000:]}",
                output,
            )
        return result

    def _state_args(self) -> list[str]:
        return [f"-state={self.state_path}"] if self.state_path else []

    @staticmethod
    def _var_args(var_files: Sequence[str | Path], variables: Mapping[str, Any]) -> list[str]:
        args = [f"-var-file={f}" for f in var_files]
        for name, value in variables.items():
            text = value if isinstance(value, str) else json.dumps(value)
            args.append(f"-var={name}={text}")
        return args

    def init(self) -> None:
        self.run("init", "-input=false", "-no-color", "-backend=false")

    def validate(self) -> None:
        self.run("validate", "-no-color")

    def apply(
        self, var_files: Sequence[str | Path] = (), variables: Mapping[str, Any] | None = None
    ) -> None:
        self.run(
            "apply",
            "-auto-approve",
            "-input=false",
            "-no-color",
            "-parallelism=20",
            *self._state_args(),
            *self._var_args(var_files, variables or {}),
        )

    def apply_adopting(
        self,
        var_files: Sequence[str | Path] = (),
        variables: Mapping[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        import_ids: Mapping[str, ImportId] | None = None,
    ) -> list[Orphan]:
        """:meth:`apply`; if it fails only where resources it was creating exist already
        (see the module docstring), :meth:`adopt` them and apply once more. Returns what
        was adopted; a second failure, or any other, is raised. ``import_ids``: see
        :func:`orphaned_resources`."""
        try:
            self.apply(var_files, variables)
            return []
        except TerraformError as err:
            orphans = orphaned_resources(err.output, import_ids)
            if not orphans:
                raise
        self.adopt(orphans, var_files, variables, log)
        self.apply(var_files, variables)
        return orphans

    def adopt(
        self,
        orphans: Sequence[Orphan],
        var_files: Sequence[str | Path] = (),
        variables: Mapping[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Import each orphan into the state, saying so (on stderr unless ``log``)."""
        say = log or (lambda line: print(line, file=sys.stderr, flush=True))
        for orphan in orphans:
            say(
                f"terraform apply: {orphan.address} ({orphan.import_id}) exists on the "
                "endpoint but not in the state (a create whose first answer was lost was "
                "retried and refused); importing it and applying again"
            )
            self.import_resource(orphan.address, orphan.import_id, var_files, variables)

    def import_resource(
        self,
        address: str,
        import_id: str,
        var_files: Sequence[str | Path] = (),
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        """``terraform import``: put the existing object ``import_id`` in the state at
        ``address``, evaluated with the same variables as the apply."""
        self.run(
            "import",
            "-input=false",
            "-no-color",
            *self._state_args(),
            *self._var_args(var_files, variables or {}),
            address,
            import_id,
        )

    def plan_exit_code(
        self, var_files: Sequence[str | Path] = (), variables: Mapping[str, Any] | None = None
    ) -> tuple[int, str]:
        """``plan -detailed-exitcode``: 0 no changes, 2 changes (1 is an error, raised)."""
        result = self.run(
            "plan",
            "-detailed-exitcode",
            "-input=false",
            "-no-color",
            "-parallelism=20",
            *self._state_args(),
            *self._var_args(var_files, variables or {}),
            check=False,
        )
        if result.returncode == 1:
            raise TerraformError(
                f"terraform plan failed:\n{(result.stdout + result.stderr)[-4000:]}"
            )
        return result.returncode, result.stdout

    def plan_json(
        self, var_files: Sequence[str | Path] = (), variables: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The plan of an apply with these variables, as ``terraform show -json`` reads it
        (``resource_changes`` with each resource's planned values): what a change of a
        variable would do, checked without applying it."""
        with tempfile.TemporaryDirectory(prefix="tfplan-") as tmp:
            plan = Path(tmp) / "plan"
            self.run(
                "plan",
                "-input=false",
                "-no-color",
                "-parallelism=20",
                f"-out={plan}",
                *self._state_args(),
                *self._var_args(var_files, variables or {}),
            )
            return json.loads(self.run("show", "-json", "-no-color", str(plan)).stdout)

    def forget_state(self) -> None:
        """Delete this run's state file and its backup (the resources went elsewhere:
        e.g. with the moto server that held them)."""
        if self.state_path is not None:
            for path in (self.state_path, self.state_path.with_name("terraform.tfstate.backup")):
                path.unlink(missing_ok=True)

    def destroy(
        self, var_files: Sequence[str | Path] = (), variables: Mapping[str, Any] | None = None
    ) -> None:
        self.run(
            "destroy",
            "-auto-approve",
            "-input=false",
            "-no-color",
            "-parallelism=20",
            *self._state_args(),
            *self._var_args(var_files, variables or {}),
        )

    def output(self) -> dict[str, Any]:
        """``terraform output -json`` as plain values (name → value)."""
        args = ["output", "-json", "-no-color"]
        if self.state_path:
            args.append(f"-state={self.state_path}")
        raw = json.loads(self.run(*args).stdout or "{}")
        return {name: item["value"] for name, item in raw.items()}

    def state_resources(self) -> list[str]:
        """Addresses of the resources in the state (empty after a complete destroy)."""
        args = ["state", "list"]
        if self.state_path:
            if not self.state_path.exists():
                return []
            args.append(f"-state={self.state_path}")
        result = self.run(*args, check=False)
        return [line for line in result.stdout.splitlines() if line.strip()]
