# Who reaches what: the module's clients group (the functions and the serving tasks join
# it) and client_security_group_ids reach the head's Jobs API (8265) only; the head and
# the workers reach each other on every TCP port Ray uses (GCS 6379, raylets, object
# managers, workers) and nothing else does; the nodes go out on HTTPS and XRootD only.
#
# aws_security_group_rule rather than aws_vpc_security_group_*_rule, as in the serving
# module: the latter reads a referenced group back differently on the local stack.

locals {
  node_groups = {
    head    = aws_security_group.head.id
    workers = aws_security_group.workers.id
  }
  # every (node group, peer node group) pair: the cluster's own traffic
  cluster_pairs = {
    for pair in setproduct(keys(local.node_groups), keys(local.node_groups)) : "${pair[0]}-${pair[1]}" => {
      group = pair[0]
      peer  = pair[1]
    }
  }
  # every (node group, outbound port) pair
  outbound = {
    for pair in setproduct(keys(local.node_groups), ["443", "1094"]) : "${pair[0]}-${pair[1]}" => {
      group = pair[0]
      port  = tonumber(pair[1])
    }
  }
  jobs_clients = merge(
    { clients = aws_security_group.clients.id },
    { for index, id in var.client_security_group_ids : "extra-${index}" => id },
  )
}

resource "aws_security_group" "head" {
  #checkov:skip=CKV2_AWS_5:Attached to the head through its launch template (local.node_groups), which checkov does not follow.
  name        = "${var.name}-head"
  description = "Ray head of ${var.name}: the Jobs API from its clients; every Ray port from the cluster's nodes"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-head" })
}

resource "aws_security_group" "workers" {
  #checkov:skip=CKV2_AWS_5:Attached to the workers through their launch template (local.node_groups), which checkov does not follow.
  name        = "${var.name}-workers"
  description = "Ray workers of ${var.name}: every Ray port from the cluster's nodes only"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-workers" })
}

resource "aws_security_group" "clients" {
  #checkov:skip=CKV2_AWS_5:Attached outside the module: the root module puts the functions and the serving tasks in it (output client_security_group_id).
  name        = "${var.name}-clients"
  description = "Members may call the Jobs API of ${var.name} (the retrain function, the serving tasks)"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-clients" })
}

resource "aws_security_group_rule" "jobs_api" {
  for_each = local.jobs_clients

  type                     = "ingress"
  security_group_id        = aws_security_group.head.id
  description              = "Jobs API (Ray dashboard) from ${each.key}"
  protocol                 = "tcp"
  from_port                = local.jobs_port
  to_port                  = local.jobs_port
  source_security_group_id = each.value
}

resource "aws_security_group_rule" "clients_to_jobs_api" {
  type                     = "egress"
  security_group_id        = aws_security_group.clients.id
  description              = "Jobs API of the Ray head"
  protocol                 = "tcp"
  from_port                = local.jobs_port
  to_port                  = local.jobs_port
  source_security_group_id = aws_security_group.head.id
}

resource "aws_security_group_rule" "cluster_in" {
  for_each = local.cluster_pairs

  type                     = "ingress"
  security_group_id        = local.node_groups[each.value.group]
  description              = "Ray traffic from the ${each.value.peer}"
  protocol                 = "tcp"
  from_port                = 0
  to_port                  = 65535
  source_security_group_id = local.node_groups[each.value.peer]
}

resource "aws_security_group_rule" "cluster_out" {
  for_each = local.cluster_pairs

  type                     = "egress"
  security_group_id        = local.node_groups[each.value.group]
  description              = "Ray traffic to the ${each.value.peer}"
  protocol                 = "tcp"
  from_port                = 0
  to_port                  = 65535
  source_security_group_id = local.node_groups[each.value.peer]
}

resource "aws_security_group_rule" "outbound" {
  for_each = local.outbound

  type              = "egress"
  security_group_id = local.node_groups[each.value.group]
  description       = each.value.port == 443 ? "HTTPS: package index, S3, Secrets Manager" : "XRootD: root:// sources"
  protocol          = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_blocks       = var.egress_cidr_blocks
}
