"""The serving deployment (``infra/modules/serving``), applied for real to a local moto server.

The module is applied on its own, from a small root module written next to the test's
state (the provider pointed at moto, as ``infra/providers.tf`` does), so that the test
does not wait for the pipeline's queues and buckets. The tests run in file order and
share one state: first the repository-only phase (no image yet), then the full
deployment, the drift check, the autoscaling plans (Application Auto Scaling cannot be
applied to moto, its plan can be checked), and the destroy. The whole root module with
the serving deployment is applied by ``test_pipeline.py``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from terraform_roots import apply_on_moto, moto_root

from mlaas4hep.local.project import infra_dir
from mlaas4hep.local.terraform import Terraform, TerraformError

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "mlaas4hep-servingit"
MODELS_BUCKET = "mlaas4hep-servingit-models"

ROOT_MODULE = (
    moto_root(
        "appautoscaling",
        "cloudwatchlogs",
        "ec2",
        "ecr",
        "ecs",
        "elbv2",
        "iam",
        "secretsmanager",
        "ssm",
        s3_path_style=True,
    )
    + """
variable "image_tag" {
  type    = string
  default = null
}
variable "enable_autoscaling" {
  type    = bool
  default = false
}
variable "autoscaling_metric" {
  type    = string
  default = "cpu"
}
variable "min_replicas" {
  type    = number
  default = 2
}
variable "max_replicas" {
  type    = number
  default = 5
}
variable "cpu" {
  type    = number
  default = 512
}
variable "memory" {
  type    = number
  default = 1024
}
variable "environment" {
  type    = map(string)
  default = { MLAAS4HEP_SERVE_PREDICT_AUTH = "1" }
}
variable "certificate_arn" {
  type    = string
  default = null
}

module "serving" {
  source = "MODULE_DIR"

  name               = "NAME"
  image_tag          = var.image_tag
  models_bucket_arn  = "arn:aws:s3:::MODELS_BUCKET"
  models_prefix      = "bundles/"
  environment        = var.environment
  min_replicas       = var.min_replicas
  max_replicas       = var.max_replicas
  enable_autoscaling = var.enable_autoscaling
  autoscaling_metric = var.autoscaling_metric
  cpu                = var.cpu
  memory             = var.memory
  certificate_arn    = var.certificate_arn
  container_insights = false
  log_retention_days = 1
  # moto does not store a service's grace period: it would read back as 0.
  health_check_grace_period_seconds = 0
  force_delete       = true
}

output "serving" {
  value = {
    repository_url       = module.serving.repository_url
    repository_name      = module.serving.repository_name
    api_token_secret_arn = module.serving.api_token_secret_arn
    deployed             = module.serving.deployed
    image                = module.serving.image
    url                  = module.serving.url
    target_group_arn     = module.serving.target_group_arn
    load_balancer_arn    = module.serving.load_balancer_arn
    cluster_name         = module.serving.cluster_name
    service_name         = module.serving.service_name
    task_role_arn        = module.serving.task_role_arn
    execution_role_arn   = module.serving.execution_role_arn
    log_group_name       = module.serving.log_group_name
    vpc_id               = module.serving.vpc_id
    security_group_ids   = module.serving.security_group_ids
    autoscaling          = module.serving.autoscaling
  }
}
"""
)


def planned_changes(stack, variables: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``terraform plan`` with these variables: the planned resource changes by address."""
    shown = stack.tf.plan_json((), {**stack.variables, **variables})
    return {change["address"]: change for change in shown.get("resource_changes", [])}


def inline_policy(iam, role_arn: str) -> dict[str, Any]:
    """The one inline policy document of a role."""
    role = role_arn.rsplit("/", 1)[1]
    (name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    return json.loads(document) if isinstance(document, str) else document


def as_list(value: str | list[str]) -> list[str]:
    """An IAM policy element (one string or a list) as a list."""
    return [value] if isinstance(value, str) else list(value)


@pytest.fixture(scope="module")
def stack(moto_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serving-root")
    module_dir = (infra_dir() / "modules" / "serving").resolve()
    text = ROOT_MODULE.replace("MODULE_DIR", module_dir.as_posix())
    text = text.replace("MODELS_BUCKET", MODELS_BUCKET).replace('"NAME"', f'"{NAME}"')
    (workdir / "main.tf").write_text(text)
    tf = Terraform(workdir=workdir, state_dir=workdir / "state", env=moto_server.env())
    variables = {"endpoint": moto_server.endpoint_url}
    tf.init()
    state = SimpleNamespace(
        tf=tf, workdir=workdir, variables=variables, moto=moto_server, destroyed=False
    )
    try:
        yield state
    finally:
        if not state.destroyed and tf.state_resources():
            tf.destroy((), {**variables, **getattr(state, "applied", {})})


def apply(stack, variables: dict[str, Any]) -> dict[str, Any]:
    """Apply the root module with these variables (remembered for later plans); its output."""
    stack.applied = variables
    apply_on_moto(stack.tf, stack.moto, (), {**stack.variables, **variables})
    return stack.tf.output()["serving"]


def test_without_an_image_only_the_repository_and_the_secret_exist(stack, moto_server):
    serving = apply(stack, {})
    assert serving["deployed"] is False
    assert serving["url"] is None and serving["cluster_name"] is None

    ecr = moto_server.client("ecr")
    (repo,) = ecr.describe_repositories(repositoryNames=[NAME])["repositories"]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["repositoryUri"] == serving["repository_url"]
    rules = json.loads(ecr.get_lifecycle_policy(repositoryName=NAME)["lifecyclePolicyText"])
    assert [r["selection"]["tagStatus"] for r in rules["rules"]] == ["untagged", "any"]

    # The secret exists without a value: the token never passes through Terraform.
    secrets = moto_server.client("secretsmanager")
    described = secrets.describe_secret(SecretId=serving["api_token_secret_arn"])
    assert described["Name"] == f"{NAME}/api-token"
    assert not described.get("VersionIdsToStages")

    state = stack.tf.state_resources()
    assert not [r for r in state if "aws_ecs_" in r or "aws_lb" in r or "aws_vpc" in r]


def test_with_an_image_the_service_runs_behind_the_load_balancer(stack, moto_server):
    serving = apply(stack, {"image_tag": "1.0"})
    stack.serving = serving
    assert serving["deployed"] is True
    assert serving["image"] == f"{serving['repository_url']}:1.0"
    assert serving["url"].startswith("http://")
    assert serving["autoscaling"]["enabled"] is False

    ecs = moto_server.client("ecs")
    (service,) = ecs.describe_services(
        cluster=serving["cluster_name"], services=[serving["service_name"]]
    )["services"]
    assert service["launchType"] == "FARGATE"
    assert service["desiredCount"] == 2  # min_replicas when autoscaling is off
    (balancer,) = service["loadBalancers"]
    assert balancer["targetGroupArn"] == serving["target_group_arn"]
    assert balancer["containerPort"] == 3000
    network = service["networkConfiguration"]["awsvpcConfiguration"]
    assert network["securityGroups"] == [serving["security_group_ids"]["tasks"]]
    assert len(network["subnets"]) == 2

    task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
    definition = task["taskDefinition"]
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    assert (definition["cpu"], definition["memory"]) == ("512", "1024")
    assert definition["taskRoleArn"] == serving["task_role_arn"]
    assert definition["executionRoleArn"] == serving["execution_role_arn"]
    (container,) = definition["containerDefinitions"]
    assert container["image"] == serving["image"]
    environment = {e["name"]: e["value"] for e in container["environment"]}
    assert environment == {
        "MLAAS4HEP_SERVE_MODEL": "production",
        "MLAAS4HEP_SERVE_WORKERS": "1",  # one per vCPU, at least one
        "MLAAS4HEP_MODELS_BUCKET": f"s3://{MODELS_BUCKET}/bundles/",
        "MLAAS4HEP_SERVE_PREDICT_AUTH": "1",
        "MLAAS4HEP_SERVE_MEMORY_MIB": "1024",  # sizes the request limits
        "MLAAS4HEP_SERVE_FILE_SOURCES": "",  # no readable_bucket_arns: uploads only
    }
    assert container["secrets"] == [
        {"name": "MLAAS4HEP_SERVE_TOKEN", "valueFrom": serving["api_token_secret_arn"]}
    ]
    assert "/readyz" in container["healthCheck"]["command"][1]
    assert container["logConfiguration"]["options"]["awslogs-group"] == serving["log_group_name"]

    elb = moto_server.client("elbv2")
    (group,) = elb.describe_target_groups(TargetGroupArns=[serving["target_group_arn"]])[
        "TargetGroups"
    ]
    assert (group["TargetType"], group["Port"], group["HealthCheckPath"]) == ("ip", 3000, "/readyz")
    (listener,) = elb.describe_listeners(LoadBalancerArn=serving["load_balancer_arn"])["Listeners"]
    assert (listener["Port"], listener["Protocol"]) == (80, "HTTP")
    assert listener["DefaultActions"][0]["TargetGroupArn"] == serving["target_group_arn"]

    # Tasks accept the load balancer only, on the container port.
    ec2 = moto_server.client("ec2")
    groups = serving["security_group_ids"]
    rules = ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [groups["tasks"]]}]
    )["SecurityGroupRules"]
    ingress = [r for r in rules if not r["IsEgress"]]
    assert [(r["FromPort"], r["ReferencedGroupInfo"]["GroupId"]) for r in ingress] == [
        (3000, groups["load_balancer"])
    ]


def test_roles_have_least_privilege(stack, moto_server):
    iam = moto_server.client("iam")
    serving = stack.serving
    task = inline_policy(iam, serving["task_role_arn"])
    by_sid = {s["Sid"]: s for s in task["Statement"]}
    actions = {a for s in task["Statement"] for a in as_list(s["Action"])}
    assert actions == {
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:ListBucket",
        "s3:PutObject",
        "s3:DeleteObject",
    }
    resources = {r for s in task["Statement"] for r in as_list(s["Resource"])}
    assert resources == {
        f"arn:aws:s3:::{MODELS_BUCKET}/bundles/*",
        f"arn:aws:s3:::{MODELS_BUCKET}",
        f"arn:aws:s3:::{MODELS_BUCKET}/bundles/blobs/*",
        f"arn:aws:s3:::{MODELS_BUCKET}/bundles/versions/*",
        f"arn:aws:s3:::{MODELS_BUCKET}/bundles/aliases.json",
    }
    # writes only where the shared registry lives: its blobs, manifests and alias document
    assert set(as_list(by_sid["WriteRegistry"]["Resource"])) == {
        f"arn:aws:s3:::{MODELS_BUCKET}/bundles/blobs/*",
        f"arn:aws:s3:::{MODELS_BUCKET}/bundles/versions/*",
        f"arn:aws:s3:::{MODELS_BUCKET}/bundles/aliases.json",
    }
    execution = inline_policy(iam, serving["execution_role_arn"])
    by_sid = {s["Sid"]: s for s in execution["Statement"]}
    assert as_list(by_sid["ReadApiToken"]["Resource"]) == [serving["api_token_secret_arn"]]
    assert as_list(by_sid["PullOwnImage"]["Resource"]) == [
        moto_server.client("ecr").describe_repositories(repositoryNames=[NAME])["repositories"][0][
            "repositoryArn"
        ]
    ]


def test_second_plan_has_no_drift(stack):
    code, output = stack.tf.plan_exit_code((), {**stack.variables, **stack.applied})
    assert code == 0, output[-3000:]


@pytest.mark.parametrize(
    ("metric", "predefined", "target"),
    [
        ("cpu", "ECSServiceAverageCPUUtilization", 60),
        ("requests", "ALBRequestCountPerTarget", 6000),
    ],
)
def test_autoscaling_plans_target_tracking(stack, metric, predefined, target):
    variables = {**stack.applied, "enable_autoscaling": True, "autoscaling_metric": metric}
    changes = planned_changes(stack, variables)
    prefix = "module.serving."
    scalable = changes[f"{prefix}aws_appautoscaling_target.this[0]"]["change"]["after"]
    assert (scalable["min_capacity"], scalable["max_capacity"]) == (2, 5)
    assert scalable["scalable_dimension"] == "ecs:service:DesiredCount"
    policy = changes[f"{prefix}aws_appautoscaling_policy.this[0]"]["change"]["after"]
    assert policy["policy_type"] == "TargetTrackingScaling"
    (tracking,) = policy["target_tracking_scaling_policy_configuration"]
    assert tracking["target_value"] == target
    (spec,) = tracking["predefined_metric_specification"]
    assert spec["predefined_metric_type"] == predefined
    # The fixed-size service hands over to the one whose count autoscaling owns.
    assert changes[f"{prefix}aws_ecs_service.fixed[0]"]["change"]["actions"] == ["delete"]
    assert changes[f"{prefix}aws_ecs_service.autoscaled[0]"]["change"]["actions"] == ["create"]


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"cpu": 256, "memory": 4096}, "memory does not suit cpu"),
        ({"certificate_arn": "not-an-arn"}, "certificate_arn"),
        ({"environment": {"MLAAS4HEP_SERVE_TOKEN": "x" * 32}}, "MLAAS4HEP_SERVE_TOKEN"),
    ],
)
def test_bad_variables_fail_with_a_message_naming_them(stack, variables, named):
    with pytest.raises(TerraformError, match=named):
        planned_changes(stack, {**stack.applied, **variables})


def test_https_listener_redirects_http(stack):
    certificate = "arn:aws:acm:us-east-1:123456789012:certificate/abc"
    changes = planned_changes(stack, {**stack.applied, "certificate_arn": certificate})
    https = changes["module.serving.aws_lb_listener.https[0]"]["change"]["after"]
    assert (https["port"], https["protocol"], https["certificate_arn"]) == (
        443,
        "HTTPS",
        certificate,
    )
    assert https["ssl_policy"].startswith("ELBSecurityPolicy-TLS13")
    http = changes["module.serving.aws_lb_listener.http[0]"]["change"]["after"]
    (action,) = http["default_action"]
    assert action["type"] == "redirect"
    assert action["redirect"][0]["protocol"] == "HTTPS"


def test_destroy_leaves_nothing(stack, moto_server):
    stack.tf.destroy((), {**stack.variables, **stack.applied})
    stack.destroyed = True
    assert stack.tf.state_resources() == []
    assert not [
        r
        for r in moto_server.client("ecr").describe_repositories()["repositories"]
        if r["repositoryName"] == NAME
    ]
    active = moto_server.client("ecs").describe_clusters(clusters=[NAME])["clusters"]
    assert not [c for c in active if c["status"] == "ACTIVE"]
    elb = moto_server.client("elbv2")
    assert not [
        b for b in elb.describe_load_balancers()["LoadBalancers"] if b["LoadBalancerName"] == NAME
    ]
    assert not [
        g
        for g in elb.describe_target_groups()["TargetGroups"]
        if g["TargetGroupName"].startswith(NAME)
    ]
    roles = moto_server.client("iam").list_roles()["Roles"]
    assert not [r for r in roles if r["RoleName"].startswith(NAME)]
    secrets = moto_server.client("secretsmanager").list_secrets()["SecretList"]
    assert not [s for s in secrets if s["Name"].startswith(NAME)]
    vpcs = moto_server.client("ec2").describe_vpcs(
        Filters=[{"Name": "tag:Name", "Values": [NAME]}]
    )["Vpcs"]
    assert vpcs == []
    logs = moto_server.client("logs").describe_log_groups()["logGroups"]
    assert not [g for g in logs if NAME in g["logGroupName"]]
