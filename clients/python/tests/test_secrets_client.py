"""portal-client never prints a live presigned URL's signature (or an access token)."""

from __future__ import annotations

import socket

import pytest
import requests
from portal_client import cli
from portal_client.client import Client, PortalClientError
from portal_client.transfer import download_file

SIGNATURE = "5f1a9c0e7d2b4a6f8e3c1b0d9a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a99"
CREDENTIAL = "portal-dev%2F20261129%2Fus-east-1%2Fs3%2Faws4_request"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def _signed_url(port: int) -> str:
    return (
        f"http://127.0.0.1:{port}/llama-weights/demo/consolidated.00.pth"
        f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL}"
        f"&X-Amz-Date=20261129T120000Z&X-Amz-Expires=120&X-Amz-SignedHeaders=host"
        f"&X-Amz-Signature={SIGNATURE}"
    )


def test_a_failed_download_names_the_file_but_not_the_signature(tmp_path):
    with pytest.raises(PortalClientError) as failure:
        download_file(
            dest=tmp_path / "consolidated.00.pth",
            size=1024,
            sha256="0" * 64,
            fresh_url=lambda: _signed_url(_closed_port()),
            session_factory=requests.Session,
            workers=1,
            retries=1,
            timeout=5,
            progress=False,
            error_class=PortalClientError,
        )

    message = failure.value.message
    assert "download failed" in message
    assert "consolidated.00.pth" in message
    assert SIGNATURE not in message
    assert "aws4_request" not in message


def test_the_cli_prints_errors_without_signatures_or_tokens(monkeypatch, capsys):
    token = "llp_" + "k" * 43

    def failing_download(self, size, directory):
        raise PortalClientError(f"could not fetch {_signed_url(9)} with {token}")

    monkeypatch.setattr(Client, "download", failing_download)

    code = cli.main(["--url", "http://portal.example", "--token", token, "download", "demo"])

    err = capsys.readouterr().err
    assert code == 1
    assert "could not fetch http://127.0.0.1:9/llama-weights/demo/consolidated.00.pth?" in err
    assert SIGNATURE not in err
    assert token not in err
