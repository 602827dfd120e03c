variable "name" {
  description = "Name of the deployment: the ECR repository, ECS cluster and service, load balancer, target group, roles and log group are named after it."
  type        = string

  validation {
    # The load balancer and its target group ("<name>-tg") allow 32 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{1,27}[a-z0-9]$", var.name))
    error_message = "name must be 3-29 lowercase letters, digits or hyphens, start with a letter and not end with a hyphen (the target group \"<name>-tg\" must fit in 32 characters)."
  }
}

# --- the image -----------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of the bento image pushed to this module's ECR repository (bentoml containerize, then docker push). null creates the repository (and the token secret) only: push the first image, then set it."
  type        = string
  default     = null

  validation {
    condition     = var.image_tag == null || can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a Docker tag: up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'."
  }
}

variable "image_tag_mutability" {
  description = "IMMUTABLE (a tag names one image for ever: deploy by version tag) or MUTABLE."
  type        = string
  default     = "IMMUTABLE"
  nullable    = false

  validation {
    condition     = contains(["IMMUTABLE", "MUTABLE"], var.image_tag_mutability)
    error_message = "image_tag_mutability must be IMMUTABLE or MUTABLE."
  }
}

variable "keep_tagged_images" {
  description = "The ECR lifecycle policy keeps this many most recent tagged images and expires older ones."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = var.keep_tagged_images >= 1 && floor(var.keep_tagged_images) == var.keep_tagged_images
    error_message = "keep_tagged_images must be a whole number of at least 1."
  }
}

variable "untagged_image_expiry_days" {
  description = "The ECR lifecycle policy expires untagged images (layers of superseded pushes) after this many days."
  type        = number
  default     = 7
  nullable    = false

  validation {
    condition     = var.untagged_image_expiry_days >= 1 && floor(var.untagged_image_expiry_days) == var.untagged_image_expiry_days
    error_message = "untagged_image_expiry_days must be a whole number of at least 1."
  }
}

# --- the task --------------------------------------------------------------------------

variable "container_port" {
  description = "Port the service listens on in the container (bentoml serve: 3000)."
  type        = number
  default     = 3000
  nullable    = false

  validation {
    condition     = var.container_port >= 1024 && var.container_port <= 65535
    error_message = "container_port must be between 1024 and 65535 (the image does not run as root)."
  }
}

variable "cpu" {
  description = "Fargate task CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 1024
  nullable    = false

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu)
    error_message = "cpu must be a Fargate size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "memory" {
  description = "Fargate task memory in MiB; it must suit cpu (e.g. 2048-8192 for 1024 CPU units)."
  type        = number
  default     = 2048
  nullable    = false

  validation {
    # Fargate's CPU/memory pairs (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html).
    condition = (
      var.cpu == 256 ? contains([512, 1024, 2048], var.memory) :
      var.cpu == 512 ? var.memory >= 1024 && var.memory <= 4096 && var.memory % 1024 == 0 :
      var.cpu == 1024 ? var.memory >= 2048 && var.memory <= 8192 && var.memory % 1024 == 0 :
      var.cpu == 2048 ? var.memory >= 4096 && var.memory <= 16384 && var.memory % 1024 == 0 :
      var.cpu == 4096 ? var.memory >= 8192 && var.memory <= 30720 && var.memory % 1024 == 0 :
      var.cpu == 8192 ? var.memory >= 16384 && var.memory <= 61440 && var.memory % 4096 == 0 :
      var.memory >= 32768 && var.memory <= 122880 && var.memory % 8192 == 0
    )
    error_message = "memory does not suit cpu on Fargate: 256 CPU takes 512/1024/2048 MiB, 512 takes 1-4 GiB, 1024 takes 2-8 GiB, 2048 takes 4-16 GiB, 4096 takes 8-30 GiB (1 GiB steps), 8192 takes 16-60 GiB (4 GiB steps), 16384 takes 32-120 GiB (8 GiB steps)."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the image: X86_64 or ARM64 (Graviton, cheaper; build the image for linux/arm64)."
  type        = string
  default     = "X86_64"
  nullable    = false

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "health_check_path" {
  description = "HTTP path that answers 200 once the model is loaded; the target group and the container health check use it."
  type        = string
  default     = "/readyz"
  nullable    = false

  validation {
    condition     = can(regex("^/[A-Za-z0-9/_.-]*$", var.health_check_path))
    error_message = "health_check_path must be an absolute URL path such as /readyz."
  }
}

variable "health_check_grace_period_seconds" {
  description = "Time a new task has to load its model before failed health checks replace it."
  type        = number
  default     = 120
  nullable    = false

  validation {
    condition     = var.health_check_grace_period_seconds >= 0 && var.health_check_grace_period_seconds <= 2147483647
    error_message = "health_check_grace_period_seconds must not be negative."
  }
}

variable "models_bucket_arn" {
  description = "ARN of the models bucket: the tasks may read it (bundles and aliases), nothing else."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9.-]{3,63}$", var.models_bucket_arn))
    error_message = "models_bucket_arn must be an S3 bucket ARN (arn:aws:s3:::name)."
  }
}

variable "models_prefix" {
  description = "Key prefix under which the tasks may read model bundles (\"\" = the whole bucket); ends with \"/\" when set."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = var.models_prefix == "" || can(regex("^[a-z0-9][a-z0-9_/-]*/$", var.models_prefix))
    error_message = "models_prefix must be empty or lowercase letters, digits, '_', '-' or '/', ending with '/'."
  }
}

variable "model" {
  description = "What the service serves (MLAAS4HEP_SERVE_MODEL): a model name (its production alias, else its latest version), name:alias, name:version, or an alias held by one model."
  type        = string
  default     = "production"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$", var.model))
    error_message = "model must be name, name:alias, name:version or an alias: letters, digits, '_', '.', '-', at most one ':'."
  }
}

variable "workers" {
  description = "Worker processes of the service (MLAAS4HEP_SERVE_WORKERS); null = one per vCPU of the task."
  type        = number
  default     = null

  validation {
    condition     = var.workers == null || try(var.workers >= 1 && floor(var.workers) == var.workers, false)
    error_message = "workers must be a whole number of at least 1, or null."
  }
}

variable "environment" {
  description = "Further environment variables of the container, e.g. MLAAS4HEP_SERVE_PREDICT_AUTH = \"1\" (they override the module's). No secrets: they are visible in the task definition; the token comes from api_token_secret_arn."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = !contains(keys(var.environment), "MLAAS4HEP_SERVE_TOKEN")
    error_message = "environment must not set MLAAS4HEP_SERVE_TOKEN: the token is a secret, given through api_token_secret_arn."
  }
}

variable "readable_bucket_arns" {
  description = "Further buckets the tasks may read (GetObject, ListBucket), e.g. the data bucket for POST /predict_file with s3:// URLs; none by default: the models bucket only. The service is told them as MLAAS4HEP_SERVE_FILE_SOURCES: /predict_file reads URLs in these buckets only."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for arn in var.readable_bucket_arns : can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9.-]{3,63}$", arn))])
    error_message = "readable_bucket_arns must be S3 bucket ARNs (arn:aws:s3:::name)."
  }
}

variable "api_token_secret_arn" {
  description = "ARN of an existing Secrets Manager secret or SSM SecureString parameter that holds the API token (given to the container as MLAAS4HEP_SERVE_TOKEN, at least 16 characters). null creates an empty Secrets Manager secret: put its value with the AWS CLI, never in Terraform."
  type        = string
  default     = null

  validation {
    condition     = var.api_token_secret_arn == null || can(regex("^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:|ssm:[a-z0-9-]+:[0-9]{12}:parameter/).+$", var.api_token_secret_arn))
    error_message = "api_token_secret_arn must be a Secrets Manager secret ARN or an SSM parameter ARN."
  }
}

# --- replicas and autoscaling ----------------------------------------------------------

variable "min_replicas" {
  description = "Fewest running tasks (the desired count when autoscaling is off)."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.min_replicas >= 0 && floor(var.min_replicas) == var.min_replicas
    error_message = "min_replicas must be a whole number, 0 or more."
  }
}

variable "max_replicas" {
  description = "Most running tasks autoscaling may start."
  type        = number
  default     = 4
  nullable    = false

  validation {
    condition     = var.max_replicas >= var.min_replicas && var.max_replicas >= 1 && floor(var.max_replicas) == var.max_replicas
    error_message = "max_replicas must be a whole number, at least 1 and at least min_replicas."
  }
}

variable "enable_autoscaling" {
  description = "Create the Application Auto Scaling target and target-tracking policy. Off against moto, which does not implement Application Auto Scaling tags; the service then runs min_replicas tasks."
  type        = bool
  default     = true
  nullable    = false
}

variable "autoscaling_metric" {
  description = "What target tracking follows: \"cpu\" (ECSServiceAverageCPUUtilization, percent) or \"requests\" (ALBRequestCountPerTarget, requests per task per minute)."
  type        = string
  default     = "cpu"
  nullable    = false

  validation {
    condition     = contains(["cpu", "requests"], var.autoscaling_metric)
    error_message = "autoscaling_metric must be \"cpu\" or \"requests\"."
  }
}

variable "autoscaling_target_value" {
  description = "The value target tracking holds the metric at: average CPU percent, or requests per task per minute. null takes 60 (cpu) or 6000 (requests: ~100 requests/s per task)."
  type        = number
  default     = null

  validation {
    condition     = var.autoscaling_target_value == null || try(var.autoscaling_target_value > 0 && (var.autoscaling_metric != "cpu" || var.autoscaling_target_value <= 100), false)
    error_message = "autoscaling_target_value must be positive, and a percentage (at most 100) for the cpu metric."
  }
}

variable "scale_in_cooldown_seconds" {
  description = "Time after a scale-in before another scale-in (slow: a model load is expensive)."
  type        = number
  default     = 300
  nullable    = false

  validation {
    condition     = var.scale_in_cooldown_seconds >= 0
    error_message = "scale_in_cooldown_seconds must not be negative."
  }
}

variable "scale_out_cooldown_seconds" {
  description = "Time after a scale-out before another scale-out."
  type        = number
  default     = 60
  nullable    = false

  validation {
    condition     = var.scale_out_cooldown_seconds >= 0
    error_message = "scale_out_cooldown_seconds must not be negative."
  }
}

# --- network and load balancer ----------------------------------------------------------

variable "vpc_id" {
  description = "VPC of the service; null creates a minimal one (vpc_cidr, two public subnets, an internet gateway, flow logs) and ignores the subnet variables."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_id == null || can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...) or null."
  }
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of the load balancer (public ones for an internet-facing one), in two or more availability zones; required with vpc_id."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for s in var.load_balancer_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "load_balancer_subnet_ids must be subnet ids (subnet-...)."
  }

  validation {
    condition     = var.vpc_id == null || length(var.load_balancer_subnet_ids) >= 2
    error_message = "With vpc_id, give at least two load_balancer_subnet_ids in different availability zones."
  }
}

variable "task_subnet_ids" {
  description = "Subnets of the tasks (private ones with a NAT gateway or VPC endpoints for ECR, S3, Logs and Secrets Manager); empty puts them in the load balancer's subnets."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for s in var.task_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "task_subnet_ids must be subnet ids (subnet-...)."
  }
}

variable "task_security_group_ids" {
  description = "Further security groups of the tasks besides their own (e.g. the Ray cluster's clients group, whose members may call its Jobs API)."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for g in var.task_security_group_ids : can(regex("^sg-[0-9a-f]+$", g))])
    error_message = "task_security_group_ids must be security group ids (sg-...)."
  }
}

variable "assign_public_ip" {
  description = "Give tasks a public IP so that they reach ECR and AWS APIs without a NAT gateway; null = true in the minimal VPC (public subnets only), false in a given VPC. Their security group still admits only the load balancer."
  type        = bool
  default     = null
}

variable "vpc_cidr" {
  description = "Address range of the minimal VPC (used when vpc_id is null); its first two /24s become the public subnets."
  type        = string
  default     = "10.42.0.0/16"
  nullable    = false

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 22
    error_message = "vpc_cidr must be an IPv4 CIDR block of /22 or larger."
  }
}

variable "availability_zones" {
  description = "The two availability zones of the minimal VPC's subnets; empty takes the region's first two."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = length(var.availability_zones) == 0 || length(var.availability_zones) == 2
    error_message = "availability_zones must be empty or name exactly two zones."
  }
}

variable "internal" {
  description = "An internal load balancer (reachable from the VPC and its peers only) instead of an internet-facing one."
  type        = bool
  default     = false
  nullable    = false
}

variable "ingress_cidr_blocks" {
  description = "Client address ranges the load balancer accepts (HTTP 80 and, with a certificate, HTTPS 443)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false

  validation {
    condition     = length(var.ingress_cidr_blocks) > 0 && alltrue([for c in var.ingress_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "ingress_cidr_blocks must be one or more IPv4 CIDR blocks."
  }
}

variable "certificate_arn" {
  description = "ACM certificate for HTTPS on 443; port 80 then redirects to it. null serves plain HTTP on 80 (the API token then travels in clear: use it only on a private network)."
  type        = string
  default     = null

  validation {
    condition     = var.certificate_arn == null || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN or null."
  }
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  nullable    = false

  validation {
    condition     = startswith(var.ssl_policy, "ELBSecurityPolicy-")
    error_message = "ssl_policy must be an ELB security policy name (ELBSecurityPolicy-...)."
  }
}

variable "idle_timeout_seconds" {
  description = "Load balancer idle timeout: the longest a request (a large /predict_file upload) may stay silent."
  type        = number
  default     = 120
  nullable    = false

  validation {
    condition     = var.idle_timeout_seconds >= 1 && var.idle_timeout_seconds <= 4000
    error_message = "idle_timeout_seconds must be between 1 and 4000."
  }
}

variable "deregistration_delay_seconds" {
  description = "How long a stopping task keeps draining in-flight requests."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = var.deregistration_delay_seconds >= 0 && var.deregistration_delay_seconds <= 3600
    error_message = "deregistration_delay_seconds must be between 0 and 3600."
  }
}

variable "access_logs_bucket" {
  description = "Bucket (with the ELB log delivery policy) for the load balancer's access logs; null keeps them off."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion (turn off before a destroy)."
  type        = bool
  default     = false
  nullable    = false
}

# --- operations ------------------------------------------------------------------------

variable "container_insights" {
  description = "CloudWatch Container Insights on the cluster (per-task CPU/memory metrics, at a cost)."
  type        = bool
  default     = true
  nullable    = false
}

variable "log_retention_days" {
  description = "Retention of the service's and the flow logs' CloudWatch log groups."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}

variable "kms_key_arn" {
  description = "KMS key for the repository, the log groups and the token secret; null uses the services' own keys. Its key policy must let CloudWatch Logs use it."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN or null."
  }
}

variable "force_delete" {
  description = "Let terraform destroy delete a repository that still holds images, and the token secret without a recovery window (throw-away stacks only)."
  type        = bool
  default     = false
  nullable    = false
}

variable "tags" {
  description = "Tags added to every resource of the deployment."
  type        = map(string)
  default     = {}
  nullable    = false
}
