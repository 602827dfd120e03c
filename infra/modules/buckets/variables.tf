variable "name_prefix" {
  description = "Prefix of every bucket name, e.g. \"mlaas4hep-dev\"; a bucket is named \"<name_prefix>-<role><name_suffix>\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,40}$", var.name_prefix))
    error_message = "name_prefix must be 2-41 lowercase letters, digits or hyphens, starting with a letter or digit."
  }
}

variable "name_suffix" {
  description = "Suffix appended to every bucket name to make it globally unique on AWS (e.g. \"-123456789012\"); empty for moto."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[a-z0-9-]{0,20}$", var.name_suffix))
    error_message = "name_suffix must be at most 20 lowercase letters, digits or hyphens."
  }
}

variable "roles" {
  description = "The buckets to create, by role (the role becomes part of the name and the key of the outputs)."
  type        = set(string)
  default     = ["data", "specs", "models", "cache"]

  validation {
    condition     = alltrue([for r in var.roles : can(regex("^[a-z][a-z0-9]{1,15}$", r))])
    error_message = "Each role must be 2-16 lowercase letters or digits, starting with a letter."
  }
}

variable "expire_objects_after_days" {
  description = "Per role, the number of days after which current objects expire (a lifecycle rule); roles not listed keep their objects. The cache bucket is the expected user."
  type        = map(number)
  default     = { cache = 14 }

  validation {
    condition     = alltrue([for d in values(var.expire_objects_after_days) : d >= 1 && floor(d) == d])
    error_message = "Expiration days must be whole numbers of at least 1."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which non-current object versions are deleted in every bucket (the specs bucket rewrites its dataset specs on every merge)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of at least 1."
  }
}

variable "kms_key_arn" {
  description = "KMS key for server-side encryption (SSE-KMS); null selects SSE-S3 (AES256)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN or null."
  }
}

variable "tls_only" {
  description = "Attach a bucket policy that denies every request made without TLS. Keep it on; only a plain-HTTP local endpoint (moto, which evaluates bucket policies) needs it off."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Allow destroying buckets that still hold objects (true for throw-away local stacks only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to every bucket."
  type        = map(string)
  default     = {}
}
