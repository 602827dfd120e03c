variable "name" {
  description = "Name of the cluster: prefix of its instances, launch templates, autoscaling group, security groups and roles."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,38}[a-z0-9]$", var.name))
    error_message = "name must be 2-40 lower-case letters, digits or hyphens, starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPC the cluster runs in: the one of the functions and the serving tasks, which reach its Jobs API."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Subnets of the nodes (the head in the first, the workers spread over all): private subnets with a NAT gateway (the nodes install their packages and read root:// sources over the internet), or public ones with associate_public_ip."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", id))])
    error_message = "subnet_ids must list at least one subnet id (subnet-...)."
  }
}

variable "head_private_ip" {
  description = "Private address of the head in the first subnet; null takes the subnet's host 10. Fixed, so that the workers and the functions find the head again when it is replaced."
  type        = string
  default     = null

  validation {
    condition     = var.head_private_ip == null || can(cidrhost("${coalesce(var.head_private_ip, "0.0.0.0")}/32", 0))
    error_message = "head_private_ip must be an IPv4 address, or null."
  }
}

variable "associate_public_ip" {
  description = "Give every node a public IP (subnets without a NAT gateway). Ingress stays limited by the security groups either way."
  type        = bool
  default     = false
  nullable    = false
}

variable "ami_id" {
  description = "AMI of every node; null takes the latest AMI named by ami_ssm_parameter (the AWS Deep Learning Base GPU AMI: NVIDIA driver and CUDA installed)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8}([0-9a-f]{9})?$", var.ami_id))
    error_message = "ami_id must be an AMI id (ami- and 8 or 17 hexadecimal digits), or null."
  }
}

variable "ami_ssm_parameter" {
  description = "Public SSM parameter holding the AMI id when ami_id is null."
  type        = string
  default     = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
  nullable    = false

  validation {
    condition     = startswith(var.ami_ssm_parameter, "/")
    error_message = "ami_ssm_parameter must be a parameter path starting with \"/\"."
  }
}

variable "head_instance_type" {
  description = "Instance type of the head node (the Jobs API, the job drivers, the GCS; it runs no training worker unless head_cpus > 0)."
  type        = string
  default     = "m6i.2xlarge"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[0-9a-z]+$", var.head_instance_type))
    error_message = "head_instance_type must be an EC2 instance type such as m6i.2xlarge."
  }
}

variable "head_cpus" {
  description = "CPUs the head offers to Ray tasks (--num-cpus); 0 keeps training and data loading on the workers."
  type        = number
  default     = 0
  nullable    = false

  validation {
    condition     = var.head_cpus >= 0 && floor(var.head_cpus) == var.head_cpus
    error_message = "head_cpus must be a whole number, 0 or more."
  }
}

variable "worker_instance_type" {
  description = "Instance type of the worker nodes, GPU instances by default (g5.2xlarge: one A10G)."
  type        = string
  default     = "g5.2xlarge"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[0-9a-z]+$", var.worker_instance_type))
    error_message = "worker_instance_type must be an EC2 instance type such as g5.2xlarge."
  }
}

variable "gpu_workers" {
  description = "Whether the workers are GPU instances: worker_instance_type must then be of a GPU family (g*, p*, gr*). false for CPU-only workers."
  type        = bool
  default     = true
  nullable    = false

  validation {
    condition     = !var.gpu_workers || can(regex("^(g[0-9][a-z0-9-]*|gr[0-9][a-z0-9-]*|p[0-9][a-z0-9-]*)\\.", var.worker_instance_type))
    error_message = "gpu_workers is true but worker_instance_type is not a GPU instance type (g*, gr*, p*): choose one such as g5.2xlarge, or set gpu_workers = false."
  }
}

variable "min_workers" {
  description = "Fewest worker nodes (the autoscaling group's minimum; its desired capacity starts here and is left to whoever scales it afterwards)."
  type        = number
  default     = 1
  nullable    = false

  validation {
    condition     = var.min_workers >= 0 && floor(var.min_workers) == var.min_workers
    error_message = "min_workers must be a whole number, 0 or more."
  }
}

variable "max_workers" {
  description = "Most worker nodes."
  type        = number
  default     = 4
  nullable    = false

  validation {
    condition     = var.max_workers >= 1 && var.max_workers >= var.min_workers && floor(var.max_workers) == var.max_workers
    error_message = "max_workers must be a whole number, at least 1 and at least min_workers."
  }
}

variable "root_volume_gb" {
  description = "Size of every node's encrypted root volume (GiB): the AMI, the virtualenv, Ray's object spilling and the staged data."
  type        = number
  default     = 200
  nullable    = false

  validation {
    condition     = var.root_volume_gb >= 40 && var.root_volume_gb <= 16384
    error_message = "root_volume_gb must be between 40 and 16384."
  }
}

variable "package" {
  description = "What every node installs: a pip requirement with its version pinned (mlaas4hep[...]==X.Y.Z), or, with wheel_s3_uri, the extras to install that wheel with (e.g. \"[ray,torch,s3,xrootd]\")."
  type        = string

  validation {
    condition     = can(regex("^(mlaas4hep(\\[[a-z0-9,]+\\])?==[0-9][0-9A-Za-z.+-]*|\\[[a-z0-9,]+\\])$", var.package))
    error_message = "package must be mlaas4hep[extras]==VERSION (a pinned requirement) or, with wheel_s3_uri, [extras]."
  }
}

variable "wheel_s3_uri" {
  description = "s3://bucket/key of a mlaas4hep wheel the nodes install instead of the package index's (pip wheel --no-deps .); the instance role may read it."
  type        = string
  default     = null

  validation {
    condition     = var.wheel_s3_uri == null || can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[A-Za-z0-9._/+-]+\\.whl$", var.wheel_s3_uri))
    error_message = "wheel_s3_uri must be s3://bucket/key ending in .whl, or null."
  }
}

variable "python_version" {
  description = "Python of the nodes' virtualenv (uv installs it when the AMI has another)."
  type        = string
  default     = "3.11"
  nullable    = false

  validation {
    condition     = can(regex("^3\\.[0-9]+$", var.python_version))
    error_message = "python_version must look like 3.11."
  }
}

variable "token_secret_arn" {
  description = "Secrets Manager secret of the cluster's token (Ray's token authentication). The head puts a fresh token there when the secret has no value; every node and every Jobs API client reads it. null starts Ray without authentication (not for a shared VPC)."
  type        = string
  default     = null
}

variable "client_security_group_ids" {
  description = "Further security groups (besides the module's own clients group) whose members may reach the Jobs API."
  type        = list(string)
  default     = []
  nullable    = false
}

variable "egress_cidr_blocks" {
  description = "Where the nodes may open HTTPS (443: package index, S3, Secrets Manager) and XRootD (1094: root:// sources) connections."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  nullable    = false
}

variable "readable_bucket_arns" {
  description = "Buckets the nodes read (the data bucket, the specs bucket with the DatasetSpecs): at least one."
  type        = list(string)

  validation {
    condition     = length(var.readable_bucket_arns) > 0 && alltrue([for arn in var.readable_bucket_arns : startswith(arn, "arn:aws:s3:::")])
    error_message = "readable_bucket_arns must list at least one bucket ARN (arn:aws:s3:::name)."
  }
}

variable "writable_bucket_arns" {
  description = "Buckets the nodes read and write (the models bucket with the registry, the cache bucket the jobs stage into)."
  type        = list(string)
  default     = []
  nullable    = false
}

variable "environment" {
  description = "Environment of the Ray processes, hence of every job (e.g. MLAAS4HEP_REGISTRY_URL)."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "kms_key_arn" {
  description = "KMS key of the buckets and the token secret, if any: the nodes may decrypt and generate data keys with it, and it encrypts their volumes."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags of every resource (and of the instances and volumes the autoscaling group starts)."
  type        = map(string)
  default     = {}
  nullable    = false
}
