"""The opening of a Terraform root module that tests a module of infra/ on the session's
moto server: the pinned provider, the ``endpoint`` variable and a provider block that
sends the named services there, with moto's test credentials."""

from __future__ import annotations

PROVIDER_VERSION = "5.100.0"


def moto_root(*services: str, s3_path_style: bool = False) -> str:
    """``terraform`` and ``provider "aws"`` blocks for these services on ``var.endpoint``
    (``sts`` is always among them: the provider asks it who it is)."""
    names = sorted({*services, "sts"})
    width = max(map(len, names))
    endpoints = "\n".join(f"    {name:<{width}} = var.endpoint" for name in names)
    path_style = "  s3_use_path_style           = true\n" if s3_path_style else ""
    return f"""
terraform {{
  required_providers {{
    aws = {{ source = "hashicorp/aws", version = "= {PROVIDER_VERSION}" }}
  }}
}}

variable "endpoint" {{ type = string }}

provider "aws" {{
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
{path_style}  max_retries                 = 2
  endpoints {{
{endpoints}
  }}
}}
"""
