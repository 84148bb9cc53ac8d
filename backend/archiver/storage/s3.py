"""boto3 S3 clients configured to work against MinIO and moto alike."""

from __future__ import annotations

from dataclasses import dataclass

import boto3
from botocore.config import Config


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return "S3Credentials(access_key=***, secret_key=***)"


def s3_client(endpoint: str, region: str, credentials: S3Credentials, max_pool_connections: int = 16):
    config = Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        # boto3 >= 1.36 sends integrity checksums that older S3-compatible servers reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        config=config,
    )
