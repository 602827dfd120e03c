variable "name" {
  description = "Name of the work queue; its dead-letter queue is \"<name>-dlq\"."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,76}$", var.name))
    error_message = "name must be 1-76 letters, digits, hyphens or underscores (76 leaves room for \"-dlq\")."
  }
}

variable "visibility_timeout_seconds" {
  description = "How long a received message stays hidden before it is delivered again (at least the consumer's timeout; AWS recommends 6x for Lambda)."
  type        = number
  default     = 300

  validation {
    condition     = var.visibility_timeout_seconds >= 0 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds must be between 0 and 43200."
  }
}

variable "message_retention_seconds" {
  description = "How long an unprocessed message is kept in the work queue."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 60 and 1209600."
  }
}

variable "dlq_message_retention_seconds" {
  description = "How long a failed message is kept in the dead-letter queue (longer than the work queue, to leave time to inspect it)."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dlq_message_retention_seconds >= 60 && var.dlq_message_retention_seconds <= 1209600
    error_message = "dlq_message_retention_seconds must be between 60 and 1209600."
  }
}

variable "max_receive_count" {
  description = "Deliveries of a message before it is moved to the dead-letter queue."
  type        = number
  default     = 3

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "s3_source_bucket_arns" {
  description = "Buckets whose event notifications may send messages to the work queue."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.s3_source_bucket_arns : can(regex("^arn:aws[a-z-]*:s3:::", arn))])
    error_message = "s3_source_bucket_arns must hold S3 bucket ARNs."
  }
}

variable "source_account_id" {
  description = "Account that owns the source buckets (aws:SourceAccount condition); null skips the condition."
  type        = string
  default     = null

  validation {
    condition     = var.source_account_id == null || can(regex("^[0-9]{12}$", var.source_account_id))
    error_message = "source_account_id must be a 12-digit AWS account id or null."
  }
}

variable "kms_key_arn" {
  description = "KMS key for queue encryption; null selects SQS-managed encryption (SSE-SQS)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN or null."
  }
}

variable "tags" {
  description = "Tags added to both queues."
  type        = map(string)
  default     = {}
}

variable "alarm_actions" {
  description = "ARNs told when the dead-letter queue's alarm changes state (SNS topics, for example); none by default."
  type        = list(string)
  default     = []
}
