# Where the service runs: a given VPC and subnets, or (vpc_id null) a minimal VPC with two
# public subnets in two availability zones, an internet gateway and flow logs, enough for
# an internet-facing load balancer and tasks that pull their image over the internet.
# A production VPC with private subnets and a NAT gateway (or VPC endpoints) is the
# account's business: pass its ids.

locals {
  create_vpc = local.deploy && var.vpc_id == null

  vpc_id                   = local.create_vpc ? aws_vpc.this[0].id : var.vpc_id
  load_balancer_subnet_ids = local.create_vpc ? aws_subnet.public[*].id : var.load_balancer_subnet_ids
  task_subnet_ids          = length(var.task_subnet_ids) > 0 && !local.create_vpc ? var.task_subnet_ids : local.load_balancer_subnet_ids
  assign_public_ip         = coalesce(var.assign_public_ip, local.create_vpc)

  availability_zones = local.create_vpc ? (length(var.availability_zones) > 0 ? var.availability_zones : slice(sort(data.aws_availability_zones.available[0].names), 0, 2)) : []

  listener_ports = local.https ? [80, 443] : [80]
}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first two zone names are used, and names sort, so a zone AWS adds later never moves the subnets; availability_zones pins them explicitly.
  count = local.create_vpc && length(var.availability_zones) == 0 ? 1 : 0
  state = "available"
}

resource "aws_vpc" "this" {
  count = local.create_vpc ? 1 : 0

  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(var.tags, { Name = var.name })
}

# The VPC's default security group is left without rules: nothing may use it by accident.
resource "aws_default_security_group" "this" {
  count = local.create_vpc ? 1 : 0

  vpc_id = aws_vpc.this[0].id
  tags   = merge(var.tags, { Name = "${var.name}-default-unused" })
}

resource "aws_subnet" "public" {
  count = local.create_vpc ? 2 : 0

  vpc_id            = aws_vpc.this[0].id
  cidr_block        = cidrsubnet(var.vpc_cidr, 24 - tonumber(split("/", var.vpc_cidr)[1]), count.index)
  availability_zone = local.availability_zones[count.index]
  tags              = merge(var.tags, { Name = "${var.name}-public-${count.index}" })
}

resource "aws_internet_gateway" "this" {
  count = local.create_vpc ? 1 : 0

  vpc_id = aws_vpc.this[0].id
  tags   = merge(var.tags, { Name = var.name })
}

resource "aws_route_table" "public" {
  count = local.create_vpc ? 1 : 0

  vpc_id = aws_vpc.this[0].id
  tags   = merge(var.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "internet" {
  count = local.create_vpc ? 1 : 0

  route_table_id         = aws_route_table.public[0].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this[0].id
}

resource "aws_route_table_association" "public" {
  count = local.create_vpc ? 2 : 0

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_cloudwatch_log_group" "flow_logs" {
  #checkov:skip=CKV_AWS_158:Flow logs hold addresses and ports, no secrets; CloudWatch encrypts them with its own key unless kms_key_arn is set.
  #checkov:skip=CKV_AWS_338:Retention is a variable (30 days by default): flow logs serve troubleshooting, not audit.
  count = local.create_vpc ? 1 : 0

  name              = "/vpc/${var.name}/flow-logs"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_flow_log" "this" {
  count = local.create_vpc ? 1 : 0

  vpc_id          = aws_vpc.this[0].id
  traffic_type    = "REJECT"
  log_destination = aws_cloudwatch_log_group.flow_logs[0].arn
  iam_role_arn    = aws_iam_role.flow_logs[0].arn
  tags            = var.tags
}

# --- security groups: clients → load balancer → tasks → AWS APIs over HTTPS ---------------

resource "aws_security_group" "load_balancer" {
  count = local.deploy ? 1 : 0

  name        = "${var.name}-lb"
  description = "Clients to the load balancer of ${var.name}; the load balancer to its tasks"
  vpc_id      = local.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-lb" })
}

resource "aws_security_group" "tasks" {
  count = local.deploy ? 1 : 0

  name        = "${var.name}-tasks"
  description = "Tasks of ${var.name}: requests from the load balancer only; HTTPS out to ECR, S3, Logs and Secrets Manager"
  vpc_id      = local.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-tasks" })
}

# aws_security_group_rule rather than aws_vpc_security_group_*_rule: the latter reads a
# referenced group back as "<account>/<group>" when the provider skips the account id
# lookup (the local stack), which would show a change on every plan.
resource "aws_security_group_rule" "clients" {
  for_each = local.deploy ? toset([for port in local.listener_ports : tostring(port)]) : toset([])

  type              = "ingress"
  security_group_id = aws_security_group.load_balancer[0].id
  description       = "Clients on ${each.value == "443" ? "HTTPS" : "HTTP"}"
  protocol          = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
  cidr_blocks       = var.ingress_cidr_blocks
}

resource "aws_security_group_rule" "load_balancer_to_tasks" {
  count = local.deploy ? 1 : 0

  type                     = "egress"
  security_group_id        = aws_security_group.load_balancer[0].id
  description              = "Requests and health checks to the tasks"
  protocol                 = "tcp"
  from_port                = var.container_port
  to_port                  = var.container_port
  source_security_group_id = aws_security_group.tasks[0].id
}

resource "aws_security_group_rule" "tasks_from_load_balancer" {
  count = local.deploy ? 1 : 0

  type                     = "ingress"
  security_group_id        = aws_security_group.tasks[0].id
  description              = "Requests and health checks from the load balancer"
  protocol                 = "tcp"
  from_port                = var.container_port
  to_port                  = var.container_port
  source_security_group_id = aws_security_group.load_balancer[0].id
}

resource "aws_security_group_rule" "tasks_https" {
  count = local.deploy ? 1 : 0

  type              = "egress"
  security_group_id = aws_security_group.tasks[0].id
  description       = "HTTPS to ECR, S3, CloudWatch Logs and Secrets Manager"
  protocol          = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_blocks       = ["0.0.0.0/0"]
}
