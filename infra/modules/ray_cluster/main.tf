# A Ray cluster on EC2 for the retraining jobs:
#
#   functions, serving tasks (clients group) ──:8265 Jobs API──► head (one instance)
#   head ◄──every Ray port──► workers (autoscaling group, GPU instances by default)
#   every node: the pinned mlaas4hep in /opt/mlaas4hep, Ray started by a systemd unit
#   with the cluster's token from Secrets Manager (Ray's token authentication)
#
# The head is one instance from its launch template (its private address is the Jobs
# API address the functions are given); the workers come from theirs through an
# autoscaling group between min_workers and max_workers. network.tf holds the security
# groups, iam.tf the instance roles, user_data.sh.tftpl what every node runs at boot.

data "aws_region" "current" {}

data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0
  name  = var.ami_ssm_parameter
}

# The head's address is fixed (head_private_ip, or host 10 of its subnet): the workers'
# launch template names it without waiting for the instance, and a replaced head keeps it.
data "aws_subnet" "head" {
  id = var.subnet_ids[0]
}

locals {
  head_ip   = coalesce(var.head_private_ip, cidrhost(data.aws_subnet.head.cidr_block, 10))
  jobs_port = 8265
  gcs_port  = 6379
  ami_id    = coalesce(var.ami_id, try(nonsensitive(data.aws_ssm_parameter.ami[0].value), null))

  requirement = var.wheel_s3_uri == null ? var.package : "/opt/mlaas4hep-wheels/${basename(var.wheel_s3_uri)}${var.package}"

  # What `mlaas4hep cluster start-node` is told on each kind of node (mlaas4hep.cluster.node).
  node_arguments = {
    head = concat(
      ["--role", "head", "--num-cpus", tostring(var.head_cpus), "--gcs-port", tostring(local.gcs_port), "--dashboard-port", tostring(local.jobs_port)],
      var.token_secret_arn == null ? [] : ["--token-secret", var.token_secret_arn, "--create-token"],
    )
    workers = concat(
      ["--role", "worker", "--head-address", "${local.head_ip}:${local.gcs_port}"],
      var.token_secret_arn == null ? [] : ["--token-secret", var.token_secret_arn],
    )
  }

  user_data = {
    for role in ["head", "workers"] : role => templatefile("${path.module}/user_data.sh.tftpl", {
      name           = var.name
      role           = role
      python_version = var.python_version
      requirement    = local.requirement
      wheel_s3_uri   = var.wheel_s3_uri == null ? "" : var.wheel_s3_uri
      region         = data.aws_region.current.name
      arguments      = join(" ", [for argument in concat(local.node_arguments[role], ["--region", data.aws_region.current.name, "--env-file", "/etc/mlaas4hep/node-env.json"]) : format("%q", argument)])
      environment    = jsonencode(var.environment)
    })
  }

  instance_types = { head = var.head_instance_type, workers = var.worker_instance_type }
}

resource "aws_launch_template" "node" {
  for_each = local.roles

  name                   = "${var.name}-${each.key}"
  description            = "Ray ${each.key} of ${var.name}"
  image_id               = local.ami_id
  instance_type          = local.instance_types[each.key]
  update_default_version = true
  user_data              = base64encode(local.user_data[each.key])
  ebs_optimized          = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.node[each.key].arn
  }

  # The head's interface is made with the instance (below), at its fixed address.
  vpc_security_group_ids = each.key == "head" ? [local.node_groups["head"]] : null
  dynamic "network_interfaces" {
    for_each = each.key == "workers" ? [local.node_groups["workers"]] : []
    content {
      # false is left to the subnet (a private one gives no public address): moto reads an
      # explicit false back as true, which would replace the head on every plan.
      associate_public_ip_address = var.associate_public_ip ? true : null
      security_groups             = [network_interfaces.value]
      delete_on_termination       = true
    }
  }

  # IMDSv2 only, one hop: a job's container cannot read the node's credentials.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-${each.key}", "mlaas4hep:ray-node" = each.key })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-${each.key}" })
  }

  # No tags on the template itself. moto stores a template's own tags (these, or the
  # provider's default_tags) as one more tag specification of its data, which would show
  # a change on every plan: tag_specifications are set at creation and not compared
  # afterwards (the instances' tags come from the head's own tags and the group's).

  lifecycle {
    ignore_changes = [tag_specifications]

    precondition {
      condition     = local.ami_id != null
      error_message = "ray_cluster: no AMI: set ami_id, or ami_ssm_parameter to a parameter that holds one."
    }
  }
}

resource "aws_instance" "head" {
  #checkov:skip=CKV_AWS_126:Detailed monitoring is enabled by the launch template the instance starts from.
  subnet_id  = var.subnet_ids[0]
  private_ip = local.head_ip
  # false is left to the subnet (a private one gives no public address): moto reads an
  # explicit false back as true, which would replace the head on every plan.
  associate_public_ip_address = var.associate_public_ip ? true : null
  iam_instance_profile        = aws_iam_instance_profile.node["head"].name
  user_data                   = local.user_data["head"]
  tags                        = merge(var.tags, { Name = "${var.name}-head", "mlaas4hep:ray-node" = "head" })

  launch_template {
    id      = aws_launch_template.node["head"].id
    version = aws_launch_template.node["head"].latest_version
  }

  # The launch template holds the volume, the metadata options and the profile; the
  # instance repeats what the provider reads back from it.
  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    kms_key_id  = var.kms_key_arn
    volume_size = var.root_volume_gb
    volume_type = "gp3"
  }

  ebs_optimized = true
}

resource "aws_autoscaling_group" "workers" {
  name                = "${var.name}-workers"
  vpc_zone_identifier = var.subnet_ids
  min_size            = var.min_workers
  max_size            = var.max_workers
  desired_capacity    = var.min_workers
  health_check_type   = "EC2"
  # Workers join the head by themselves; Terraform need not wait for them.
  wait_for_capacity_timeout = "0"

  launch_template {
    id      = aws_launch_template.node["workers"].id
    version = aws_launch_template.node["workers"].latest_version
  }

  dynamic "tag" {
    for_each = merge(var.tags, { Name = "${var.name}-workers" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # Scaling between min and max is left to whoever scales the group (a person, a
    # schedule, Ray's autoscaler): an apply does not undo it.
    ignore_changes = [desired_capacity]
  }
}
