# One Lambda function consuming one SQS queue: its role (least privilege), log group,
# code and event source mapping.

locals {
  log_group_name = "/aws/lambda/${var.name}"
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name               = var.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Function logs hold file names and error messages, no secrets; CloudWatch encrypts them at rest with its own key.
  #checkov:skip=CKV_AWS_338:Retention is a variable (30 days by default): these are operational logs, the durable records (specs, quarantine) live in S3.
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

data "aws_iam_policy_document" "this" {
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }

  statement {
    sid = "ConsumeOwnQueue"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
    ]
    resources = [var.queue_arn]
  }

  # In a VPC, Lambda attaches the function through network interfaces it manages with the
  # function's role (the permissions of AWSLambdaVPCAccessExecutionRole).
  dynamic "statement" {
    for_each = length(var.subnet_ids) > 0 ? [1] : []
    content {
      sid = "AttachToVpc"
      actions = [
        "ec2:CreateNetworkInterface",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
      ]
      resources = ["*"] # EC2 has no resource-level permissions for these actions.
    }
  }

  statement {
    sid       = "XRayTraces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"] # X-Ray has no resource-level permissions for these actions.
  }

  dynamic "statement" {
    for_each = var.policy_statements
    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = statement.value.resources

      dynamic "condition" {
        for_each = length(statement.value.list_prefixes) > 0 ? [statement.value.list_prefixes] : []
        content {
          test     = "StringLike"
          variable = "s3:prefix"
          values   = [for p in condition.value : "${p}*"]
        }
      }
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "${var.name}-least-privilege"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.this.json
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_116:Failed SQS messages go to the queue's dead-letter queue; a function DLQ only applies to asynchronous invocations, which this function never gets.
  #checkov:skip=CKV_AWS_117:vpc_config is set whenever subnet_ids are given (a private Ray head); without them the function reaches only S3, SQS and a public Ray head, over TLS.
  #checkov:skip=CKV_AWS_173:The environment holds bucket names, prefixes and addresses, no secrets; Lambda encrypts it at rest with its own key.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile per account; the package is built reproducibly by scripts/build_lambda_package.py and its hash pinned by source_code_hash.
  function_name                  = var.name
  role                           = aws_iam_role.this.arn
  handler                        = var.handler
  runtime                        = var.runtime
  filename                       = var.package_path
  source_code_hash               = filebase64sha256(var.package_path)
  layers                         = var.layer_arns
  memory_size                    = var.memory_size
  timeout                        = var.timeout
  reserved_concurrent_executions = var.reserved_concurrent_executions
  tags                           = var.tags

  environment {
    variables = var.environment
  }

  tracing_config {
    mode = var.tracing_mode
  }

  # In the VPC (where the Ray head's Jobs API is private) when subnets are given.
  dynamic "vpc_config" {
    for_each = length(var.subnet_ids) > 0 ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = var.security_group_ids
    }
  }

  depends_on = [aws_cloudwatch_log_group.this, aws_iam_role_policy.this]
}

resource "aws_lambda_event_source_mapping" "this" {
  event_source_arn                   = var.queue_arn
  function_name                      = aws_lambda_function.this.arn
  batch_size                         = var.batch_size
  maximum_batching_window_in_seconds = var.maximum_batching_window_in_seconds
  function_response_types            = ["ReportBatchItemFailures"]
  enabled                            = var.event_source_mapping_enabled

  scaling_config {
    maximum_concurrency = max(2, var.maximum_concurrency)
  }
}
