"""The web server's access log (`make run`'s gunicorn, `make run-dev`'s Django server) never
prints a token or a signature."""

from __future__ import annotations

import logging
import time
import urllib.request

import pytest

from core.logging import RedactSecretsFilter
from portal.tests.embedded import EmbeddedStack

TOKEN = "llp_" + "Zx9" * 14
SIGNATURE = "0123456789abcdef" * 4


def test_the_access_log_handler_redacts():
    # Django's own `django.server` handler does not propagate to the root's: it needs the
    # filter itself.
    handlers = [
        h for h in logging.getLogger("django.server").handlers if type(h) is logging.StreamHandler
    ]  # not pytest's own capturing handlers
    assert handlers
    for handler in handlers:
        assert any(isinstance(f, RedactSecretsFilter) for f in handler.filters), handler


def test_gunicorns_access_log_redacts():
    from gunicorn.config import Config

    from devtools.gunicorn_logging import RedactingLogger

    logger = RedactingLogger(Config())
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep = Keep()
    logger.access_log.addHandler(keep)
    try:
        logger.access_log.info('"%(r)s"', {"r": f"GET /dl/x?X-Amz-Signature={SIGNATURE} HTTP/1.1"})
        logger.access_log.info('"%(r)s"', {"r": f"GET /v1/jobs?token={TOKEN} HTTP/1.1"})
    finally:
        logger.access_log.removeHandler(keep)
    assert seen == [
        '"GET /dl/x?X-Amz-Signature=[redacted] HTTP/1.1"',
        '"GET /v1/jobs?token=llp_[redacted] HTTP/1.1"',
    ]


@pytest.mark.slow
def test_the_access_log_of_make_run_redacts_tokens_and_signatures(tmp_path):
    stack = EmbeddedStack(tmp_path)
    try:
        stack.prepare()
        stack.serve()
        for query in (f"token={TOKEN}", f"X-Amz-Signature={SIGNATURE}&page=2"):
            with urllib.request.urlopen(f"{stack.url}/accounts/login/?{query}", timeout=30):
                pass
        # The server writes a request's line after sending its answer.
        deadline = time.monotonic() + 30
        while stack.output().count("GET /accounts/login/?") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stack.stop()

    log = stack.output()
    assert "GET /accounts/login/?token=llp_[redacted] HTTP/1.1" in log
    assert "GET /accounts/login/?X-Amz-Signature=[redacted]&page=2 HTTP/1.1" in log
    assert TOKEN not in log
    assert SIGNATURE not in log
