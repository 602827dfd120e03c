"""What :meth:`Terraform.apply_adopting` makes of a failed apply (no terraform run here).

The failure is the one an apply to moto ends with when moto holds a Lambda function the
state lacks (the output below is from such an apply, shortened): the provider retried
``CreateFunction`` for 5 minutes and each retry was refused with 409. The import and the
apply that follow run for real in ``tests/integration/test_infra_recovery.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from mlaas4hep.local.terraform import (
    Orphan,
    Terraform,
    TerraformError,
    orphaned_resources,
    security_group_ids,
)

RETRAIN = 'module.function["retrain"].aws_lambda_function.this'

LOST_ANSWER = """\
module.function["merge_specs"].aws_lambda_function.this: Still creating... [5m10s elapsed]
aws_s3_bucket_notification.specs: Creation complete after 0s [id=mlaas4hep-local-specs]

Error: creating Lambda Function (mlaas4hep-local-retrain): operation error Lambda: \
CreateFunction, https response error StatusCode: 409, RequestID: FkMsCGytsgpfenEstjfJVs1Ql, \
ResourceConflictException: Function already exist: mlaas4hep-local-retrain

  with module.function["retrain"].aws_lambda_function.this,
  on modules/function/main.tf line 72, in resource "aws_lambda_function" "this":
  72: resource "aws_lambda_function" "this" {

"""

OTHER_CONFLICT = """\

Error: creating IAM Role (mlaas4hep-local-retrain): operation error IAM: CreateRole, https \
response error StatusCode: 409, RequestID: yvwzQipiD4sx0XqTtdDSGzz, EntityAlreadyExists: Role \
with name mlaas4hep-local-retrain already exists.

  with module.function["retrain"].aws_iam_role.this,
  on modules/function/main.tf line 18, in resource "aws_iam_role" "this":
  18: resource "aws_iam_role" "this" {

"""


def test_the_lost_answer_names_the_function_and_its_address():
    assert orphaned_resources(LOST_ANSWER) == [Orphan(RETRAIN, "mlaas4hep-local-retrain")]


def test_other_failures_adopt_nothing():
    assert orphaned_resources(OTHER_CONFLICT) == []
    assert orphaned_resources("Error: Invalid value for variable\n\n  on main.tf line 3") == []
    # each error block on its own: the other block's address is not borrowed
    assert orphaned_resources(OTHER_CONFLICT + LOST_ANSWER) == [
        Orphan(RETRAIN, "mlaas4hep-local-retrain")
    ]


class ScriptedTerraform(Terraform):
    """A Terraform whose applies fail with the given outputs, in turn (None: succeeds)."""

    def __init__(self, outputs: list[str | None]) -> None:
        super().__init__(workdir=Path("."))
        self.outputs = outputs
        self.calls: list[tuple[str, ...]] = []

    def apply(
        self, var_files: Sequence[str | Path] = (), variables: Mapping[str, Any] | None = None
    ) -> None:
        self.calls.append(("apply",))
        output = self.outputs.pop(0)
        if output is not None:
            raise TerraformError("terraform apply failed", output)

    def import_resource(
        self,
        address: str,
        import_id: str,
        var_files: Sequence[str | Path] = (),
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        self.calls.append(("import", address, import_id))


def test_an_orphan_is_imported_then_applied_once_more():
    tf, said = ScriptedTerraform([LOST_ANSWER, None]), []
    assert tf.apply_adopting(log=said.append) == [Orphan(RETRAIN, "mlaas4hep-local-retrain")]
    assert tf.calls == [("apply",), ("import", RETRAIN, "mlaas4hep-local-retrain"), ("apply",)]
    assert len(said) == 1 and "mlaas4hep-local-retrain" in said[0]


def test_a_clean_apply_adopts_nothing():
    tf = ScriptedTerraform([None])
    assert tf.apply_adopting() == []
    assert tf.calls == [("apply",)]


def test_other_failures_are_raised_without_an_import():
    tf = ScriptedTerraform([OTHER_CONFLICT])
    with pytest.raises(TerraformError):
        tf.apply_adopting()
    assert tf.calls == [("apply",)]


def test_the_recovery_is_bounded_to_one_more_apply():
    tf = ScriptedTerraform([LOST_ANSWER, LOST_ANSWER, None])
    with pytest.raises(TerraformError):
        tf.apply_adopting(log=lambda line: None)
    assert [call[0] for call in tf.calls] == ["apply", "import", "apply"]


DUPLICATE_GROUP = """\

Error: creating Security Group (mlaas4hep-it-ray-workers): operation error EC2: \
CreateSecurityGroup, https response error StatusCode: 400, RequestID: 7a1c0d2e, api error \
InvalidGroup.Duplicate: The security group 'mlaas4hep-it-ray-workers' already exists

  with module.ray_cluster[0].aws_security_group.workers,
  on modules/ray_cluster/network.tf line 42, in resource "aws_security_group" "workers":
  42: resource "aws_security_group" "workers" {

"""
WORKERS = "module.ray_cluster[0].aws_security_group.workers"


class Groups:
    """A boto3 EC2 client's ``describe_security_groups`` over a fixed set of groups."""

    def __init__(self, groups: list[tuple[str, str]]) -> None:
        self.groups = groups

    def describe_security_groups(self, Filters):
        (wanted,) = [f["Values"][0] for f in Filters if f["Name"] == "group-name"]
        found = [{"GroupId": gid, "GroupName": n} for gid, n in self.groups if n == wanted]
        return {"SecurityGroups": found}


def test_a_duplicate_group_is_adopted_by_the_id_its_name_looks_up():
    ids = {"aws_security_group": security_group_ids(Groups([("sg-1", "mlaas4hep-it-ray-workers")]))}
    assert orphaned_resources(DUPLICATE_GROUP, ids) == [Orphan(WORKERS, "sg-1")]
    tf = ScriptedTerraform([DUPLICATE_GROUP, None])
    assert tf.apply_adopting(log=lambda line: None, import_ids=ids) == [Orphan(WORKERS, "sg-1")]
    assert tf.calls == [("apply",), ("import", WORKERS, "sg-1"), ("apply",)]


def test_a_group_without_a_lookup_or_with_an_ambiguous_name_is_not_adopted():
    assert orphaned_resources(DUPLICATE_GROUP) == []
    twice = Groups([("sg-1", "mlaas4hep-it-ray-workers"), ("sg-2", "mlaas4hep-it-ray-workers")])
    assert (
        orphaned_resources(DUPLICATE_GROUP, {"aws_security_group": security_group_ids(twice)}) == []
    )
    tf = ScriptedTerraform([DUPLICATE_GROUP])
    with pytest.raises(TerraformError):
        tf.apply_adopting()
    assert tf.calls == [("apply",)]
