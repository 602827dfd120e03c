# The Application Load Balancer in front of the tasks: HTTP on 80, or HTTPS on 443 with
# 80 redirecting to it when certificate_arn is given. Its target group checks
# health_check_path (/readyz: 200 once a model is loaded), so a task gets traffic only
# when it can answer.

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_28:A WAF web ACL is an account-level choice (rules, cost); attach one with aws_wafv2_web_acl_association where the endpoint is public.
  #checkov:skip=CKV_AWS_91:Access logs need a bucket with the ELB log delivery policy: pass it in access_logs_bucket.
  #checkov:skip=CKV2_AWS_20:HTTP is redirected to HTTPS when certificate_arn is given (aws_lb_listener.http); without a certificate there is nothing to redirect to.
  #checkov:skip=CKV_AWS_150:Deletion protection is a variable (deletion_protection), off by default so that a stack can be destroyed.
  count = local.deploy ? 1 : 0

  name                       = var.name
  load_balancer_type         = "application"
  internal                   = var.internal
  subnets                    = local.load_balancer_subnet_ids
  security_groups            = [aws_security_group.load_balancer[0].id]
  idle_timeout               = var.idle_timeout_seconds
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  tags                       = var.tags

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = var.name
      enabled = true
    }
  }
}

resource "aws_lb_target_group" "this" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; the hop to the tasks stays in the VPC, and the tasks' security group admits the load balancer only.
  count = local.deploy ? 1 : 0

  name                 = "${var.name}-tg"
  target_type          = "ip"
  protocol             = "HTTP"
  port                 = var.container_port
  vpc_id               = local.vpc_id
  deregistration_delay = var.deregistration_delay_seconds
  tags                 = var.tags

  health_check {
    path                = var.health_check_path
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:HTTPS needs a certificate: with certificate_arn this listener only redirects to the HTTPS one.
  #checkov:skip=CKV_AWS_103:This listener speaks plain HTTP (or redirects); the HTTPS listener enforces TLS 1.2+ through ssl_policy.
  #checkov:skip=CKV2_AWS_20:The redirect to HTTPS exists when certificate_arn is given; without a certificate there is nothing to redirect to.
  count = local.deploy ? 1 : 0

  load_balancer_arn = aws_lb.this[0].arn
  port              = 80
  protocol          = "HTTP"
  tags              = var.tags

  default_action {
    type             = local.https ? "redirect" : "forward"
    target_group_arn = local.https ? null : aws_lb_target_group.this[0].arn

    dynamic "redirect" {
      for_each = local.https ? [443] : []
      content {
        port        = tostring(redirect.value)
        protocol    = "HTTPS"
        status_code = "HTTP_301"
      }
    }
  }
}

resource "aws_lb_listener" "https" {
  count = local.deploy && local.https ? 1 : 0

  load_balancer_arn = aws_lb.this[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn
  tags              = var.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this[0].arn
  }
}
