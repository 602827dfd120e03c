output "repository_url" {
  description = "ECR repository to push the bento image to (docker push <repository_url>:<tag>)."
  value       = aws_ecr_repository.this.repository_url
}

output "repository_name" {
  description = "Name of the ECR repository."
  value       = aws_ecr_repository.this.name
}

output "repository_arn" {
  description = "ARN of the ECR repository."
  value       = aws_ecr_repository.this.arn
}

output "models_url" {
  description = "The s3:// prefix of the shared registry the tasks follow (their MLAAS4HEP_MODELS_BUCKET): where uploads and promotions must be written to reach every replica."
  value       = local.environment["MLAAS4HEP_MODELS_BUCKET"]
}

output "api_token_secret_arn" {
  description = "Secrets Manager secret (or SSM parameter) whose value the container gets as MLAAS4HEP_SERVE_TOKEN."
  value       = local.token_arn
}

output "deployed" {
  description = "Whether the service is deployed (an image_tag is set), or only its repository and secret exist."
  value       = local.deploy
}

output "image" {
  description = "Image the tasks run (null before an image_tag is set)."
  value       = local.deploy ? local.image : null
}

output "url" {
  description = "Base URL of the service through the load balancer (null before deployment)."
  value       = local.deploy ? "${local.https ? "https" : "http"}://${aws_lb.this[0].dns_name}" : null
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer (point a CNAME or alias record at it)."
  value       = try(aws_lb.this[0].dns_name, null)
}

output "load_balancer_arn" {
  description = "ARN of the load balancer."
  value       = try(aws_lb.this[0].arn, null)
}

output "target_group_arn" {
  description = "ARN of the target group the tasks register in."
  value       = try(aws_lb_target_group.this[0].arn, null)
}

output "cluster_name" {
  description = "Name of the ECS cluster."
  value       = try(aws_ecs_cluster.this[0].name, null)
}

output "service_name" {
  description = "Name of the ECS service (aws ecs update-service --force-new-deployment after changing the token)."
  value       = try(local.service.name, null)
}

output "task_definition_arn" {
  description = "ARN of the task definition revision the service runs."
  value       = try(aws_ecs_task_definition.this[0].arn, null)
}

output "task_role_arn" {
  description = "Role of the service's code: reads the models bucket only."
  value       = try(aws_iam_role.task[0].arn, null)
}

output "execution_role_arn" {
  description = "Role ECS uses to start a task: pulls the image, writes logs, reads the token."
  value       = try(aws_iam_role.execution[0].arn, null)
}

output "log_group_name" {
  description = "CloudWatch log group of the service."
  value       = try(aws_cloudwatch_log_group.service[0].name, null)
}

output "vpc_id" {
  description = "VPC of the service (the minimal one when none was given)."
  value       = local.deploy ? local.vpc_id : null
}

output "task_subnet_ids" {
  description = "Subnets of the tasks (null before an image_tag is set): the Ray cluster joins them by default."
  value       = local.deploy ? local.task_subnet_ids : null
}

output "assign_public_ip" {
  description = "Whether the tasks get public IPs (their subnets have no NAT gateway)."
  value       = local.deploy ? local.assign_public_ip : null
}

output "security_group_ids" {
  description = "Security groups of the load balancer and of the tasks."
  value       = local.deploy ? { load_balancer = aws_security_group.load_balancer[0].id, tasks = aws_security_group.tasks[0].id } : null
}

output "autoscaling" {
  description = "Replica bounds and target tracking: enabled, min/max replicas, metric, target value, policy ARN (null when off)."
  value = {
    enabled      = local.autoscale
    min_replicas = var.min_replicas
    max_replicas = var.max_replicas
    metric       = var.autoscaling_metric
    target_value = local.autoscaling_target_value
    policy_arn   = try(aws_appautoscaling_policy.this[0].arn, null)
  }
}
