"""Both clients against a live portal and the real S3 server: a two-shard checkpoint."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.test import override_settings

from catalog.models import WeightFile
from weights.models import DownloadEvent, DownloadLink

# Live-server tests commit for real (the root conftest puts the migrations' rows back).
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def researcher_13b(transactional_db):
    from accounts.tests.factories import UserFactory, grant_access

    user = UserFactory(email="shards@uni.example.edu", first_name="Sha", last_name="Rds")
    grant_access(user, "13b")
    return user


@pytest.fixture
def token_13b(researcher_13b) -> str:
    from accounts.services import token_create

    return token_create(user=researcher_13b, name="cluster", scopes=["download"])[1]


def _assert_checkpoint(directory: Path, variant) -> None:
    files = WeightFile.objects.filter(variant=variant)
    assert {f.path for f in files} == {
        "consolidated.00.pth", "consolidated.01.pth", "params.json", "tokenizer.model",
    }  # fmt: skip
    for file in files:
        assert hashlib.sha256((directory / file.path).read_bytes()).hexdigest() == file.sha256
    checklist = subprocess.run(
        ["md5sum", "-c", "checklist.chk"], cwd=directory, capture_output=True, text=True
    )
    assert checklist.returncode == 0, checklist.stdout + checklist.stderr
    assert not list(directory.glob("*.part*"))


def test_portal_client_cli_downloads_a_two_shard_checkpoint(
    live_server, published_13b, token_13b, tmp_path
):
    target = tmp_path / "llama-13b"
    env = {**os.environ, "PORTAL_URL": live_server.url, "PORTAL_TOKEN": token_13b}

    run = subprocess.run(
        [sys.executable, "-m", "portal_client", "download", "13B", "--dir", str(target),
         "--quiet", "--workers", "3"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    assert "4 file(s) downloaded" in run.stdout
    _assert_checkpoint(target, published_13b)
    assert DownloadEvent.objects.count() == 4
    assert set(DownloadEvent.objects.values_list("user_agent", flat=True)) == {"portal-client/0.1"}


def test_portal_client_resumes_without_fetching_finished_chunks_again(
    live_server, published_13b, token_13b, tmp_path
):
    from portal_client import Client

    client = Client(live_server.url, token_13b, workers=2, chunk_size=64 * 1024, progress=False)
    received = []

    def die_after_200k(count: int) -> None:
        received.append(count)
        if sum(received) > 200 * 1024:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.download("13B", tmp_path, on_receive=die_after_200k)
    report = client.download("13B", tmp_path)

    total = sum(WeightFile.objects.filter(variant=published_13b).values_list("size", flat=True))
    assert sum(received) + report.bytes_fetched - total < 2 * 1024 * 1024  # two blocks at most
    assert report.bytes_fetched < total
    _assert_checkpoint(tmp_path, published_13b)


def test_portal_client_fetches_fresh_links_when_they_expire_mid_run(
    live_server, published_13b, token_13b, tmp_path
):
    from django.db import connection
    from django.utils import timezone
    from portal_client import Client

    expired = []

    def expire_every_link_once(count: int) -> None:
        # Runs in a download thread: the links die while the first file streams.
        if not expired:
            expired.append(
                DownloadLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
            )
            connection.close()

    client = Client(live_server.url, token_13b, workers=1, progress=False)
    report = client.download("13B", tmp_path, on_receive=expire_every_link_once)

    assert expired == [4]
    assert len(report.downloaded) == 4
    _assert_checkpoint(tmp_path, published_13b)
    assert DownloadLink.objects.count() == 8  # the first four and their fresh replacements
    assert DownloadEvent.objects.count() == 4


def test_portal_client_says_why_it_is_refused(live_server, published_13b, outsider, tmp_path):
    from accounts.services import token_create

    key = token_create(user=outsider, name="t", scopes=["download"])[1]
    env = {**os.environ, "PORTAL_URL": live_server.url, "PORTAL_TOKEN": key}

    run = subprocess.run(
        [sys.executable, "-m", "portal_client", "download", "13B", "--dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert run.returncode == 1
    assert "error: You have no access to LLaMA 13B" in run.stderr


def test_portal_client_refuses_to_start_without_enough_free_space(
    live_server, published_13b, token_13b, tmp_path, monkeypatch
):
    import shutil
    from collections import namedtuple

    from portal_client import Client, PortalClientError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))

    with pytest.raises(PortalClientError, match="Not enough free space"):
        Client(live_server.url, token_13b, progress=False).download("13B", tmp_path)
    assert DownloadEvent.objects.count() == 0


def _script(live_server, token: str) -> str:
    response = requests.get(
        f"{live_server.url}/models/13b/download.sh",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.text


def test_download_sh_downloads_and_verifies_a_two_shard_checkpoint(
    live_server, published_13b, token_13b, tmp_path
):
    script = tmp_path / "download.sh"
    script.write_text(_script(live_server, token_13b))
    target = tmp_path / "llama-13b"

    run = subprocess.run(
        ["sh", str(script), str(target)],
        env={**os.environ, "PORTAL_TOKEN": token_13b},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    assert "All files of LLaMA 13B" in run.stderr
    _assert_checkpoint(target, published_13b)

    again = subprocess.run(
        ["sh", str(script), str(target)],
        env={**os.environ, "PORTAL_TOKEN": token_13b},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0
    assert again.stderr.count("already here, SHA-256 verified") == 4
    assert DownloadEvent.objects.count() == 4


def test_download_sh_recovers_from_links_that_expire_mid_run(
    live_server, published_13b, token_13b, tmp_path
):
    # A slow network, played by a curl that waits 2 s before each file transfer: with links
    # that live 3 s, the links run out while the script works through the files.
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "curl").write_text(
        '#!/bin/sh\ncase " $* " in *" -C - "*) sleep 2 ;; esac\nexec /usr/bin/curl "$@"\n'
    )
    (slow / "curl").chmod(0o755)
    with override_settings(WEIGHTS_LINK_SECONDS=3):
        script = tmp_path / "download.sh"
        script.write_text(_script(live_server, token_13b))
        original = set(DownloadLink.objects.values_list("id", flat=True))
        target = tmp_path / "llama-13b"
        run = subprocess.run(
            ["sh", str(script), str(target)],
            env={**os.environ, "PORTAL_TOKEN": token_13b,
                 "PATH": f"{slow}:{os.environ['PATH']}"},
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    assert run.returncode == 0, run.stderr
    assert "no longer valid (link_expired)" in run.stderr, run.stderr
    assert "fetched fresh links" in run.stderr
    _assert_checkpoint(target, published_13b)
    used = set(DownloadEvent.objects.values_list("link_id", flat=True))
    assert used - original  # at least one file came through a fresh link
    assert DownloadEvent.objects.count() == 4  # refused uses recorded nothing


def test_download_sh_resumes_a_partial_file(live_server, published_13b, token_13b, tmp_path):
    script = tmp_path / "download.sh"
    script.write_text(_script(live_server, token_13b))
    target = tmp_path / "llama-13b"
    target.mkdir()
    shard = WeightFile.objects.get(variant=published_13b, path="consolidated.00.pth")
    from core import storage

    body = storage.client().get_object(Bucket=storage.bucket(), Key=shard.s3_key)["Body"].read()
    (target / "consolidated.00.pth.part").write_bytes(body[: shard.size // 2])

    run = subprocess.run(
        ["sh", str(script), str(target)],
        env={**os.environ, "PORTAL_TOKEN": token_13b},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    assert f"resuming consolidated.00.pth at byte {shard.size // 2}" in run.stderr
    _assert_checkpoint(target, published_13b)


def test_download_sh_explains_a_refusal(live_server, published_13b, token_13b, tmp_path):
    from accounts.selectors import license_for_variant
    from accounts.services import license_publish_version

    script = tmp_path / "download.sh"
    script.write_text(_script(live_server, token_13b))
    license_publish_version(
        license=license_for_variant(published_13b), title="LLaMA license v2", text="New terms."
    )

    run = subprocess.run(
        ["sh", str(script), str(tmp_path / "out")],
        env={**os.environ, "PORTAL_TOKEN": token_13b},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    no_token = subprocess.run(
        ["sh", str(script)], env={k: v for k, v in os.environ.items() if k != "PORTAL_TOKEN"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip

    assert run.returncode == 1
    assert "error: consolidated.00.pth: Version 2 of the" in run.stderr
    assert "Read and accept it on the license page" in run.stderr
    assert "4 file(s) failed" in run.stderr
    assert DownloadEvent.objects.count() == 0
    assert no_token.returncode == 2
    assert "set PORTAL_TOKEN" in no_token.stderr


def test_download_sh_verifies_with_shasum_where_there_is_no_sha256sum(
    live_server, published_13b, token_13b, tmp_path
):
    # macOS has `shasum -a 256` and no sha256sum: a PATH with every tool but sha256sum.
    import shutil

    tools = tmp_path / "macos-like-bin"
    tools.mkdir()
    for name in ("sh", "curl", "shasum", "perl", "mktemp", "cut", "awk", "sed", "head", "wc",
                 "tr", "mkdir", "mv", "rm", "cp", "cat", "dirname", "sleep", "printf"):  # fmt: skip
        found = shutil.which(name)
        if found:
            (tools / name).symlink_to(found)
    assert shutil.which("sha256sum", path=str(tools)) is None
    script = tmp_path / "download.sh"
    script.write_text(_script(live_server, token_13b))
    target = tmp_path / "llama-13b"

    run = subprocess.run(
        [str(tools / "sh"), str(script), str(target)],
        env={"PATH": str(tools), "PORTAL_TOKEN": token_13b, "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    _assert_checkpoint(target, published_13b)


def test_portal_client_fails_with_a_reason_for_a_size_with_no_files(live_server, tmp_path, db):
    """Approved for 7B, nothing published: not "0 file(s) downloaded ... all verified"."""
    from accounts.services import token_create
    from accounts.tests.factories import UserFactory, grant_access
    from catalog.models import WeightFile

    WeightFile.objects.filter(variant__slug="7b").delete()
    user = UserFactory()
    grant_access(user, "7b")
    key = token_create(user=user, name="t", scopes=["download"])[1]
    env = {**os.environ, "PORTAL_URL": live_server.url, "PORTAL_TOKEN": key}

    run = subprocess.run(
        [sys.executable, "-m", "portal_client", "download", "7B", "--dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert run.returncode == 1
    assert "LLaMA 7B has no published files yet." in run.stderr
    assert "downloaded" not in run.stdout + run.stderr


@pytest.mark.slow  # waits out its own backoff (about 10 s)
def test_download_sh_rides_out_an_outage_and_gives_up_without_a_last_sleep(
    live_server, published_13b, token_13b, tmp_path
):
    """While the portal is unreachable (played by a curl that fails the link requests for a
    while), the script retries with backoff and finishes once it answers again; with a
    budget too short for the next wait, it stops at once instead of sleeping first."""
    script = tmp_path / "download.sh"
    script.write_text(_script(live_server, token_13b))
    fake = tmp_path / "bin"
    fake.mkdir()
    counter = tmp_path / "failures"
    # The first three requests for a /dl/ link fail as if the portal were down (curl exit 7).
    (fake / "curl").write_text(
        "#!/bin/sh\n"
        'case " $* " in *"/dl/"*)\n'
        f"  n=$(cat {counter} 2>/dev/null || echo 0)\n"
        f'  if [ "$n" -lt 3 ]; then echo $((n + 1)) > {counter}; exit 7; fi ;;\n'
        "esac\n"
        'exec /usr/bin/curl "$@"\n'
    )
    (fake / "curl").chmod(0o755)
    env = {**os.environ, "PORTAL_TOKEN": token_13b, "PATH": f"{fake}:{os.environ['PATH']}"}

    run = subprocess.run(
        ["sh", str(script), str(tmp_path / "ok")], env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("the portal did not answer properly (HTTP 000)") == 3
    assert "retrying in 1s." in run.stderr and "retrying in 2s." in run.stderr
    _assert_checkpoint(tmp_path / "ok", published_13b)

    counter.write_text("0")
    short = subprocess.run(
        ["sh", str(script), str(tmp_path / "short")],
        env={**env, "PORTAL_RETRY_SECONDS": "2"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert short.returncode != 0
    # The first file: waits of 1 s then 2 s would end after its 2 s budget, so one retry
    # and then it stops at once (the next file then meets the last simulated failure).
    first = [line for line in short.stderr.splitlines() if "consolidated.00.pth:" in line]
    assert sum("retrying in" in line for line in first) == 1
    assert "giving up after retrying for 2s" in first[-1]
