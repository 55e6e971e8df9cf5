"""A logging filter that keeps signed URLs and tokens out of every log line."""

from __future__ import annotations

import logging
import re

# Presigned S3 query strings, bearer tokens and portal personal access tokens.
_PATTERNS = [
    (
        re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+", re.I),
        r"\1[redacted]",
    ),
    (re.compile(r"(Signature=|AWSAccessKeyId=)[^&\s\"']+"), r"\1[redacted]"),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1[redacted]"),
    (re.compile(r"\bllp_[A-Za-z0-9_-]{8,}"), "llp_[redacted]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True
