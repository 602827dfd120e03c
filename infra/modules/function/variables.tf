variable "name" {
  description = "Function name (also the name of its IAM role and the suffix of its log group)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.name))
    error_message = "name must be 1-64 letters, digits, hyphens or underscores."
  }
}

variable "handler" {
  description = "Python handler, \"module.path.function\", as Lambda and the local runtime import it."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)+$", var.handler))
    error_message = "handler must look like \"package.module.function\"."
  }
}

variable "package_path" {
  description = "Path of the deployment zip built by scripts/build_lambda_package.py."
  type        = string

  validation {
    condition     = endswith(var.package_path, ".zip")
    error_message = "package_path must name a .zip file."
  }
}

variable "layer_arns" {
  description = "Lambda layers with the function's dependencies (uproot, awkward, numpy, s3fs, ...)."
  type        = list(string)
  default     = []
}

variable "runtime" {
  description = "Lambda runtime."
  type        = string
  default     = "python3.11"

  validation {
    condition     = can(regex("^python3\\.1[1-9]$", var.runtime))
    error_message = "runtime must be python3.11 or later."
  }
}

variable "memory_size" {
  description = "Memory in MB (CPU share grows with it)."
  type        = number
  default     = 1024

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240
    error_message = "memory_size must be between 128 and 10240 MB."
  }
}

variable "timeout" {
  description = "Timeout of one invocation, in seconds."
  type        = number
  default     = 300

  validation {
    condition     = var.timeout >= 1 && var.timeout <= 900
    error_message = "timeout must be between 1 and 900 seconds."
  }
}

variable "reserved_concurrent_executions" {
  description = "Concurrency reserved for (and capping) the function; -1 leaves it unreserved."
  type        = number
  default     = -1

  validation {
    condition     = var.reserved_concurrent_executions >= -1
    error_message = "reserved_concurrent_executions must be -1 or more."
  }
}

variable "environment" {
  description = "Environment variables of the function (its configuration: buckets, prefixes, addresses)."
  type        = map(string)
  default     = {}
}

variable "queue_arn" {
  description = "ARN of the SQS queue the function consumes."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:sqs:", var.queue_arn))
    error_message = "queue_arn must be an SQS queue ARN."
  }
}

variable "batch_size" {
  description = "Maximum messages per invocation."
  type        = number
  default     = 10

  validation {
    condition     = var.batch_size >= 1 && var.batch_size <= 10000
    error_message = "batch_size must be between 1 and 10000."
  }
}

variable "maximum_batching_window_in_seconds" {
  description = "How long the poller gathers messages before invoking with a partial batch."
  type        = number
  default     = 0

  validation {
    condition     = var.maximum_batching_window_in_seconds >= 0 && var.maximum_batching_window_in_seconds <= 300
    error_message = "maximum_batching_window_in_seconds must be between 0 and 300."
  }
}

variable "maximum_concurrency" {
  description = "Concurrent invocations the SQS poller may drive (AWS allows 2-1000); the local runtime starts this many workers."
  type        = number
  default     = 2

  validation {
    condition     = var.maximum_concurrency >= 1 && var.maximum_concurrency <= 1000
    error_message = "maximum_concurrency must be between 1 and 1000."
  }
}

variable "event_source_mapping_enabled" {
  description = "Whether Lambda's own poller consumes the queue. Off against moto, which would try to run the code in Docker: the local runtime polls instead."
  type        = bool
  default     = true
}

variable "policy_statements" {
  description = "IAM statements the function needs beyond logging and consuming its queue (least privilege: name exact prefixes; list_prefixes limits an s3:ListBucket statement to keys under those prefixes)."
  type = list(object({
    sid           = string
    actions       = list(string)
    resources     = list(string)
    list_prefixes = optional(list(string), [])
  }))
  default = []

  validation {
    condition     = alltrue([for s in var.policy_statements : can(regex("^[A-Za-z0-9]+$", s.sid)) && length(s.actions) > 0 && length(s.resources) > 0])
    error_message = "Each statement needs an alphanumeric sid, at least one action and at least one resource."
  }
}

variable "log_retention_days" {
  description = "Retention of the function's CloudWatch log group."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}

variable "tracing_mode" {
  description = "X-Ray tracing mode."
  type        = string
  default     = "Active"

  validation {
    condition     = contains(["Active", "PassThrough"], var.tracing_mode)
    error_message = "tracing_mode must be Active or PassThrough."
  }
}

variable "tags" {
  description = "Tags added to every resource of the function."
  type        = map(string)
  default     = {}
}

variable "subnet_ids" {
  description = "Subnets the function runs in (its vpc_config), e.g. those from which the Ray head's Jobs API is reachable; none: outside any VPC."
  type        = list(string)
  default     = []
}

variable "security_group_ids" {
  description = "Security groups of the function in the VPC (required with subnet_ids)."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.security_group_ids) == 0 || alltrue([for g in var.security_group_ids : can(regex("^sg-[0-9a-f]+$", g))])
    error_message = "security_group_ids must be security group ids (sg-...)."
  }
}
