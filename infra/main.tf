# The event pipeline of mlaas4hep, declared once for AWS and for the local moto stack:
#
#   data bucket (*.root under prefixes.data)   -> spec_file queue   -> spec_file
#   data bucket (<dataset>/files.txt, .json)   -> spec_file queue   -> spec_file (entries: to its own queue)
#   specs bucket (*.json under file_specs)     -> merge_specs queue -> merge_specs
#   (created and removed objects both: a removed file leaves the dataset spec)
#   specs bucket (dataset.json, dataset_specs) -> retrain queue     -> retrain -> Ray Jobs API
#
# The local runtime (functions/local_runtime.py) reads the `functions` output to know
# which handler consumes which queue: this file is the only copy of the wiring.

data "aws_caller_identity" "current" {}

locals {
  name_prefix = "${var.project}-${var.environment}"
  account_id  = data.aws_caller_identity.current.account_id
  package     = coalesce(var.lambda_package_path, "${path.root}/../build/lambda/functions.zip")

  handlers = {
    spec_file   = "functions.spec_file.handler"
    merge_specs = "functions.merge_specs.handler"
    retrain     = "functions.retrain.handler"
  }

  data_arn   = module.buckets.arns["data"]
  specs_arn  = module.buckets.arns["specs"]
  models_arn = module.buckets.arns["models"]

  # What every function is told about the pipeline (read by mlaas4hep.pipeline.PipelineConfig).
  common_environment = merge(
    {
      MLAAS4HEP_DATA_BUCKET          = module.buckets.names["data"]
      MLAAS4HEP_SPECS_BUCKET         = module.buckets.names["specs"]
      MLAAS4HEP_MODELS_BUCKET        = module.buckets.names["models"]
      MLAAS4HEP_CACHE_BUCKET         = module.buckets.names["cache"]
      MLAAS4HEP_DATA_PREFIX          = var.prefixes.data
      MLAAS4HEP_FILE_SPECS_PREFIX    = var.prefixes.file_specs
      MLAAS4HEP_DATASET_SPECS_PREFIX = var.prefixes.dataset_specs
      MLAAS4HEP_QUARANTINE_PREFIX    = var.prefixes.quarantine
      MLAAS4HEP_RETRAIN_STATE_PREFIX = var.prefixes.retrain_state
      MLAAS4HEP_LEASE_PREFIX         = var.prefixes.leases
    },
    var.aws_endpoint_url == null ? {} : { AWS_ENDPOINT_URL = var.aws_endpoint_url },
  )

  environments = {
    # A claim on a file's spec lives as long as one invocation may (pipeline.claim_spec);
    # the last of the queue's deliveries writes a quarantine record before computing, so
    # that a function killed for memory or time still leaves one (pipeline.spec_step).
    spec_file = merge(local.common_environment, {
      MLAAS4HEP_SPEC_LEASE_SECONDS = tostring(try(var.functions["spec_file"].timeout, 900))
      MLAAS4HEP_MAX_RECEIVE_COUNT  = tostring(module.queues["spec_file"].max_receive_count)
      MLAAS4HEP_SPEC_QUEUE_URL     = module.queues["spec_file"].url
    })
    merge_specs = local.common_environment
    retrain = merge(local.common_environment, {
      MLAAS4HEP_RAY_ADDRESS              = local.ray_address == null ? "" : local.ray_address
      MLAAS4HEP_RETRAIN_ENTRYPOINT       = var.retrain_entrypoint
      MLAAS4HEP_RETRAIN_RUNTIME_ENV      = jsonencode(local.retrain_runtime_env)
      MLAAS4HEP_RETRAIN_DEBOUNCE_SECONDS = tostring(var.retrain_debounce_seconds)
      MLAAS4HEP_RETRAIN_QUEUE_URL        = module.queues["retrain"].url
      MLAAS4HEP_RETRAIN_MAX_ATTEMPTS     = tostring(var.retrain_max_attempts)
      MLAAS4HEP_RETRAIN_RETRY_SECONDS    = tostring(var.retrain_retry_seconds)
      MLAAS4HEP_RAY_TOKEN_SECRET         = local.ray_token_arn == null ? "" : local.ray_token_arn
    })
  }

  # Least privilege: each function reaches only its own prefixes and its own queue.
  policy_statements = {
    spec_file = [
      { sid = "ReadData", actions = ["s3:GetObject", "s3:GetObjectVersion"], resources = ["${local.data_arn}/${var.prefixes.data}*"] },
      { sid = "WriteFileSpecs", actions = ["s3:GetObject", "s3:PutObject"], resources = ["${local.specs_arn}/${var.prefixes.file_specs}*"] },
      { sid = "WriteQuarantine", actions = ["s3:PutObject", "s3:DeleteObject"], resources = ["${local.specs_arn}/${var.prefixes.quarantine}*"] },
      { sid = "ClaimFileSpecs", actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], resources = ["${local.specs_arn}/${var.prefixes.leases}*"] },
      # A removed data object: its FileSpecs are listed and deleted (pipeline.remove_file_specs);
      # listing the data prefix makes a HEAD of a removed object a 404, not a 403.
      { sid = "DeleteFileSpecs", actions = ["s3:DeleteObject", "s3:DeleteObjectVersion"], resources = ["${local.specs_arn}/${var.prefixes.file_specs}*", "${local.specs_arn}/${var.prefixes.quarantine}*"] },
      { sid = "ListFileSpecs", actions = ["s3:ListBucket", "s3:ListBucketVersions"], resources = [local.specs_arn], list_prefixes = [var.prefixes.file_specs, var.prefixes.quarantine] },
      { sid = "ListData", actions = ["s3:ListBucket"], resources = [local.data_arn], list_prefixes = [var.prefixes.data] },
      # A manifest's entries, one message each, to its own queue (pipeline.manifest_step).
      { sid = "FanOutManifestEntries", actions = ["sqs:SendMessage"], resources = [module.queues["spec_file"].arn] },
    ]
    merge_specs = [
      { sid = "ReadFileSpecs", actions = ["s3:GetObject", "s3:GetObjectVersion"], resources = ["${local.specs_arn}/${var.prefixes.file_specs}*"] },
      { sid = "WriteDatasetSpecs", actions = ["s3:GetObject", "s3:PutObject"], resources = ["${local.specs_arn}/${var.prefixes.dataset_specs}*"] },
      { sid = "CheckDataVersions", actions = ["s3:GetObject"], resources = ["${local.data_arn}/${var.prefixes.data}*"] },
      { sid = "ListData", actions = ["s3:ListBucket"], resources = [local.data_arn], list_prefixes = [var.prefixes.data] },
      # A manifest entry's FileSpecs stand for its file (pipeline.merge_step._still_listed).
      { sid = "ListFileSpecs", actions = ["s3:ListBucket"], resources = [local.specs_arn], list_prefixes = [var.prefixes.file_specs] },
    ]
    retrain = concat([
      { sid = "ReadDatasetSpecs", actions = ["s3:GetObject"], resources = ["${local.specs_arn}/${var.prefixes.dataset_specs}*"] },
      { sid = "WriteRetrainState", actions = ["s3:GetObject", "s3:PutObject"], resources = ["${local.models_arn}/${var.prefixes.retrain_state}*"] },
      { sid = "ScheduleRecheck", actions = ["sqs:SendMessage"], resources = [module.queues["retrain"].arn] },
      ], local.ray_token_arn == null ? [] : [
      { sid = "ReadRayToken", actions = ["secretsmanager:GetSecretValue"], resources = [local.ray_token_arn] },
    ])
  }

  # Where the retrain function submits: the cluster's head, or the given address.
  ray_address = var.ray_cluster.enabled ? module.ray_cluster[0].jobs_address : var.ray_address
  # The functions (in the VPC) and the serving tasks join the cluster's clients group.
  ray_clients_group = var.ray_cluster.enabled ? [module.ray_cluster[0].client_security_group_id] : []
  # The pinned package the nodes install: this very version of mlaas4hep, with the extras
  # a training node needs (also those a wheel_s3_uri is installed with).
  package_version = regex("(?m)^version = \"([^\"]+)\"", file("${path.module}/../pyproject.toml"))[0]
  node_extras     = "[ray,torch,s3,xrootd]"

  # The Ray cluster's token (Ray's token authentication), sent with every Jobs API call.
  ray_token_arn = var.ray_auth ? coalesce(var.ray_token_secret_arn, try(aws_secretsmanager_secret.ray_token[0].arn, null)) : null

  # With a KMS key, the buckets and queues are encrypted with it: every function reads
  # and writes both (data, specs, state; its own queue and the retrain queue).
  kms_statements = var.kms_key_arn == null ? [] : [
    { sid = "UseDataKey", actions = ["kms:Decrypt", "kms:GenerateDataKey"], resources = [var.kms_key_arn], list_prefixes = [] },
  ]

  tags = merge({ Project = var.project, Environment = var.environment }, var.tags)

  # Retraining writes where the replicas read: with the serving deployment, every job is
  # told the registry the tasks follow (MLAAS4HEP_REGISTRY_URL, read by ray_jobs/retrain.py,
  # the very URL the tasks get as MLAAS4HEP_MODELS_BUCKET). The user's own runtime_env is
  # kept, and an MLAAS4HEP_REGISTRY_URL in its env_vars wins over this one.
  registry_url = var.serving_enabled ? module.serving[0].models_url : null
  registry_env = var.serving_enabled ? tomap({ MLAAS4HEP_REGISTRY_URL = local.registry_url }) : tomap({})
  # A recipe's staging without a cache copies root:// files (a manifest's entries) into
  # the cache bucket (pipeline.retraining.recipe_config).
  staging_env = { MLAAS4HEP_STAGING_CACHE = "s3://${module.buckets.names["cache"]}/staged/" }
  retrain_runtime_env = merge(var.retrain_runtime_env, {
    env_vars = merge(local.registry_env, local.staging_env, try(var.retrain_runtime_env.env_vars, {}))
  })
}

resource "aws_secretsmanager_secret" "ray_token" {
  #checkov:skip=CKV2_AWS_57:The token is the Ray cluster's own: rotate it by restarting the cluster with a new RAY_AUTH_TOKEN and putting that value here.
  #checkov:skip=CKV_AWS_149:Secrets Manager encrypts with its own KMS key unless kms_key_arn names a customer key.
  count = var.ray_auth && var.ray_token_secret_arn == null ? 1 : 0

  name                    = "${local.name_prefix}-ray-token"
  description             = "Token of the Ray cluster's Jobs API (RAY_AUTH_TOKEN of a cluster started with RAY_AUTH_MODE=token): put its value with the AWS CLI, never in Terraform."
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.force_destroy_buckets ? 0 : 7
  tags                    = local.tags
}

module "buckets" {
  source = "./modules/buckets"

  name_prefix               = local.name_prefix
  name_suffix               = var.bucket_name_suffix
  expire_objects_after_days = { cache = var.cache_expiration_days }
  kms_key_arn               = var.kms_key_arn
  force_destroy             = var.force_destroy_buckets
  tls_only                  = var.tls_only_buckets
  tags                      = local.tags
}

module "queues" {
  source   = "./modules/queues"
  for_each = var.functions

  name                       = "${local.name_prefix}-${replace(each.key, "_", "-")}"
  visibility_timeout_seconds = coalesce(each.value.visibility_timeout_seconds, 6 * each.value.timeout)
  max_receive_count          = each.value.max_receive_count
  s3_source_bucket_arns      = each.key == "spec_file" ? [local.data_arn] : [local.specs_arn]
  source_account_id          = local.account_id
  kms_key_arn                = var.kms_key_arn
  alarm_actions              = var.alarm_actions
  tags                       = local.tags
}

module "function" {
  source   = "./modules/function"
  for_each = var.functions

  name                               = "${local.name_prefix}-${replace(each.key, "_", "-")}"
  handler                            = local.handlers[each.key]
  package_path                       = local.package
  layer_arns                         = var.lambda_layer_arns
  memory_size                        = each.value.memory_size
  timeout                            = each.value.timeout
  reserved_concurrent_executions     = each.value.reserved_concurrent_executions
  environment                        = local.environments[each.key]
  queue_arn                          = module.queues[each.key].arn
  batch_size                         = each.value.batch_size
  maximum_batching_window_in_seconds = each.value.maximum_batching_window_in_seconds
  maximum_concurrency                = each.value.maximum_concurrency
  event_source_mapping_enabled       = var.event_source_mappings_enabled
  policy_statements                  = concat(local.policy_statements[each.key], local.kms_statements)
  subnet_ids                         = var.function_subnet_ids
  security_group_ids                 = length(var.function_subnet_ids) == 0 ? [] : concat(var.function_security_group_ids, local.ray_clients_group)
  log_retention_days                 = var.log_retention_days
  tracing_mode                       = var.tracing_mode
  tags                               = local.tags
}

resource "aws_s3_bucket_notification" "data" {
  bucket = module.buckets.names["data"]

  queue {
    id            = "new-root-files"
    queue_arn     = module.queues["spec_file"].arn
    events        = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    filter_prefix = var.prefixes.data
    filter_suffix = ".root"
  }

  # A dataset's manifest of root:// and https:// URLs (pipeline.manifests): the spec
  # function fans its entries out to its own queue.
  dynamic "queue" {
    for_each = ["files.txt", "files.json"]
    content {
      id            = "manifest-${replace(queue.value, ".", "-")}"
      queue_arn     = module.queues["spec_file"].arn
      events        = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
      filter_prefix = var.prefixes.data
      filter_suffix = "/${queue.value}"
    }
  }

  depends_on = [module.queues]
}

resource "aws_s3_bucket_notification" "specs" {
  bucket = module.buckets.names["specs"]

  queue {
    id            = "new-file-specs"
    queue_arn     = module.queues["merge_specs"].arn
    events        = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    filter_prefix = var.prefixes.file_specs
    filter_suffix = ".json"
  }

  queue {
    id            = "dataset-spec-updated"
    queue_arn     = module.queues["retrain"].arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = var.prefixes.dataset_specs
    filter_suffix = "dataset.json"
  }

  depends_on = [module.queues]
}

# The BentoML service (serving/) on ECS Fargate behind a load balancer; it reads models
# from the models bucket. See infra/README.md, "Serving", for the image and the token.
module "serving" {
  source = "./modules/serving"
  count  = var.serving_enabled ? 1 : 0

  name                     = "${local.name_prefix}-serving"
  image_tag                = var.serving_image_tag
  models_bucket_arn        = local.models_arn
  min_replicas             = var.serving_min_replicas
  max_replicas             = var.serving_max_replicas
  enable_autoscaling       = var.serving_enable_autoscaling
  autoscaling_metric       = var.serving_autoscaling_metric
  autoscaling_target_value = var.serving_autoscaling_target_value
  log_retention_days       = var.log_retention_days
  kms_key_arn              = var.kms_key_arn
  tags                     = local.tags

  cpu                               = var.serving.cpu
  memory                            = var.serving.memory
  cpu_architecture                  = var.serving.cpu_architecture
  container_port                    = var.serving.container_port
  health_check_grace_period_seconds = var.serving.health_check_grace_period_seconds
  model                             = var.serving.model
  workers                           = var.serving.workers
  models_prefix                     = var.serving.models_prefix
  environment                       = var.serving.environment
  readable_bucket_arns              = coalesce(var.serving.readable_bucket_arns, [local.data_arn])
  api_token_secret_arn              = var.serving.api_token_secret_arn
  vpc_id                            = var.serving.vpc_id
  load_balancer_subnet_ids          = var.serving.load_balancer_subnet_ids
  task_subnet_ids                   = var.serving.task_subnet_ids
  assign_public_ip                  = var.serving.assign_public_ip
  vpc_cidr                          = var.serving.vpc_cidr
  availability_zones                = var.serving.availability_zones
  internal                          = var.serving.internal
  ingress_cidr_blocks               = var.serving.ingress_cidr_blocks
  certificate_arn                   = var.serving.certificate_arn
  access_logs_bucket                = var.serving.access_logs_bucket
  deletion_protection               = var.serving.deletion_protection
  container_insights                = var.serving.container_insights
  force_delete                      = var.serving.force_delete
  task_security_group_ids           = local.ray_clients_group
}

# The Ray cluster the retraining jobs run on: a head and GPU workers in the VPC of the
# functions and the serving tasks, started with the token the retrain function sends.
module "ray_cluster" {
  source = "./modules/ray_cluster"
  count  = var.ray_cluster.enabled ? 1 : 0

  name                 = "${local.name_prefix}-ray"
  vpc_id               = coalesce(var.ray_cluster.vpc_id, try(module.serving[0].vpc_id, null), "none")
  subnet_ids           = coalesce(var.ray_cluster.subnet_ids, try(module.serving[0].task_subnet_ids, null), ["none"])
  associate_public_ip  = coalesce(var.ray_cluster.associate_public_ip, var.ray_cluster.vpc_id == null ? try(module.serving[0].assign_public_ip, false) : false)
  ami_id               = var.ray_cluster.ami_id
  ami_ssm_parameter    = var.ray_cluster.ami_ssm_parameter
  head_instance_type   = var.ray_cluster.head_instance_type
  head_cpus            = var.ray_cluster.head_cpus
  worker_instance_type = var.ray_cluster.worker_instance_type
  gpu_workers          = var.ray_cluster.gpu_workers
  min_workers          = var.ray_cluster.min_workers
  max_workers          = var.ray_cluster.max_workers
  root_volume_gb       = var.ray_cluster.root_volume_gb
  package              = coalesce(var.ray_cluster.package, var.ray_cluster.wheel_s3_uri == null ? "mlaas4hep${local.node_extras}==${local.package_version}" : local.node_extras)
  wheel_s3_uri         = var.ray_cluster.wheel_s3_uri
  python_version       = var.ray_cluster.python_version
  token_secret_arn     = local.ray_token_arn
  # the serving tasks' group comes in through the module's clients group they join
  client_security_group_ids = var.ray_cluster.client_security_group_ids
  egress_cidr_blocks        = var.ray_cluster.egress_cidr_blocks
  readable_bucket_arns      = [local.data_arn, local.specs_arn]
  writable_bucket_arns      = [local.models_arn, module.buckets.arns["cache"]]
  environment               = merge(local.registry_env, coalesce(var.ray_cluster.environment, {}))
  kms_key_arn               = var.kms_key_arn
  tags                      = local.tags
}
