output "functions" {
  description = "Per function: handler, queue and dead-letter queue, delivery settings and environment. The local runtime reads this to poll the queues and call the handlers."
  value = {
    for name, fn in module.function : name => {
      function_name                      = fn.function_name
      function_arn                       = fn.function_arn
      handler                            = fn.handler
      memory_size                        = fn.memory_size
      timeout                            = fn.timeout
      environment                        = fn.environment
      queue_url                          = module.queues[name].url
      queue_arn                          = module.queues[name].arn
      dlq_url                            = module.queues[name].dlq_url
      dlq_alarm_name                     = module.queues[name].dlq_alarm_name
      visibility_timeout_seconds         = module.queues[name].visibility_timeout_seconds
      max_receive_count                  = module.queues[name].max_receive_count
      batch_size                         = fn.event_source_mapping.batch_size
      maximum_batching_window_in_seconds = fn.event_source_mapping.maximum_batching_window_in_seconds
      maximum_concurrency                = fn.event_source_mapping.maximum_concurrency
      function_response_types            = fn.event_source_mapping.function_response_types
      log_group_name                     = fn.log_group_name
    }
  }
}

output "buckets" {
  description = "Bucket names by role (data, specs, models, cache)."
  value       = module.buckets.names
}

output "prefixes" {
  description = "Key prefixes of the pipeline (data, file_specs, dataset_specs, quarantine, retrain_state)."
  value       = var.prefixes
}

output "registry_url" {
  description = "The s3:// prefix of the shared model registry (null when serving_enabled is false): the serving tasks follow it (MLAAS4HEP_MODELS_BUCKET) and the retraining jobs write and promote there (MLAAS4HEP_REGISTRY_URL in their runtime_env)."
  value       = local.registry_url
}

output "region" {
  description = "AWS region of the stack."
  value       = var.region
}

output "aws_endpoint_url" {
  description = "The local AWS endpoint the stack was applied to (null on AWS)."
  value       = var.aws_endpoint_url
}

output "serving" {
  description = "The serving deployment (null when serving_enabled is false): repository_url to push the bento image to, url of the service, api_token_secret_arn, cluster/service names, roles, log group and the autoscaling settings."
  value = var.serving_enabled ? {
    repository_url         = module.serving[0].repository_url
    models_url             = module.serving[0].models_url
    repository_name        = module.serving[0].repository_name
    api_token_secret_arn   = module.serving[0].api_token_secret_arn
    deployed               = module.serving[0].deployed
    image                  = module.serving[0].image
    url                    = module.serving[0].url
    load_balancer_dns_name = module.serving[0].load_balancer_dns_name
    target_group_arn       = module.serving[0].target_group_arn
    cluster_name           = module.serving[0].cluster_name
    service_name           = module.serving[0].service_name
    task_definition_arn    = module.serving[0].task_definition_arn
    task_role_arn          = module.serving[0].task_role_arn
    execution_role_arn     = module.serving[0].execution_role_arn
    log_group_name         = module.serving[0].log_group_name
    vpc_id                 = module.serving[0].vpc_id
    security_group_ids     = module.serving[0].security_group_ids
    autoscaling            = module.serving[0].autoscaling
  } : null
}

output "ray_token_secret_arn" {
  description = "The Secrets Manager secret the retrain function reads the Ray token from (null with ray_auth false): put the cluster's token there."
  value       = local.ray_token_arn
}

output "ray_cluster" {
  description = "The Ray cluster (null unless ray_cluster.enabled): jobs_address (what the retrain function submits to), head_address, head_instance_id, workers_autoscaling_group_name, client_security_group_id, security_group_ids, role_arns, ami_id."
  value = var.ray_cluster.enabled ? {
    jobs_address                   = module.ray_cluster[0].jobs_address
    head_address                   = module.ray_cluster[0].head_address
    head_instance_id               = module.ray_cluster[0].head_instance_id
    workers_autoscaling_group_name = module.ray_cluster[0].workers_autoscaling_group_name
    client_security_group_id       = module.ray_cluster[0].client_security_group_id
    security_group_ids             = module.ray_cluster[0].security_group_ids
    role_arns                      = module.ray_cluster[0].role_arns
    ami_id                         = module.ray_cluster[0].ami_id
  } : null
}
