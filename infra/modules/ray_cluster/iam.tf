# The nodes' instance roles. Both read the buckets in readable_bucket_arns, read and write
# those in writable_bucket_arns (the registry, the staging cache), read the token secret
# and the wheel; only the head may put the token (it makes one when the secret is empty).

locals {
  roles = toset(["head", "workers"])
  wheel = var.wheel_s3_uri == null ? null : {
    bucket = split("/", trimprefix(var.wheel_s3_uri, "s3://"))[0]
    arn    = "arn:aws:s3:::${trimprefix(var.wheel_s3_uri, "s3://")}"
  }
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  for_each = local.roles

  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = var.tags
}

resource "aws_iam_instance_profile" "node" {
  for_each = local.roles

  name = "${var.name}-${each.key}"
  role = aws_iam_role.node[each.key].name
  tags = var.tags
}

data "aws_iam_policy_document" "node" {
  for_each = local.roles

  statement {
    sid       = "ReadBuckets"
    actions   = ["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"]
    resources = concat(var.readable_bucket_arns, [for arn in var.readable_bucket_arns : "${arn}/*"])
  }

  dynamic "statement" {
    for_each = length(var.writable_bucket_arns) == 0 ? [] : [var.writable_bucket_arns]
    content {
      sid       = "ReadWriteBuckets"
      actions   = ["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:PutObject", "s3:DeleteObject"]
      resources = concat(statement.value, [for arn in statement.value : "${arn}/*"])
    }
  }

  dynamic "statement" {
    for_each = local.wheel == null ? [] : [local.wheel]
    content {
      sid       = "ReadWheel"
      actions   = ["s3:GetObject"]
      resources = [statement.value.arn]
    }
  }

  dynamic "statement" {
    for_each = var.token_secret_arn == null ? [] : [var.token_secret_arn]
    content {
      sid       = "ReadToken"
      actions   = each.key == "head" ? ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"] : ["secretsmanager:GetSecretValue"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "UseDataKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "node" {
  for_each = local.roles

  name   = "${var.name}-${each.key}"
  role   = aws_iam_role.node[each.key].id
  policy = data.aws_iam_policy_document.node[each.key].json
}
