"""Recovering an apply to moto from a Lambda function (or a security group) that moto
holds and the state lacks.

That is what a ``CreateFunction`` leaves behind when moto created the function but the
provider never saw the answer: each of the provider's retries is refused with 409
"Function already exist", a conflict it retries for 5 minutes before the apply fails
(``tests/test_local_terraform.py`` reads that failure and checks what
:meth:`Terraform.apply_adopting` does with it). Here the function is created beforehand
with boto3, which reaches that state of affairs without a timing window, and the
recovery step itself (import, then apply) runs for real; ``modules/function`` is applied
on its own from a small root module, on a moto server of the test's own. A security group
refused as a duplicate fails the apply at once (no retries), and is adopted by the id its
name looks up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from terraform_roots import moto_root

from mlaas4hep.local.moto import MotoServer
from mlaas4hep.local.project import infra_dir
from mlaas4hep.local.terraform import Orphan, Terraform, security_group_ids

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

NAME = "mlaas4hep-recovery"
ADDRESS = "module.function.aws_lambda_function.this"

ROOT_MODULE = (
    moto_root("cloudwatchlogs", "ec2", "iam", "lambda", "sqs")
    + """
variable "package_path" { type = string }

resource "aws_security_group" "clients" {
  name        = "NAME-clients"
  description = "the clients of the recovered function"
}

resource "aws_sqs_queue" "work" {
  name = "NAME"
}

module "function" {
  source = "MODULE_DIR"

  name                         = "NAME"
  handler                      = "functions.spec_file.handler"
  package_path                 = var.package_path
  queue_arn                    = aws_sqs_queue.work.arn
  environment                  = { ROLE = "recovered" }
  event_source_mapping_enabled = false
  tracing_mode                 = "PassThrough"
  log_retention_days           = 1
}
"""
)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[SimpleNamespace]:
    package = tmp_path / "lambda"
    subprocess.run(
        [sys.executable, "-m", "mlaas4hep.local.lambda_package", "--out", str(package)],
        check=True,
        capture_output=True,
    )
    module_dir = (infra_dir() / "modules" / "function").resolve()
    text = ROOT_MODULE.replace("MODULE_DIR", module_dir.as_posix()).replace("NAME", NAME)
    (tmp_path / "main.tf").write_text(text)
    with MotoServer() as moto:
        tf = Terraform(workdir=tmp_path, state_dir=tmp_path / "state", env=moto.env())
        variables = {"endpoint": moto.endpoint_url, "package_path": str(package / "functions.zip")}
        tf.init()
        # no destroy afterwards: the moto server, all that was applied to, stops with it
        yield SimpleNamespace(tf=tf, moto=moto, variables=variables, package=package)


def create_behind_terraforms_back(root: SimpleNamespace) -> None:
    """The function as a lost CreateFunction leaves it: in moto, not in the state."""
    iam, functions = root.moto.client("iam"), root.moto.client("lambda")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName="lost-answer", AssumeRolePolicyDocument=json.dumps(trust))
    functions.create_function(
        FunctionName=NAME,
        Runtime="python3.11",
        Role=role["Role"]["Arn"],
        Handler="functions.spec_file.handler",
        Code={"ZipFile": (root.package / "functions.zip").read_bytes()},
    )


def test_an_orphaned_function_and_a_duplicate_group_are_adopted_as_declared(root):
    """Both recoveries in one apply (each apply of this root costs a minute): the stray
    function is imported by ``adopt``; the apply that follows meets the duplicate group,
    which ``apply_adopting`` imports by the id its name looks up, then applies again.
    Afterwards both are the declared ones and the plan is empty."""
    create_behind_terraforms_back(root)
    ec2 = root.moto.client("ec2")
    group = ec2.create_security_group(
        GroupName=f"{NAME}-clients", Description="the clients of the recovered function"
    )["GroupId"]
    said: list[str] = []
    root.tf.adopt([Orphan(ADDRESS, NAME)], (), root.variables, log=said.append)
    assert ADDRESS in root.tf.state_resources()
    assert len(said) == 1 and ADDRESS in said[0] and "importing it" in said[0]
    adopted = root.tf.apply_adopting(  # the apply that follows an adoption
        (),
        root.variables,
        log=said.append,
        import_ids={"aws_security_group": security_group_ids(ec2)},
    )
    assert adopted == [Orphan("aws_security_group.clients", group)]
    assert len(said) == 2 and group in said[1]
    function = root.moto.client("lambda").get_function(FunctionName=NAME)["Configuration"]
    assert function["Environment"]["Variables"] == {"ROLE": "recovered"}
    assert function["Role"].endswith(f"/{NAME}")  # the module's role, not the stray one
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"{NAME}-clients"]}]
    )["SecurityGroups"]
    assert [g["GroupId"] for g in groups] == [group]  # adopted, not created twice
    code, text = root.tf.plan_exit_code((), root.variables)
    assert code == 0, text[-3000:]
