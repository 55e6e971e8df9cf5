"""The development server's access log (`make run`) never prints a token or a signature."""

from __future__ import annotations

import logging
import urllib.request

import pytest

from core.logging import RedactSecretsFilter
from portal.tests.embedded import EmbeddedServer, embedded_env, prepare

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


@pytest.mark.slow
def test_the_access_log_of_make_run_redacts_tokens_and_signatures(tmp_path):
    var = tmp_path / "var"
    env = embedded_env(var)
    prepare(var, env)
    server = EmbeddedServer(env, tmp_path / "server.log")
    try:
        server.wait_ready()
        for query in (f"token={TOKEN}", f"X-Amz-Signature={SIGNATURE}&page=2"):
            with urllib.request.urlopen(f"{server.url}/accounts/login/?{query}", timeout=30):
                pass
    finally:
        server.stop()

    log = server.output()
    assert "GET /accounts/login/?token=llp_[redacted] HTTP/1.1" in log
    assert "GET /accounts/login/?X-Amz-Signature=[redacted]&page=2 HTTP/1.1" in log
    assert TOKEN not in log
    assert SIGNATURE not in log
