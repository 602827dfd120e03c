output "function_name" {
  description = "Name of the function."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "ARN of the function."
  value       = aws_lambda_function.this.arn
}

output "handler" {
  description = "Handler the function runs (\"module.function\")."
  value       = aws_lambda_function.this.handler
}

output "memory_size" {
  description = "Memory of the function, in MB."
  value       = aws_lambda_function.this.memory_size
}

output "timeout" {
  description = "Timeout of one invocation, in seconds."
  value       = aws_lambda_function.this.timeout
}

output "environment" {
  description = "Environment variables of the function."
  value       = var.environment
}

output "role_arn" {
  description = "ARN of the function's IAM role."
  value       = aws_iam_role.this.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the function."
  value       = aws_cloudwatch_log_group.this.name
}

output "event_source_mapping" {
  description = "How the queue feeds the function: batch size, batching window, concurrency, response types."
  value = {
    uuid                               = aws_lambda_event_source_mapping.this.uuid
    batch_size                         = var.batch_size
    maximum_batching_window_in_seconds = var.maximum_batching_window_in_seconds
    maximum_concurrency                = var.maximum_concurrency
    function_response_types            = ["ReportBatchItemFailures"]
    enabled                            = var.event_source_mapping_enabled
  }
}
