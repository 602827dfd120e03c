"""The Ray cluster Terraform declares (``infra/modules/ray_cluster``): what runs on its nodes."""
