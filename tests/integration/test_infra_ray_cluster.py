"""The Ray cluster (``infra/modules/ray_cluster``), applied for real to a local moto server.

Applied on its own, from a small root module written next to the test's state (the
provider pointed at moto), in a VPC the test creates: a head instance and an autoscaling
group of workers from their launch templates, security groups, instance roles. moto
stores EC2 and autoscaling resources without booting anything, so what the nodes run is
checked where it is decided: the user data the launch templates hold (a bash script,
syntax-checked with ``bash -n``) and the ``mlaas4hep cluster start-node`` command it
runs, executed here against moto's Secrets Manager with ``--print``. The tests run in
file order and share one state: apply, checks, the drift check, bad variables, destroy.
How the root module wires the cluster to the functions and the serving tasks is planned
by ``test_pipeline.py``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from terraform_roots import apply_on_moto, moto_root

from mlaas4hep.local.project import infra_dir
from mlaas4hep.local.terraform import Terraform, TerraformError

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "mlaas4hep-rayit"
PACKAGE = "mlaas4hep[ray,torch,s3,xrootd]==0.1.0"

ROOT_MODULE = (
    moto_root("autoscaling", "ec2", "iam", "secretsmanager", "ssm")
    + """
variable "vpc_id" { type = string }
variable "subnet_ids" { type = list(string) }
variable "ami_id" { type = string }
variable "token_secret_arn" { type = string }
variable "extra_client_group" { type = string }
variable "worker_instance_type" {
  type    = string
  default = "g5.2xlarge"
}
variable "gpu_workers" {
  type    = bool
  default = true
}
variable "min_workers" {
  type    = number
  default = 2
}
variable "max_workers" {
  type    = number
  default = 3
}

module "ray" {
  source = "MODULE_DIR"

  name                      = "NAME"
  vpc_id                    = var.vpc_id
  subnet_ids                = var.subnet_ids
  ami_id                    = var.ami_id
  worker_instance_type      = var.worker_instance_type
  gpu_workers               = var.gpu_workers
  min_workers               = var.min_workers
  max_workers               = var.max_workers
  package                   = "PACKAGE"
  token_secret_arn          = var.token_secret_arn
  client_security_group_ids = [var.extra_client_group]
  readable_bucket_arns      = ["arn:aws:s3:::rayit-data", "arn:aws:s3:::rayit-specs"]
  writable_bucket_arns      = ["arn:aws:s3:::rayit-models", "arn:aws:s3:::rayit-cache"]
  environment = {
    MLAAS4HEP_REGISTRY_URL = "s3://rayit-models/registry/"
    ODD                    = "a 'quoted' $value"
  }
  tags                      = { Project = "mlaas4hep", Environment = "rayit" }
}

output "ray" {
  value = {
    jobs_address                   = module.ray.jobs_address
    head_address                   = module.ray.head_address
    head_instance_id               = module.ray.head_instance_id
    workers_autoscaling_group_name = module.ray.workers_autoscaling_group_name
    client_security_group_id       = module.ray.client_security_group_id
    security_group_ids             = module.ray.security_group_ids
    role_arns                      = module.ray.role_arns
    launch_template_ids            = module.ray.launch_template_ids
    ami_id                         = module.ray.ami_id
  }
}
"""
)


@pytest.fixture(scope="module")
def stack(moto_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ray-cluster-root")
    module_dir = (infra_dir() / "modules" / "ray_cluster").resolve()
    text = ROOT_MODULE.replace("MODULE_DIR", module_dir.as_posix()).replace("PACKAGE", PACKAGE)
    (workdir / "main.tf").write_text(text.replace('"NAME"', f'"{NAME}"'))
    ec2 = moto_server.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.52.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.52.{i}.0/24", AvailabilityZone=zone)["Subnet"][
            "SubnetId"
        ]
        for i, zone in enumerate(["us-east-1a", "us-east-1b"])
    ]
    other = ec2.create_security_group(GroupName="rayit-bastion", Description="x", VpcId=vpc)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    secret = moto_server.client("secretsmanager").create_secret(Name=f"{NAME}-token")["ARN"]
    variables = {
        "endpoint": moto_server.endpoint_url,
        "vpc_id": vpc,
        "subnet_ids": subnets,
        "ami_id": ami,
        "token_secret_arn": secret,
        "extra_client_group": other["GroupId"],
    }
    tf = Terraform(workdir=workdir, state_dir=workdir / "state", env=moto_server.env())
    tf.init()
    state = SimpleNamespace(
        tf=tf, variables=variables, subnets=subnets, vpc=vpc, secret=secret, destroyed=False
    )
    try:
        apply_on_moto(tf, moto_server, (), variables)
        state.outputs = tf.output()["ray"]
        yield state
    finally:
        if not state.destroyed and tf.state_resources():
            tf.destroy((), variables)


def group_rules(ec2, group_id: str) -> dict[str, list[dict[str, Any]]]:
    (group,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    return {"in": group["IpPermissions"], "out": group["IpPermissionsEgress"]}


def peers(rule: dict[str, Any]) -> set[str]:
    return {pair["GroupId"] for pair in rule.get("UserIdGroupPairs", [])}


def user_data(ec2, template_id: str) -> str:
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)
    (latest,) = [v for v in versions["LaunchTemplateVersions"] if v["DefaultVersion"]]
    return base64.b64decode(latest["LaunchTemplateData"]["UserData"]).decode()


def test_head_and_gpu_workers_run_from_their_launch_templates(stack, moto_server):
    ec2 = moto_server.client("ec2")
    outputs = stack.outputs
    (reservation,) = ec2.describe_instances(InstanceIds=[outputs["head_instance_id"]])[
        "Reservations"
    ]
    (head,) = reservation["Instances"]
    assert head["SubnetId"] == stack.subnets[0]
    assert head["ImageId"] == stack.variables["ami_id"] == outputs["ami_id"]
    assert outputs["jobs_address"] == f"http://{head['PrivateIpAddress']}:8265"
    assert outputs["head_address"] == f"{head['PrivateIpAddress']}:6379"
    assert not head.get("PublicIpAddress")
    assert head["MetadataOptions"]["HttpTokens"] == "required"
    groups = {g["GroupId"] for n in head["NetworkInterfaces"] for g in n["Groups"]}
    assert groups == {outputs["security_group_ids"]["head"]}
    assert head["IamInstanceProfile"]["Arn"].endswith(f"/{NAME}-head")

    scaling = moto_server.client("autoscaling")
    (group,) = scaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["workers_autoscaling_group_name"]]
    )["AutoScalingGroups"]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (2, 3, 2)
    assert set(group["VPCZoneIdentifier"].split(",")) == set(stack.subnets)
    assert group["LaunchTemplate"]["LaunchTemplateId"] == outputs["launch_template_ids"]["workers"]
    workers = ec2.describe_instances(InstanceIds=[i["InstanceId"] for i in group["Instances"]])
    types = {i["InstanceType"] for r in workers["Reservations"] for i in r["Instances"]}
    assert types == {"g5.2xlarge"} and len(group["Instances"]) == 2

    for role, template_id in outputs["launch_template_ids"].items():
        versions = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)
        data = versions["LaunchTemplateVersions"][-1]["LaunchTemplateData"]
        (volume,) = data["BlockDeviceMappings"]
        assert volume["Ebs"]["Encrypted"] is True, role
        assert data["MetadataOptions"]["HttpTokens"] == "required", role
        assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1, role
        assert data["IamInstanceProfile"]["Arn"].endswith(f"/{NAME}-{role}"), role


def test_only_the_clients_reach_the_jobs_api_and_only_the_cluster_its_ports(stack, moto_server):
    ec2 = moto_server.client("ec2")
    groups = stack.outputs["security_group_ids"]
    clients = stack.outputs["client_security_group_id"]
    head = group_rules(ec2, groups["head"])
    jobs = [r for r in head["in"] if r["FromPort"] == 8265 and r["ToPort"] == 8265]
    assert {g for r in jobs for g in peers(r)} == {clients, stack.variables["extra_client_group"]}
    for name, group_id in groups.items():
        rules = group_rules(ec2, group_id)
        # nothing comes in from an address range: only from the groups named
        assert not [r for r in rules["in"] if r.get("IpRanges") or r.get("Ipv6Ranges")], name
        wide = [r for r in rules["in"] if (r["FromPort"], r["ToPort"]) == (0, 65535)]
        assert {g for r in wide for g in peers(r)} == set(groups.values()), name
        out_ranges = {(r["FromPort"], r["ToPort"]) for r in rules["out"] if r.get("IpRanges")}
        assert out_ranges == {(443, 443), (1094, 1094)}, name
    client_rules = group_rules(ec2, clients)
    assert client_rules["in"] == []
    assert [(r["FromPort"], peers(r)) for r in client_rules["out"]] == [(8265, {groups["head"]})]


def test_instance_roles_reach_only_their_buckets_and_the_token(stack, moto_server):
    iam = moto_server.client("iam")
    for role, arn in stack.outputs["role_arns"].items():
        name = arn.rsplit("/", 1)[1]
        (policy_name,) = iam.list_role_policies(RoleName=name)["PolicyNames"]
        document = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
        document = json.loads(document) if isinstance(document, str) else document
        statements = {s["Sid"]: s for s in document["Statement"]}
        assert "s3:PutObject" not in statements["ReadBuckets"]["Action"]
        assert "arn:aws:s3:::rayit-data/*" in statements["ReadBuckets"]["Resource"]
        assert "arn:aws:s3:::rayit-models/*" in statements["ReadWriteBuckets"]["Resource"]
        token = statements["ReadToken"]
        assert token["Resource"] == stack.secret
        actions = {token["Action"]} if isinstance(token["Action"], str) else set(token["Action"])
        expected = {"secretsmanager:GetSecretValue"}
        if role == "head":  # the head makes the token on its first boot
            expected.add("secretsmanager:PutSecretValue")
        assert actions == expected, role
        assert not [a for s in statements.values() for a in s["Action"] if a.endswith(":*")]


def test_user_data_installs_the_pinned_package_and_starts_ray_with_the_token(
    stack, moto_server, tmp_path
):
    """The nodes' user data is valid bash, installs the pinned package and writes a
    systemd unit running ``mlaas4hep cluster start-node``; that command, run here against
    the same secret, makes the token on the head, and a worker reads it and joins the
    head with token authentication."""
    ec2 = moto_server.client("ec2")
    templates = stack.outputs["launch_template_ids"]
    scripts = {role: user_data(ec2, templates[role]) for role in ("head", "workers")}
    commands = {}
    for role, script in scripts.items():
        path = tmp_path / f"{role}.sh"
        path.write_text(script)
        subprocess.run(["bash", "-n", str(path)], check=True)
        assert f'pip install --python "$prefix/bin/python" "{PACKAGE}"' in script
        (line,) = [x for x in script.splitlines() if x.startswith("ExecStart=")]
        words = json.loads("[" + ",".join(line.split(" cluster start-node ", 1)[1].split()) + "]")
        commands[role] = words
        environment = script.split("node-env.json <<'JSON'\n", 1)[1].split("\nJSON\n", 1)[0]
        assert json.loads(environment)["ODD"] == "a 'quoted' $value"
        (tmp_path / "node-env.json").write_text(environment)
    assert "--create-token" in commands["head"] and "--create-token" not in commands["workers"]
    head_address = stack.outputs["head_address"]
    assert commands["workers"][commands["workers"].index("--head-address") + 1] == head_address

    secrets = moto_server.client("secretsmanager")

    def start_node(words: list[str]) -> list[str]:
        words = [
            str(tmp_path / "node-env.json") if w.endswith("node-env.json") else w for w in words
        ]
        shown = subprocess.run(
            [sys.executable, "-m", "mlaas4hep.cli", "cluster", "start-node", *words, "--print"],
            env=moto_server.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return shown.stdout.split()

    head = start_node(commands["head"])
    token = secrets.get_secret_value(SecretId=stack.secret)["SecretString"]
    assert len(token) >= 32
    assert "--head" in head and "--dashboard-port=8265" in head and "RAY_AUTH_MODE=token" in head
    assert token not in " ".join(head)
    worker = start_node(commands["workers"])
    assert f"--address={head_address}" in worker and "RAY_AUTH_MODE=token" in worker
    start_node(commands["head"])  # a restarted head keeps the token it made
    assert secrets.get_secret_value(SecretId=stack.secret)["SecretString"] == token


def test_second_plan_has_no_drift(stack):
    code, text = stack.tf.plan_exit_code((), stack.variables)
    assert code == 0, text[-3000:]


@pytest.mark.parametrize(
    "variables, named",
    [
        ({"worker_instance_type": "m6i.large"}, "not a GPU instance type"),
        ({"min_workers": 4, "max_workers": 2}, "max_workers"),
        ({"ami_id": "ubuntu-22.04"}, "ami_id"),
        ({"subnet_ids": []}, "subnet_ids"),
    ],
)
def test_bad_variables_fail_with_a_message_naming_them(stack, variables, named):
    with pytest.raises(TerraformError, match=named):
        stack.tf.plan_json((), {**stack.variables, **variables})


def test_cpu_workers_when_asked(stack):
    plan = stack.tf.plan_json(
        (), {**stack.variables, "worker_instance_type": "c7i.4xlarge", "gpu_workers": False}
    )
    (template,) = [
        c["change"]["after"]
        for c in plan["resource_changes"]
        if c["address"] == 'module.ray.aws_launch_template.node["workers"]'
    ]
    assert template["instance_type"] == "c7i.4xlarge"


def test_destroy_leaves_nothing(stack, moto_server):
    stack.tf.destroy((), stack.variables)
    stack.destroyed = True
    assert stack.tf.state_resources() == []
    ec2 = moto_server.client("ec2")
    running = ec2.describe_instances(
        Filters=[
            {"Name": "tag:Name", "Values": [f"{NAME}-head", f"{NAME}-workers"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    assert running == []
    groups = moto_server.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert not [g for g in groups if g["AutoScalingGroupName"].startswith(NAME)]
    templates = ec2.describe_launch_templates()["LaunchTemplates"]
    assert not [t for t in templates if t["LaunchTemplateName"].startswith(NAME)]
    roles = moto_server.client("iam").list_roles()["Roles"]
    assert not [r for r in roles if r["RoleName"].startswith(NAME)]
    sgs = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [stack.vpc]}])
    assert not [g for g in sgs["SecurityGroups"] if g["GroupName"].startswith(NAME)]
