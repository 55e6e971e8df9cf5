from __future__ import annotations

import logging

from core.logging import RedactSecretsFilter, redact

PRESIGNED = (
    "http://127.0.0.1:8333/llama/7B/consolidated.00.pth?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=portal%2F20261126%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261126T1"
    "&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=9f86d081884c7d659a2feaa0c55ad015"
)


def test_redact_removes_signatures_credentials_and_tokens():
    text = redact(f"redirect to {PRESIGNED} for Bearer llp_abcdefghijklmnop and llp_qrstuvwxyz123")

    assert "9f86d081884c7d659a2feaa0c55ad015" not in text
    assert "portal%2F20261126" not in text
    assert "llp_abcdefghijklmnop" not in text
    assert "llp_qrstuvwxyz123" not in text
    assert "consolidated.00.pth" in text  # the rest of the line is kept


def test_the_filter_rewrites_records_with_arguments():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "GET %s", (PRESIGNED,), None)

    RedactSecretsFilter().filter(record)

    assert "X-Amz-Signature=[redacted]" in record.getMessage()
