# A work queue with its dead-letter queue, and the policy that lets S3 notifications in.

resource "aws_sqs_queue" "dlq" {
  name                      = "${var.name}-dlq"
  message_retention_seconds = var.dlq_message_retention_seconds
  sqs_managed_sse_enabled   = var.kms_key_arn == null ? true : null
  kms_master_key_id         = var.kms_key_arn
  tags                      = var.tags
}

resource "aws_sqs_queue" "this" {
  name                       = var.name
  visibility_timeout_seconds = var.visibility_timeout_seconds
  message_retention_seconds  = var.message_retention_seconds
  sqs_managed_sse_enabled    = var.kms_key_arn == null ? true : null
  kms_master_key_id          = var.kms_key_arn
  tags                       = var.tags

  # Both are managed by their own resources below; the queue only reads them back.
  lifecycle {
    ignore_changes = [redrive_policy, policy]
  }
}

# The redrive policy lives in its own resource: set inline, the JSON read back from some
# SQS implementations differs in whitespace and the plan never settles.
resource "aws_sqs_queue_redrive_policy" "this" {
  queue_url = aws_sqs_queue.this.id
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })
}

data "aws_iam_policy_document" "s3_send" {
  count = length(var.s3_source_bucket_arns) > 0 ? 1 : 0

  statement {
    sid       = "AllowS3Notifications"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.this.arn]

    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = var.s3_source_bucket_arns
    }

    dynamic "condition" {
      for_each = var.source_account_id == null ? [] : [var.source_account_id]
      content {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [condition.value]
      }
    }
  }
}

resource "aws_sqs_queue_policy" "s3_send" {
  count = length(var.s3_source_bucket_arns) > 0 ? 1 : 0

  queue_url = aws_sqs_queue.this.id
  policy    = data.aws_iam_policy_document.s3_send[0].json

  # Some SQS implementations (moto) drop the policy when another attribute is set:
  # setting it last keeps the applied state and the plan in agreement.
  depends_on = [aws_sqs_queue_redrive_policy.this]
}

# A message in the dead-letter queue is work the pipeline gave up on (a file whose spec
# failed every delivery, a merge or a retraining check that kept failing): the alarm
# goes off as soon as one is there, and tells alarm_actions (an SNS topic, for example).
resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  alarm_name          = "${var.name}-dlq-not-empty"
  alarm_description   = "Messages in ${aws_sqs_queue.dlq.name}: deliveries of ${var.name} failed ${var.max_receive_count} times. Inspect them, then redrive them to the work queue."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = var.tags
}
