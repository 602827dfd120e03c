# The BentoML service (serving/) on ECS Fargate behind an Application Load Balancer:
#
#   clients ──► ALB :80 (or :443 with a certificate) ──► target group (health: /readyz)
#                                                           └─► Fargate tasks, min..max replicas
#   ECR repository (scan on push, lifecycle) ──image──► task definition
#   Secrets Manager / SSM ──MLAAS4HEP_SERVE_TOKEN──► container;   models bucket: the shared registry
#
# Two phases, because the image cannot be pushed before its repository exists: with
# image_tag null only the repository and the token secret are created; push the bento
# image, set image_tag, apply again for the cluster, load balancer and service. This file
# holds the repository, the secret and the ECS resources; network.tf, load_balancer.tf,
# iam.tf and autoscaling.tf hold the rest.

data "aws_region" "current" {}

locals {
  deploy    = var.image_tag != null
  autoscale = local.deploy && var.enable_autoscaling
  https     = var.certificate_arn != null

  models_bucket = split(":::", var.models_bucket_arn)[1]
  token_arn     = coalesce(var.api_token_secret_arn, try(aws_secretsmanager_secret.api_token[0].arn, null))
  token_in_ssm  = startswith(split(":", local.token_arn)[2], "ssm")

  container_name = "service"
  image          = "${aws_ecr_repository.this.repository_url}:${coalesce(var.image_tag, "none")}"

  # What the service is told (mlaas4hep.serve.config); the token comes as a secret.
  # The task's memory sizes the request limits; /predict_file reads by URL only from the
  # buckets the task role may read besides the models bucket.
  environment = merge({
    MLAAS4HEP_SERVE_MODEL        = var.model
    MLAAS4HEP_SERVE_WORKERS      = tostring(coalesce(var.workers, max(1, floor(var.cpu / 1024))))
    MLAAS4HEP_MODELS_BUCKET      = "s3://${local.models_bucket}/${var.models_prefix}"
    MLAAS4HEP_SERVE_MEMORY_MIB   = tostring(var.memory)
    MLAAS4HEP_SERVE_FILE_SOURCES = join(",", [for arn in var.readable_bucket_arns : "s3://${split(":::", arn)[1]}/"])
  }, var.environment)

  # The image has python (bentoml's base image) but not always curl.
  health_command = "python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:${var.container_port}${var.health_check_path}', timeout=4)\" || exit 1"

  container = {
    name                   = local.container_name
    image                  = local.image
    essential              = true
    readonlyRootFilesystem = false
    portMappings           = [{ name = "http", containerPort = var.container_port, hostPort = var.container_port, protocol = "tcp" }]
    environment            = [for name in sort(keys(local.environment)) : { name = name, value = local.environment[name] }]
    secrets                = [{ name = "MLAAS4HEP_SERVE_TOKEN", valueFrom = local.token_arn }]
    healthCheck = {
      command     = ["CMD-SHELL", local.health_command]
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = min(300, var.health_check_grace_period_seconds)
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = local.log_group_name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = local.container_name
      }
    }
  }

  log_group_name = "/ecs/${var.name}"
}

# --- the image repository ----------------------------------------------------------------

resource "aws_ecr_repository" "this" {
  name                 = var.name
  image_tag_mutability = var.image_tag_mutability
  force_delete         = var.force_delete
  tags                 = var.tags

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = var.kms_key_arn == null ? "AES256" : "KMS"
    kms_key         = var.kms_key_arn
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name

  # A repository replaced under the same name (its encryption changed) comes back
  # without a policy, while the policy's own arguments did not change: replace it too.
  lifecycle {
    replace_triggered_by = [aws_ecr_repository.this]
  }
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images after ${var.untagged_image_expiry_days} days"
        selection    = { tagStatus = "untagged", countType = "sinceImagePushed", countUnit = "days", countNumber = var.untagged_image_expiry_days }
        action       = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the ${var.keep_tagged_images} most recent tagged images"
        selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = var.keep_tagged_images }
        action       = { type = "expire" }
      },
    ]
  })
}

# --- the API token: a secret whose value never passes through Terraform ----------------------

resource "aws_secretsmanager_secret" "api_token" {
  #checkov:skip=CKV2_AWS_57:The token is rotated by putting a new value (aws secretsmanager put-secret-value) and redeploying the service; a rotation Lambda would need to restart the tasks as well.
  #checkov:skip=CKV_AWS_149:Secrets Manager encrypts with its own KMS key unless kms_key_arn names a customer key.
  count = var.api_token_secret_arn == null ? 1 : 0

  name                    = "${var.name}/api-token"
  description             = "API token of ${var.name} (MLAAS4HEP_SERVE_TOKEN, 16+ characters): set its value with the AWS CLI, never in Terraform."
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.force_delete ? 0 : 7
  tags                    = var.tags
}

# --- ECS ---------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "service" {
  #checkov:skip=CKV_AWS_158:Service logs hold request summaries and model tags, no secrets; CloudWatch encrypts them with its own key unless kms_key_arn is set.
  #checkov:skip=CKV_AWS_338:Retention is a variable (30 days by default): operational logs; models and their lineage live in the models bucket.
  count = local.deploy ? 1 : 0

  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_ecs_cluster" "this" {
  #checkov:skip=CKV_AWS_65:Container Insights is the variable container_insights, on by default (off only for moto); checkov does not follow the variable through the module call.
  count = local.deploy ? 1 : 0

  name = var.name
  tags = var.tags

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }
}

resource "aws_ecs_task_definition" "this" {
  #checkov:skip=CKV_AWS_336:BentoML writes under its home at run time (models pulled from the models bucket into its store, uploads, Prometheus multiprocess files); a volume over that home would hide the bento.
  count = local.deploy ? 1 : 0

  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution[0].arn
  task_role_arn            = aws_iam_role.task[0].arn
  container_definitions    = jsonencode([local.container])
  tags                     = var.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }
}

# Two variants of the service: with autoscaling its desired count belongs to Application
# Auto Scaling (ignored here), without it the desired count is min_replicas.
resource "aws_ecs_service" "fixed" {
  #checkov:skip=CKV_AWS_333:Tasks get a public IP only in the minimal VPC (public subnets, no NAT gateway) or when assign_public_ip says so; their security group admits the load balancer only.
  count = local.deploy && !var.enable_autoscaling ? 1 : 0

  name                              = var.name
  cluster                           = aws_ecs_cluster.this[0].arn
  task_definition                   = aws_ecs_task_definition.this[0].arn
  desired_count                     = var.min_replicas
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = var.health_check_grace_period_seconds
  propagate_tags                    = "SERVICE"
  tags                              = var.tags

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = local.task_subnet_ids
    security_groups  = concat([aws_security_group.tasks[0].id], var.task_security_group_ids)
    assign_public_ip = local.assign_public_ip
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.this[0].arn
    container_name   = local.container_name
    container_port   = var.container_port
  }

  lifecycle {
    # The module leaves it at AWS's default; moto does not return it, which would show a
    # change on every plan of the local stack.
    ignore_changes = [availability_zone_rebalancing]
  }

  depends_on = [aws_lb_listener.http, aws_iam_role_policy.execution, aws_iam_role_policy.task]
}

resource "aws_ecs_service" "autoscaled" {
  #checkov:skip=CKV_AWS_333:Tasks get a public IP only in the minimal VPC (public subnets, no NAT gateway) or when assign_public_ip says so; their security group admits the load balancer only.
  count = local.autoscale ? 1 : 0

  name                              = var.name
  cluster                           = aws_ecs_cluster.this[0].arn
  task_definition                   = aws_ecs_task_definition.this[0].arn
  desired_count                     = var.min_replicas
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = var.health_check_grace_period_seconds
  propagate_tags                    = "SERVICE"
  tags                              = var.tags

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = local.task_subnet_ids
    security_groups  = concat([aws_security_group.tasks[0].id], var.task_security_group_ids)
    assign_public_ip = local.assign_public_ip
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.this[0].arn
    container_name   = local.container_name
    container_port   = var.container_port
  }

  lifecycle {
    # availability_zone_rebalancing: see aws_ecs_service.fixed.
    ignore_changes = [desired_count, availability_zone_rebalancing]
  }

  depends_on = [aws_lb_listener.http, aws_iam_role_policy.execution, aws_iam_role_policy.task]
}

locals {
  service = one(concat(aws_ecs_service.fixed, aws_ecs_service.autoscaled))
}
