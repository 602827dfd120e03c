"""The opening of a Terraform root module that tests a module of infra/ on the session's
moto server: the pinned provider, the ``endpoint`` variable and a provider block that
sends the named services there, with moto's test credentials; and the apply that every
such test runs (:func:`apply_on_moto`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlaas4hep.local.terraform import Terraform, security_group_ids

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


def apply_on_moto(
    tf: Terraform,
    moto_server: Any,
    var_files: Sequence[str | Path],
    variables: Mapping[str, Any],
) -> None:
    """``terraform apply`` that adopts what a create whose answer was lost left on moto
    (a function, a security group: see :mod:`mlaas4hep.local.terraform`), as the local
    stack does, so that a slow moto on a loaded machine does not fail the test."""
    tf.apply_adopting(
        var_files,
        variables,
        import_ids={"aws_security_group": security_group_ids(moto_server.client("ec2"))},
    )
