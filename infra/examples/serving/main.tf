# The serving deployment on its own: a models bucket and the BentoML service on ECS
# Fargate behind a load balancer, in the module's minimal VPC, autoscaled on requests per
# task. With image_tag null (the default) only the ECR repository and the token secret
# are created; push the image, then apply again with -var image_tag=<tag>.
# `terraform validate` checks it.

terraform {
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "= 5.100.0"
    }
  }
}

provider "aws" {
  region = "us-east-1"
}

variable "image_tag" {
  description = "Tag of the bento image pushed to the deployment's repository; null creates the repository and the token secret only."
  type        = string
  default     = null
}

module "buckets" {
  source = "../../modules/buckets"

  name_prefix = "mlaas4hep-example"
  roles       = ["models"]
}

module "serving" {
  source = "../../modules/serving"

  name              = "mlaas4hep-example-serving"
  image_tag         = var.image_tag
  models_bucket_arn = module.buckets.arns["models"]
  model             = "higgs:production"

  cpu    = 2048
  memory = 4096

  min_replicas             = 1
  max_replicas             = 6
  autoscaling_metric       = "requests"
  autoscaling_target_value = 3000

  environment = {
    MLAAS4HEP_SERVE_PREDICT_AUTH = "1"
  }

  tags = { Project = "mlaas4hep", Environment = "example" }
}

output "repository_url" {
  description = "ECR repository to push the bento image to."
  value       = module.serving.repository_url
}

output "api_token_secret_arn" {
  description = "Secret to put the API token in (aws secretsmanager put-secret-value)."
  value       = module.serving.api_token_secret_arn
}

output "url" {
  description = "Base URL of the service (null before an image_tag is set)."
  value       = module.serving.url
}

output "autoscaling" {
  description = "Replica bounds and target tracking of the service."
  value       = module.serving.autoscaling
}
