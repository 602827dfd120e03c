output "url" {
  description = "URL of the work queue."
  value       = aws_sqs_queue.this.id
}

output "arn" {
  description = "ARN of the work queue."
  value       = aws_sqs_queue.this.arn
}

output "name" {
  description = "Name of the work queue."
  value       = aws_sqs_queue.this.name
}

output "visibility_timeout_seconds" {
  description = "Visibility timeout of the work queue (how long a failed message waits before its retry)."
  value       = aws_sqs_queue.this.visibility_timeout_seconds
}

output "max_receive_count" {
  description = "Deliveries before a message moves to the dead-letter queue."
  value       = var.max_receive_count
}

output "dlq_url" {
  description = "URL of the dead-letter queue."
  value       = aws_sqs_queue.dlq.id
}

output "dlq_arn" {
  description = "ARN of the dead-letter queue."
  value       = aws_sqs_queue.dlq.arn
}

output "queue_policy_ready" {
  description = "Id of the queue policy (empty without source buckets); depend on it before creating S3 notifications."
  value       = try(aws_sqs_queue_policy.s3_send[0].id, "")
}

output "dlq_alarm_name" {
  description = "Name of the CloudWatch alarm on the dead-letter queue's depth (> 0)."
  value       = aws_cloudwatch_metric_alarm.dlq_not_empty.alarm_name
}
