output "jobs_address" {
  description = "The Ray Jobs API (dashboard) address inside the VPC: the retrain function submits there."
  value       = "http://${aws_instance.head.private_ip}:${local.jobs_port}"
}

output "head_address" {
  description = "host:port of the head's GCS, which the workers (and ray.init(address=...)) join."
  value       = "${aws_instance.head.private_ip}:${local.gcs_port}"
}

output "head_instance_id" {
  description = "Instance id of the head node."
  value       = aws_instance.head.id
}

output "workers_autoscaling_group_name" {
  description = "Autoscaling group of the worker nodes (scale it between min_workers and max_workers)."
  value       = aws_autoscaling_group.workers.name
}

output "client_security_group_id" {
  description = "Security group whose members may call the Jobs API: the functions and the serving tasks join it."
  value       = aws_security_group.clients.id
}

output "security_group_ids" {
  description = "Security groups of the head and of the workers."
  value       = { for role, id in local.node_groups : role => id }
}

output "role_arns" {
  description = "Instance roles of the head and of the workers."
  value       = { for role, r in aws_iam_role.node : role => r.arn }
}

output "launch_template_ids" {
  description = "Launch templates of the head and of the workers."
  value       = { for role, lt in aws_launch_template.node : role => lt.id }
}

output "ami_id" {
  description = "The AMI the nodes run."
  value       = local.ami_id
}
