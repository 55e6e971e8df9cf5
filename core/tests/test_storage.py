from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from core import storage

MiB = 1024 * 1024


def _key() -> str:
    return f"tests/{uuid.uuid4().hex}"


def _get(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_it_streams_a_multipart_upload_and_computes_both_digests(s3, tmp_path):
    data = os.urandom(11 * MiB + 123)
    path = tmp_path / "blob"
    path.write_bytes(data)
    progress: list[int] = []

    key = _key()
    stored = storage.upload_file(path, key=key, part_size=5 * MiB, on_progress=progress.append)

    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.md5 == hashlib.md5(data).hexdigest()  # noqa: S324
    assert progress == [5 * MiB, 5 * MiB, MiB + 123]
    assert storage.object_exists(key, size=len(data))
    body = storage.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert body == data


def test_an_interrupted_upload_leaves_no_object_and_no_open_upload(s3, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(11 * MiB))
    key = _key()
    calls = []

    def interrupt_on_second_part(count: int) -> None:
        calls.append(count)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        storage.upload_file(path, key=key, part_size=5 * MiB, on_progress=interrupt_on_second_part)

    assert storage.object_head(key) is None
    assert key not in storage.multipart_uploads_list(prefix="tests/")


def test_a_failed_verification_aborts_the_upload(s3, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 100)
    key = _key()

    def refuse(sha256: str, md5: str) -> None:
        raise ValueError("bad checksum")

    with pytest.raises(ValueError):
        storage.upload_file(path, key=key, part_size=5 * MiB, verify=refuse)

    assert storage.object_head(key) is None


def test_a_presigned_url_serves_the_file_as_an_attachment(s3, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"weights" * 100)
    key = _key()
    storage.upload_file(path, key=key, part_size=5 * MiB)

    url = storage.presigned_get_url(key, filename="consolidated.00.pth", expires_in=120)
    status, headers, body = _get(url)

    assert status == 200
    assert body == b"weights" * 100
    assert headers["Content-Disposition"] == 'attachment; filename="consolidated.00.pth"'
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["120"]


def test_s3_refuses_a_presigned_url_with_an_edited_signature(s3, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"secret weights")
    key = _key()
    storage.upload_file(path, key=key, part_size=5 * MiB)
    url = storage.presigned_get_url(key, filename="blob", expires_in=120)
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Signature"][0]
    tampered_signature = ("0" if signature[0] != "0" else "1") + signature[1:]

    status, _, body = _get(url.replace(signature, tampered_signature))

    assert status == 403
    assert b"secret weights" not in body


def test_s3_refuses_a_presigned_url_for_another_key(s3, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"secret weights")
    key, other = _key(), _key()
    storage.upload_file(path, key=key, part_size=5 * MiB)
    storage.upload_file(path, key=other, part_size=5 * MiB)
    url = storage.presigned_get_url(key, filename="blob", expires_in=120)

    status, _, _ = _get(url.replace(key, other))

    assert status == 403


def test_s3_refuses_an_expired_presigned_url(s3, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"secret weights")
    key = _key()
    storage.upload_file(path, key=key, part_size=5 * MiB)
    url = storage.presigned_get_url(key, filename="blob", expires_in=1)
    import time

    time.sleep(2.1)
    status, _, body = _get(url)

    assert status == 403
    assert b"secret weights" not in body


def test_download_file_resumes_a_partial_file_and_verifies_it(s3, tmp_path):
    data = os.urandom(3 * MiB + 7)
    source = tmp_path / "source"
    source.write_bytes(data)
    key = _key()
    stored = storage.upload_file(source, key=key, part_size=5 * MiB)
    dest = tmp_path / "cache" / "consolidated.00.pth"
    dest.parent.mkdir()
    (dest.parent / "consolidated.00.pth.part").write_bytes(data[: MiB + 5])
    fetched: list[int] = []

    storage.download_file(
        key,
        dest,
        sha256=stored.sha256,
        size=stored.size,
        block_size=MiB,
        on_progress=fetched.append,
    )

    assert dest.read_bytes() == data
    assert sum(fetched) == len(data) - (MiB + 5)
    assert not (dest.parent / "consolidated.00.pth.part").exists()


def test_download_file_removes_a_file_that_fails_its_checksum(s3, tmp_path):
    source = tmp_path / "source"
    source.write_bytes(b"abc" * 1000)
    key = _key()
    stored = storage.upload_file(source, key=key, part_size=5 * MiB)
    dest = tmp_path / "cache" / "file"

    with pytest.raises(storage.ChecksumMismatch):
        storage.download_file(key, dest, sha256="0" * 64, size=stored.size)

    assert not dest.exists()
    assert not dest.with_name("file.part").exists()


def test_two_processes_filling_the_same_cache_take_turns(s3, tmp_path):
    import threading

    data = os.urandom(3 * MiB)
    source = tmp_path / "source"
    source.write_bytes(data)
    key = _key()
    stored = storage.upload_file(source, key=key, part_size=5 * MiB)
    dest = tmp_path / "cache" / "consolidated.00.pth"
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            storage.download_file(key, dest, sha256=stored.sha256, size=stored.size, block_size=MiB)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert dest.read_bytes() == data


def test_a_file_too_big_for_ten_thousand_parts_gets_bigger_parts(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "MAX_PARTS", 2)  # stands in for 10,000 parts of a huge file
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(11 * MiB))
    parts: list[int] = []

    stored = storage.upload_file(path, key=_key(), part_size=5 * MiB, on_progress=parts.append)

    assert parts == [10 * MiB, MiB]
    assert stored.size == 11 * MiB
