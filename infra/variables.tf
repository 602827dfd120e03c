variable "project" {
  description = "Project name: the first part of every resource name."
  type        = string
  default     = "mlaas4hep"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.project))
    error_message = "project must be 2-21 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "environment" {
  description = "Deployment name (local, dev, prod, ...): the second part of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,11}$", var.environment))
    error_message = "environment must be 2-12 lowercase letters or digits, starting with a letter."
  }
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "aws_endpoint_url" {
  description = "One endpoint for every AWS service (a moto server, http://127.0.0.1:PORT); null for real AWS. Also given to the functions as AWS_ENDPOINT_URL."
  type        = string
  default     = null

  validation {
    condition     = var.aws_endpoint_url == null || can(regex("^https?://[^/]+$", var.aws_endpoint_url))
    error_message = "aws_endpoint_url must be scheme://host[:port] without a path, or null."
  }
}

variable "bucket_name_suffix" {
  description = "Suffix that makes bucket names globally unique on AWS (e.g. \"-<account id>\"); empty for moto."
  type        = string
  default     = ""
}

variable "tls_only_buckets" {
  description = "Deny every S3 request made without TLS (bucket policy). Off only for a plain-HTTP local endpoint: moto serves HTTP and enforces bucket policies."
  type        = bool
  default     = true
}

variable "force_destroy_buckets" {
  description = "Let terraform destroy delete buckets that still hold objects (local stacks only)."
  type        = bool
  default     = false
}

variable "cache_expiration_days" {
  description = "Days after which objects of the cache bucket (staged copies of remote files) expire."
  type        = number
  default     = 14

  validation {
    condition     = var.cache_expiration_days >= 1
    error_message = "cache_expiration_days must be at least 1."
  }
}

variable "prefixes" {
  description = "Key prefixes: data (ROOT files, <data>/<dataset>/...), file_specs and dataset_specs (specs bucket), quarantine and leases (specs bucket), retrain_state (models bucket). Each ends with \"/\"."
  type = object({
    data          = optional(string, "datasets/")
    file_specs    = optional(string, "files/")
    dataset_specs = optional(string, "datasets/")
    quarantine    = optional(string, "quarantine/")
    retrain_state = optional(string, "retrain/")
    leases        = optional(string, "leases/")
  })
  default = {}

  validation {
    condition     = alltrue([for p in values(var.prefixes) : can(regex("^[a-z0-9][a-z0-9_/-]*/$", p))])
    error_message = "Each prefix must be lowercase letters, digits, '_', '-' or '/', and end with '/'."
  }

  validation {
    condition     = length(distinct([var.prefixes.file_specs, var.prefixes.dataset_specs, var.prefixes.quarantine, var.prefixes.leases])) == 4 && !startswith(var.prefixes.file_specs, var.prefixes.dataset_specs) && !startswith(var.prefixes.dataset_specs, var.prefixes.file_specs)
    error_message = "file_specs, dataset_specs, quarantine and leases prefixes share the specs bucket: they must differ and not nest, or one notification would feed the other."
  }
}

variable "lambda_package_path" {
  description = "Deployment zip built by scripts/build_lambda_package.py; null takes build/lambda/functions.zip at the repository root."
  type        = string
  default     = null
}

variable "lambda_layer_arns" {
  description = "Layers that hold the functions' dependencies (see infra/README.md: scripts/build_lambda_package.py --layer)."
  type        = list(string)
  default     = []
}

variable "functions" {
  description = "Sizing and delivery of each function: memory (MB), timeout (s), SQS batch size and batching window (s), concurrency, deliveries before the DLQ, and the queue visibility timeout (s; null = 6 x timeout as AWS recommends)."
  type = map(object({
    memory_size                        = optional(number, 1024)
    timeout                            = optional(number, 300)
    batch_size                         = optional(number, 1)
    maximum_batching_window_in_seconds = optional(number, 0)
    maximum_concurrency                = optional(number, 2)
    max_receive_count                  = optional(number, 3)
    visibility_timeout_seconds         = optional(number)
    reserved_concurrent_executions     = optional(number, -1)
  }))
  default = {
    spec_file   = { memory_size = 2048, timeout = 900, batch_size = 1, maximum_concurrency = 50 }
    merge_specs = { memory_size = 512, timeout = 120, batch_size = 10, maximum_batching_window_in_seconds = 5, maximum_concurrency = 2, max_receive_count = 10 }
    retrain     = { memory_size = 256, timeout = 60, batch_size = 10, maximum_batching_window_in_seconds = 5, maximum_concurrency = 2, max_receive_count = 5 }
  }

  validation {
    condition     = length(setsubtract(["spec_file", "merge_specs", "retrain"], keys(var.functions))) == 0 && length(setsubtract(keys(var.functions), ["spec_file", "merge_specs", "retrain"])) == 0
    error_message = "functions must configure exactly spec_file, merge_specs and retrain."
  }

  validation {
    condition     = alltrue([for f in values(var.functions) : f.visibility_timeout_seconds == null || try(f.visibility_timeout_seconds >= f.timeout, false)])
    error_message = "A queue's visibility timeout must be at least its function's timeout, or a message would be delivered again while still being processed."
  }
}

variable "event_source_mappings_enabled" {
  description = "Whether Lambda's pollers consume the queues. false against moto (it would try to run the code in Docker); the local runtime then plays the poller."
  type        = bool
  default     = true
}

variable "ray_address" {
  description = "Ray Jobs API address the retrain function submits to (the Ray dashboard, http://host:8265); null disables submission."
  type        = string
  default     = null

  validation {
    condition     = var.ray_address == null || can(regex("^https?://[^/]+/?$", var.ray_address))
    error_message = "ray_address must be http(s)://host:port or null."
  }
}

variable "ray_auth" {
  description = "Whether the retrain function sends a Ray token (Ray's token authentication, RAY_AUTH_MODE=token on the cluster) with every Jobs API call. The token is read from Secrets Manager: ray_token_secret_arn, or a secret this module creates, whose value you put (aws secretsmanager put-secret-value), the cluster's own token."
  type        = bool
  default     = true
}

variable "ray_token_secret_arn" {
  description = "An existing Secrets Manager secret holding the Ray cluster's token; null: the module creates \"<prefix>-ray-token\" (empty until you put the token)."
  type        = string
  default     = null

  validation {
    condition     = var.ray_token_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:", var.ray_token_secret_arn))
    error_message = "ray_token_secret_arn must be a Secrets Manager secret ARN or null."
  }
}

variable "retrain_entrypoint" {
  description = "Command of the retraining job (ray_jobs/retrain.py: trains the recipe <models_url>train.yaml on the DatasetSpec's files, registers and promotes); {dataset}, {dataset_spec_url} and {models_url} are filled in at submission, each shell-quoted (so they must stand as whole words)."
  type        = string
  default     = "python ray_jobs/retrain.py --dataset {dataset} --dataset-spec {dataset_spec_url} --models {models_url} --margin 0.01"

  validation {
    condition     = length(trimspace(var.retrain_entrypoint)) > 0
    error_message = "retrain_entrypoint must not be empty."
  }
}

variable "retrain_runtime_env" {
  description = "Ray runtime_env of the retraining job: on a cluster, working_dir as an uploaded package URI (s3://bucket/mlaas4hep.zip), pip, env_vars (BENTOML_HOME, ...). With serving_enabled, env_vars also gets MLAAS4HEP_REGISTRY_URL, the registry the serving tasks follow (output registry_url), unless it sets that variable itself."
  type        = any
  default     = {}
}

variable "retrain_debounce_seconds" {
  description = "Quiet time the dataset spec must keep before a training job is submitted: a burst of new files gives one job."
  type        = number
  default     = 300

  validation {
    condition     = var.retrain_debounce_seconds >= 0 && var.retrain_debounce_seconds <= 900
    error_message = "retrain_debounce_seconds must be between 0 and 900 (the longest SQS message delay)."
  }
}

variable "retrain_max_attempts" {
  description = "Submissions of one dataset spec version at most: a retraining job that fails (other than with the job's configuration/data error status, 2, or a lost job) is submitted again under a new id."
  type        = number
  default     = 3

  validation {
    condition     = var.retrain_max_attempts >= 1 && var.retrain_max_attempts <= 20 && floor(var.retrain_max_attempts) == var.retrain_max_attempts
    error_message = "retrain_max_attempts must be a whole number between 1 and 20."
  }
}

variable "retrain_retry_seconds" {
  description = "How often a submitted retraining job is checked, and the first retry's delay (doubling per attempt, as the re-arm while the Ray Jobs API cannot be reached does; capped at 900 s)."
  type        = number
  default     = 60

  validation {
    condition     = var.retrain_retry_seconds >= 1 && var.retrain_retry_seconds <= 900
    error_message = "retrain_retry_seconds must be between 1 and 900 (the longest SQS message delay)."
  }
}

variable "log_retention_days" {
  description = "Retention of the functions' log groups, in days."
  type        = number
  default     = 30
}

variable "tracing_mode" {
  description = "X-Ray tracing of the functions (Active or PassThrough)."
  type        = string
  default     = "Active"
}

variable "kms_key_arn" {
  description = "KMS key for buckets and queues; null uses the services' own keys (SSE-S3, SSE-SQS)."
  type        = string
  default     = null
}

variable "function_subnet_ids" {
  description = "Subnets the functions run in (their vpc_config): those from which the Ray head's Jobs API is reachable when the cluster is private. The subnets need a route to S3 and SQS (VPC endpoints or a NAT gateway). None: the functions run outside any VPC."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.function_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "function_subnet_ids must be subnet ids (subnet-...)."
  }
}

variable "function_security_group_ids" {
  description = "Security groups of the functions in the VPC: one that the Ray head's security group lets reach its Jobs API port. Required with function_subnet_ids."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for g in var.function_security_group_ids : can(regex("^sg-[0-9a-f]+$", g))])
    error_message = "function_security_group_ids must be security group ids (sg-...)."
  }

  validation {
    condition     = length(var.function_subnet_ids) == 0 || length(var.function_security_group_ids) > 0 || var.ray_cluster.enabled
    error_message = "function_security_group_ids must name at least one security group when function_subnet_ids are given (with ray_cluster enabled, its clients group is enough)."
  }
}

variable "alarm_actions" {
  description = "ARNs (SNS topics, for example) told when a dead-letter queue's alarm changes state: each function's queue has one that goes off at its first dead letter."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# --- serving: the BentoML service on ECS Fargate (modules/serving) ---------------------------

variable "serving_enabled" {
  description = "Create the serving deployment (ECR repository and token secret; with serving_image_tag also the ECS service, load balancer and autoscaling)."
  type        = bool
  default     = true
}

variable "serving_image_tag" {
  description = "Tag of the bento image pushed to the serving repository (output serving.repository_url). null creates the repository and the token secret only: push an image, then set it (see infra/README.md)."
  type        = string
  default     = null
}

variable "serving_min_replicas" {
  description = "Fewest running service tasks (the task count when autoscaling is off)."
  type        = number
  default     = 1

  validation {
    condition     = var.serving_min_replicas >= 0 && floor(var.serving_min_replicas) == var.serving_min_replicas
    error_message = "serving_min_replicas must be a whole number, 0 or more."
  }
}

variable "serving_max_replicas" {
  description = "Most running service tasks autoscaling may start."
  type        = number
  default     = 4

  validation {
    condition     = var.serving_max_replicas >= 1 && var.serving_max_replicas >= var.serving_min_replicas && floor(var.serving_max_replicas) == var.serving_max_replicas
    error_message = "serving_max_replicas must be a whole number, at least 1 and at least serving_min_replicas."
  }
}

variable "serving_enable_autoscaling" {
  description = "Target-tracking autoscaling of the service (Application Auto Scaling). Off against moto, which does not implement Application Auto Scaling tags."
  type        = bool
  default     = true
}

variable "serving_autoscaling_metric" {
  description = "What autoscaling tracks: \"cpu\" (average CPU percent) or \"requests\" (ALBRequestCountPerTarget, requests per task per minute)."
  type        = string
  default     = "cpu"

  validation {
    condition     = contains(["cpu", "requests"], var.serving_autoscaling_metric)
    error_message = "serving_autoscaling_metric must be \"cpu\" or \"requests\"."
  }
}

variable "serving_autoscaling_target_value" {
  description = "Value autoscaling holds the metric at; null takes 60 (CPU percent) or 6000 (requests per task per minute)."
  type        = number
  default     = null
}

variable "serving" {
  description = "Further settings of the serving deployment, each optional (null = the module's default, see modules/serving/variables.tf): cpu, memory, cpu_architecture, container_port, health_check_grace_period_seconds, model, workers, models_prefix, environment, readable_bucket_arns, api_token_secret_arn, vpc_id, load_balancer_subnet_ids, task_subnet_ids, assign_public_ip, vpc_cidr, availability_zones, internal, ingress_cidr_blocks, certificate_arn, access_logs_bucket, deletion_protection, container_insights, force_delete."
  type = object({
    cpu                               = optional(number)
    memory                            = optional(number)
    cpu_architecture                  = optional(string)
    container_port                    = optional(number)
    health_check_grace_period_seconds = optional(number)
    model                             = optional(string)
    workers                           = optional(number)
    models_prefix                     = optional(string)
    environment                       = optional(map(string))
    readable_bucket_arns              = optional(list(string))
    api_token_secret_arn              = optional(string)
    vpc_id                            = optional(string)
    load_balancer_subnet_ids          = optional(list(string))
    task_subnet_ids                   = optional(list(string))
    assign_public_ip                  = optional(bool)
    vpc_cidr                          = optional(string)
    availability_zones                = optional(list(string))
    internal                          = optional(bool)
    ingress_cidr_blocks               = optional(list(string))
    certificate_arn                   = optional(string)
    access_logs_bucket                = optional(string)
    deletion_protection               = optional(bool)
    container_insights                = optional(bool)
    force_delete                      = optional(bool)
  })
  default  = {}
  nullable = false
}

variable "ray_cluster" {
  description = "The Ray cluster on EC2 the retraining jobs run on (modules/ray_cluster): with enabled, the functions submit to its head (ray_address must then be null) and join its clients group, and the serving tasks too. Each other setting is optional (null = the module's default, see modules/ray_cluster/variables.tf): vpc_id and subnet_ids (default: the serving deployment's VPC and task subnets), associate_public_ip, ami_id, ami_ssm_parameter, head_instance_type, head_cpus, worker_instance_type, gpu_workers, min_workers, max_workers, root_volume_gb, package (default: this version of mlaas4hep with the ray, torch, s3 and xrootd extras), wheel_s3_uri, python_version, client_security_group_ids, egress_cidr_blocks, environment."
  type = object({
    enabled                   = optional(bool, false)
    vpc_id                    = optional(string)
    subnet_ids                = optional(list(string))
    associate_public_ip       = optional(bool)
    ami_id                    = optional(string)
    ami_ssm_parameter         = optional(string)
    head_instance_type        = optional(string)
    head_cpus                 = optional(number)
    worker_instance_type      = optional(string)
    gpu_workers               = optional(bool)
    min_workers               = optional(number)
    max_workers               = optional(number)
    root_volume_gb            = optional(number)
    package                   = optional(string)
    wheel_s3_uri              = optional(string)
    python_version            = optional(string)
    client_security_group_ids = optional(list(string))
    egress_cidr_blocks        = optional(list(string))
    environment               = optional(map(string))
  })
  default  = {}
  nullable = false

  validation {
    condition     = !var.ray_cluster.enabled || var.ray_address == null
    error_message = "ray_cluster.enabled and ray_address exclude each other: the functions submit to the cluster's head, or to ray_address."
  }

  validation {
    condition     = !var.ray_cluster.enabled || var.ray_cluster.vpc_id != null || (var.serving_enabled && var.serving_image_tag != null)
    error_message = "ray_cluster needs a VPC: set ray_cluster.vpc_id and ray_cluster.subnet_ids, or deploy the serving service (serving_image_tag) whose VPC the cluster then joins."
  }

  validation {
    condition     = !var.ray_cluster.enabled || (var.ray_cluster.vpc_id == null) == (var.ray_cluster.subnet_ids == null)
    error_message = "ray_cluster.vpc_id and ray_cluster.subnet_ids go together: give both, or neither (the serving deployment's VPC)."
  }

  validation {
    condition     = !var.ray_cluster.enabled || var.ray_cluster.vpc_id == null || !(var.serving_enabled && var.serving_image_tag != null) || var.ray_cluster.vpc_id == var.serving.vpc_id
    error_message = "ray_cluster.vpc_id is not serving.vpc_id (null: a VPC of its own) while the serving tasks are deployed: the cluster, the functions and the serving tasks share one VPC (set serving.vpc_id to the cluster's, or leave ray_cluster.vpc_id out to use the serving VPC)."
  }

  validation {
    condition     = !var.ray_cluster.enabled || length(var.function_subnet_ids) > 0
    error_message = "ray_cluster is enabled but function_subnet_ids is empty: the functions reach the head's Jobs API inside the VPC, so they need subnets there (private ones with a NAT gateway, or VPC endpoints for S3, SQS and Secrets Manager)."
  }
}
