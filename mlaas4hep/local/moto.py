"""A real moto server (S3, SQS, Lambda, IAM … in one process) on a loopback port."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from typing import Any

from mlaas4hep.local.processes import (
    ManagedServer,
    no_proxy_opener,
)


class MotoServer(ManagedServer):
    """moto's standalone server (S3 and the other AWS mocks) on 127.0.0.1."""

    name = "moto"
    access_key = "test"
    secret_key = "test"
    region = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """AWS_* variables that point boto3, s3fs and uproot's ``s3://`` at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, service: str = "s3", **kwargs: Any) -> Any:
        """A boto3 client bound to this server (boto3 is imported here, not at import)."""
        import boto3  # lazy: optional dependency

        params: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }
        params.update(kwargs)
        return boto3.client(service, **params)

    def reset(self) -> None:
        """Drop every mocked resource (buckets, objects) on the server."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with no_proxy_opener().open(request, timeout=10) as resp:
            resp.read()

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _protocol_ready(self) -> bool:
        url = f"{self.endpoint_url}/moto-api/data.json"
        try:
            with no_proxy_opener().open(url, timeout=2) as resp:
                body = resp.read()
                return resp.status == 200 and body.lstrip().startswith(b"{")
        except (urllib.error.URLError, OSError):
            return False
