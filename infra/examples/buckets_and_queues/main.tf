# The storage and queue modules on their own: private buckets and a work queue with its
# dead-letter queue that the data bucket may notify. `terraform validate` checks it.

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

module "buckets" {
  source = "../../modules/buckets"

  name_prefix = "mlaas4hep-example"
  roles       = ["data", "specs"]
}

module "queue" {
  source = "../../modules/queues"

  name                  = "mlaas4hep-example-spec-file"
  max_receive_count     = 3
  s3_source_bucket_arns = [module.buckets.arns["data"]]
}

output "queue_url" {
  description = "URL of the example work queue."
  value       = module.queue.url
}
