from __future__ import annotations

import hashlib

import pytest

from catalog.models import WeightFile
from catalog.tests.factories import file_row
from weights.models import DownloadLink


def test_the_public_sees_the_model_card_but_no_files(client, published_7b):
    response = client.get("/models/7b/")

    page = response.content.decode()
    assert response.status_code == 200
    assert "Model card" in page
    assert "LLaMA Noncommercial Research License" in page  # the license that governs it
    assert "consolidated.00.pth" not in page
    assert "/dl/" not in page


def test_an_outsider_is_told_why_there_are_no_files(client, outsider, published_7b):
    client.force_login(outsider)

    page = client.get("/models/7b/").content.decode()

    assert "consolidated.00.pth" not in page
    assert "Apply for it on the access page" in page


def test_a_researcher_sees_files_checksums_and_personal_links(
    client, researcher, published_7b, django_assert_max_num_queries
):
    client.force_login(researcher)

    with django_assert_max_num_queries(20):
        page = client.get("/models/7b/").content.decode()

    for file in WeightFile.objects.filter(variant=published_7b):
        assert file.path in page
        assert file.sha256 in page
        assert file.md5 in page
    for link in DownloadLink.objects.filter(user=researcher):
        assert f'href="/dl/{link.id}"' in page
    assert "checklist.chk" in page and "manifest.json" in page and "download.sh" in page


def test_reloading_the_page_reuses_live_links(client, researcher, published_7b):
    client.force_login(researcher)

    client.get("/models/7b/")
    client.get("/models/7b/")

    assert DownloadLink.objects.filter(user=researcher).count() == 3  # one per file


def test_checklist_and_manifest_match_the_stored_files(client, researcher, published_7b):
    client.force_login(researcher)

    checklist = client.get("/models/7b/checklist.chk")
    manifest = client.get("/models/7b/manifest.json").json()

    files = {f.path: f for f in WeightFile.objects.filter(variant=published_7b)}
    assert checklist["Content-Disposition"] == 'attachment; filename="checklist.chk"'
    assert checklist.content.decode().splitlines() == [
        f"{files[p].md5}  {p}" for p in sorted(files)
    ]
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        p: f.sha256 for p, f in files.items()
    }
    assert manifest["size"] == "7B"


@pytest.mark.parametrize("path", ["checklist.chk", "manifest.json", "download.sh"])
def test_file_lists_are_refused_to_outsiders(client, outsider, published_7b, path):
    client.force_login(outsider)

    response = client.get(f"/models/7b/{path}", HTTP_ACCEPT="application/json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "no_grant"


def test_download_sh_is_a_personal_script_with_the_files_and_their_digests(
    client, researcher, published_7b
):
    client.force_login(researcher)

    response = client.get("/models/7b/download.sh")

    script = response.content.decode()
    assert response["Content-Disposition"] == 'attachment; filename="download-7b.sh"'
    assert script.startswith("#!/bin/sh\n")
    assert researcher.email in script
    for file in WeightFile.objects.filter(variant=published_7b):
        assert f"{file.sha256} {file.size} {file.path} http://testserver/dl/" in script
    assert hashlib.sha256(b"").hexdigest() not in script


def test_the_model_page_tells_whether_files_and_a_worker_are_there(client, db, settings):

    from catalog.models import WeightFile
    from core import workers

    WeightFile.objects.filter(variant__slug="7b").delete()
    html = client.get("/models/7b/").content.decode()
    assert '<dd id="availability-files">LLaMA 7B has no published files yet.</dd>' in html
    assert "no published files yet, so no worker can run it" in html

    file_row("7b")
    html = client.get("/models/7b/").content.decode()
    assert '<dd id="availability-files">published</dd>' in html
    assert "No worker serves LLaMA 7B now (queue gpu.7b)" in html

    settings.WORKER_PRESENCE_SECONDS = 3600  # the key outlives a slow run
    workers.announce(node="page@test", queues=["gpu.7b"])
    try:
        html = client.get("/models/7b/").content.decode()
        assert '<dd id="availability-run">served by 1 worker</dd>' in html
    finally:
        workers.withdraw(node="page@test", queues=["gpu.7b"])
