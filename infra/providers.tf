locals {
  # Against a local endpoint (moto) the provider must not look for real credentials,
  # an account id or the instance metadata service.
  local_endpoint = var.aws_endpoint_url != null
}

provider "aws" {
  region                      = var.region
  access_key                  = local.local_endpoint ? "test" : null
  secret_key                  = local.local_endpoint ? "test" : null
  skip_credentials_validation = local.local_endpoint
  skip_requesting_account_id  = local.local_endpoint
  skip_metadata_api_check     = local.local_endpoint
  s3_use_path_style           = local.local_endpoint
  max_retries                 = local.local_endpoint ? 2 : null

  dynamic "endpoints" {
    for_each = local.local_endpoint ? [var.aws_endpoint_url] : []
    content {
      appautoscaling = endpoints.value
      cloudwatchlogs = endpoints.value
      ec2            = endpoints.value
      ecr            = endpoints.value
      ecs            = endpoints.value
      elbv2          = endpoints.value
      iam            = endpoints.value
      lambda         = endpoints.value
      s3             = endpoints.value
      secretsmanager = endpoints.value
      sqs            = endpoints.value
      ssm            = endpoints.value
      sts            = endpoints.value
    }
  }

  default_tags {
    tags = merge({ Project = var.project, Environment = var.environment, ManagedBy = "terraform" }, var.tags)
  }
}
