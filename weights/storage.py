"""The one module that talks to S3. Nothing else in the portal imports boto3.

The client is built on first use from settings (never at import time) and cached; tests
that point the portal at another S3 server call `reset_client()`.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from portal.errors import ServiceUnavailable

S3Error = (BotoCoreError, ClientError)


@functools.lru_cache(maxsize=1)
def _client_for(
    endpoint: str, key_id: str, secret: str, region: str, style: str, ct: float, rt: float
):
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": style},
            connect_timeout=ct,
            read_timeout=rt,
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    )


def client() -> Any:
    return _client_for(
        settings.S3_ENDPOINT_URL,
        settings.S3_ACCESS_KEY_ID,
        settings.S3_SECRET_ACCESS_KEY,
        settings.S3_REGION,
        settings.S3_ADDRESSING_STYLE,
        settings.S3_CONNECT_TIMEOUT,
        settings.S3_READ_TIMEOUT,
    )


def reset_client() -> None:
    _client_for.cache_clear()


def bucket() -> str:
    return settings.S3_BUCKET


def ping() -> None:
    """Raise if the S3 server or the bucket cannot be reached with our credentials."""
    client().head_bucket(Bucket=bucket())


def ensure_bucket() -> None:
    try:
        client().head_bucket(Bucket=bucket())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        client().create_bucket(Bucket=bucket())


def unavailable(exc: Exception) -> ServiceUnavailable:
    """The error a caller raises when S3 fails: a message a person can act on, no internals."""
    return ServiceUnavailable(
        "The file store is unreachable right now. Nothing was recorded; please try again in a "
        "few minutes.",
        code="storage_unavailable",
    )
