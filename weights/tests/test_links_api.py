from __future__ import annotations

from catalog.models import WeightFile
from weights.models import DownloadLink


def test_it_lists_a_link_and_the_checksums_of_every_file(client, published_7b, download_token):
    response = client.get("/api/v1/models/7b/links", HTTP_AUTHORIZATION=f"Bearer {download_token}")

    body = response.json()
    assert response.status_code == 200, body
    files = {f.path: f for f in WeightFile.objects.filter(variant=published_7b)}
    assert [f["path"] for f in body["files"]] == sorted(files)
    for item in body["files"]:
        stored = files[item["path"]]
        assert (item["size"], item["sha256"], item["md5"]) == (
            stored.size, stored.sha256, stored.md5,
        )  # fmt: skip
        assert item["url"].startswith("http://testserver/dl/")
        assert item["uses_left"] == 20
    assert body["checklist_url"] == "http://testserver/models/7b/checklist.chk"


def test_the_text_format_is_one_file_a_line_for_shell_scripts(client, published_7b, download_token):
    response = client.get(
        "/api/v1/models/7b/links?format=txt", HTTP_AUTHORIZATION=f"Bearer {download_token}"
    )

    assert response["Content-Type"].startswith("text/plain")
    lines = response.content.decode().splitlines()
    links = {link.file.path: link for link in DownloadLink.objects.select_related("file")}
    assert len(lines) == 3  # params.json, tokenizer.model, one shard
    for line in lines:
        sha256, size, path, url = line.split(" ")
        assert sha256 == links[path].file.sha256
        assert int(size) == links[path].file.size
        assert url == f"http://testserver/dl/{links[path].id}"


def test_it_refuses_without_access_with_a_reason(client, outsider, published_7b):
    from accounts.services import token_create

    _, key = token_create(user=outsider, name="t", scopes=["download"])

    response = client.get("/api/v1/models/7b/links", HTTP_AUTHORIZATION=f"Bearer {key}")
    text = client.get("/api/v1/models/7b/links?format=txt", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "no_grant"
    assert text.content.decode().startswith("error no_grant: You have no access")


def test_it_refuses_a_token_without_the_download_scope(client, researcher, published_7b):
    from accounts.services import token_create

    _, key = token_create(user=researcher, name="jobs", scopes=["generate"])

    response = client.get("/api/v1/models/7b/links", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "token_scope"


def test_it_refuses_anonymous_requests(client, published_7b):
    response = client.get("/api/v1/models/7b/links")

    assert response.status_code in (401, 403)
    assert response.json()["error"]["message"]


def test_an_unknown_size_is_not_found(client, download_token, db):
    response = client.get("/api/v1/models/14b/links", HTTP_AUTHORIZATION=f"Bearer {download_token}")

    assert response.status_code == 404
    assert "error" in response.json()
