# One function on its own: a work queue with its dead-letter queue, and the Lambda
# function that consumes it (role, log group, event source mapping). The deployment zip
# is built by scripts/build_lambda_package.py; `terraform validate` does not read it.

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

variable "package_path" {
  description = "Deployment zip built by scripts/build_lambda_package.py (relative to this folder: the repository's build/lambda/functions.zip)."
  type        = string
  default     = "../../../build/lambda/functions.zip"
}

module "queue" {
  source = "../../modules/queues"

  name                       = "mlaas4hep-example-merge-specs"
  visibility_timeout_seconds = 360 # 6 x the function's timeout, as AWS recommends for Lambda
  max_receive_count          = 3
}

module "function" {
  source = "../../modules/function"

  name         = "mlaas4hep-example-merge-specs"
  handler      = "functions.merge_specs.handler"
  package_path = var.package_path
  memory_size  = 512
  timeout      = 60
  queue_arn    = module.queue.arn

  batch_size                         = 10
  maximum_batching_window_in_seconds = 5
  maximum_concurrency                = 2

  environment = {
    MLAAS4HEP_SPECS_BUCKET         = "mlaas4hep-example-specs"
    MLAAS4HEP_FILE_SPECS_PREFIX    = "files/"
    MLAAS4HEP_DATASET_SPECS_PREFIX = "datasets/"
  }

  # Beyond its logs and its queue, the function reads file specs and writes dataset specs.
  policy_statements = [
    { sid = "ReadFileSpecs", actions = ["s3:GetObject", "s3:GetObjectVersion"], resources = ["arn:aws:s3:::mlaas4hep-example-specs/files/*"] },
    { sid = "WriteDatasetSpecs", actions = ["s3:GetObject", "s3:PutObject"], resources = ["arn:aws:s3:::mlaas4hep-example-specs/datasets/*"] },
  ]

  tags = { Project = "mlaas4hep", Environment = "example" }
}

output "function_arn" {
  description = "ARN of the example function."
  value       = module.function.function_arn
}

output "queue_url" {
  description = "URL of the queue that feeds the function."
  value       = module.queue.url
}

output "event_source_mapping" {
  description = "How the queue feeds the function."
  value       = module.function.event_source_mapping
}
