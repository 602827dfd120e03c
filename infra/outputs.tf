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

output "region" {
  description = "AWS region of the stack."
  value       = var.region
}

output "aws_endpoint_url" {
  description = "The local AWS endpoint the stack was applied to (null on AWS)."
  value       = var.aws_endpoint_url
}
