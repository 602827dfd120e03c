# Target tracking on the service's desired count, between min_replicas and max_replicas:
# on average CPU, or on requests per task (ALBRequestCountPerTarget, per minute), which
# follows the load directly when a request's cost is steady. Behind enable_autoscaling:
# moto does not implement Application Auto Scaling tags, so the local stack turns it off;
# terraform validate still covers both resources.

locals {
  autoscaling_target_value = coalesce(var.autoscaling_target_value, var.autoscaling_metric == "cpu" ? 60 : 6000)
}

resource "aws_appautoscaling_target" "this" {
  count = local.autoscale ? 1 : 0

  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this[0].name}/${aws_ecs_service.autoscaled[0].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_replicas
  max_capacity       = var.max_replicas
  tags               = var.tags
}

resource "aws_appautoscaling_policy" "this" {
  count = local.autoscale ? 1 : 0

  name               = "${var.name}-${var.autoscaling_metric}"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this[0].service_namespace
  resource_id        = aws_appautoscaling_target.this[0].resource_id
  scalable_dimension = aws_appautoscaling_target.this[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = local.autoscaling_target_value
    scale_in_cooldown  = var.scale_in_cooldown_seconds
    scale_out_cooldown = var.scale_out_cooldown_seconds

    predefined_metric_specification {
      predefined_metric_type = var.autoscaling_metric == "cpu" ? "ECSServiceAverageCPUUtilization" : "ALBRequestCountPerTarget"
      resource_label         = var.autoscaling_metric == "cpu" ? null : "${aws_lb.this[0].arn_suffix}/${aws_lb_target_group.this[0].arn_suffix}"
    }
  }
}
