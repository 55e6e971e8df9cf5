"""The Python client's transfer engine against the real S3 server (no portal in between)."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid

import pytest
import requests
from portal_client import transfer

from core import storage

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def stored(s3, tmp_path):
    """A 3 MiB + 5 byte object in S3: its presigned URL, bytes and SHA-256."""
    data = os.urandom(3 * MiB + 5)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    key = f"tests/{uuid.uuid4().hex}"
    storage.upload_file(source, key=key, part_size=5 * MiB)
    url = storage.presigned_get_url(key, filename="weights.bin", expires_in=600)
    return url, data, hashlib.sha256(data).hexdigest()


def _download(url: str, data: bytes, sha256: str, dest, **kwargs) -> int:
    return transfer.download_file(
        dest=dest,
        size=len(data),
        sha256=sha256,
        fresh_url=lambda: url,
        session_factory=requests.Session,
        progress=False,
        **kwargs,
    )


def test_each_worker_keeps_one_connection_across_its_chunks(stored, tmp_path, caplog):
    url, data, sha256 = stored
    dest = tmp_path / "out.bin"

    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        received = _download(url, data, sha256, dest, workers=2, chunk_size=256 * KiB)

    assert dest.read_bytes() == data
    assert received == len(data)
    messages = [r.getMessage() for r in caplog.records]
    gets = [m for m in messages if '"GET ' in m]
    connections = [m for m in messages if "Starting new HTTP connection" in m]
    reconnections = [m for m in messages if "Resetting dropped connection" in m]
    assert len(gets) == 13  # 3 MiB + 5 bytes in 256 KiB chunks
    assert len(connections) == 2
    assert reconnections == []


def test_a_stale_part_file_from_another_version_is_overwritten_not_trusted(stored, tmp_path):
    url, data, sha256 = stored
    dest = tmp_path / "out.bin"
    # A longer `.part` full of other bytes, and a state file written for other contents.
    dest.with_name("out.bin.part").write_bytes(os.urandom(len(data) + 4096))
    dest.with_name("out.bin.part.state").write_bytes(b"PORTALDL1 " + b"0" * 64 + b" 1 1")

    received = _download(url, data, sha256, dest, workers=3, chunk_size=MiB)

    assert received == len(data)
    assert dest.read_bytes() == data
    assert not dest.with_name("out.bin.part").exists()
    assert not dest.with_name("out.bin.part.state").exists()


def test_an_interrupted_download_resumes_from_its_last_recorded_mib(stored, tmp_path):
    url, data, sha256 = stored
    dest = tmp_path / "out.bin"
    seen = []

    def stop_after_two_mib(count: int) -> None:
        seen.append(count)
        if sum(seen) > 2 * MiB + 100 * KiB:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _download(url, data, sha256, dest, workers=1, on_receive=stop_after_two_mib)
    assert transfer.bytes_present(dest, len(data)) == sum(seen[:-1])

    resumed = _download(url, data, sha256, dest, workers=1)

    assert resumed == len(data) - sum(seen[:-1])
    assert dest.read_bytes() == data


def test_bytes_that_do_not_match_the_checksum_are_removed(stored, tmp_path):
    url, data, _ = stored
    dest = tmp_path / "out.bin"

    with pytest.raises(RuntimeError, match="does not match"):
        _download(url, data, "0" * 64, dest, workers=2, chunk_size=MiB)

    assert not dest.exists()
    assert not list(tmp_path.glob("out.bin.part*"))


def test_hashed_bytes_are_written_back_and_dropped_behind_the_hashing(
    stored, tmp_path, monkeypatch
):
    url, data, sha256 = stored
    dest = tmp_path / "out.bin"
    window, keep = 128 * KiB, 512 * KiB
    monkeypatch.setattr(transfer._Hasher, "DROP", window)
    monkeypatch.setattr(transfer._Hasher, "KEEP_CACHED", keep)
    calls = []
    real_fadvise = os.posix_fadvise

    def spy(fd, offset, length, advice):
        calls.append((offset, length, advice))
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)

    _download(url, data, sha256, dest, workers=2, chunk_size=256 * KiB)

    assert dest.read_bytes() == data
    # Each window ending `keep` or more behind the end is written back (first call), and the
    # one three windows before it dropped (second call); nothing closer to the end is touched.
    ends = range(window, len(data) - keep + 1, window)
    expected = []
    for end in ends:
        expected.append((end - window, window, os.POSIX_FADV_DONTNEED))
        if end - window >= 3 * window:
            expected.append((end - 4 * window, window, os.POSIX_FADV_DONTNEED))
    assert len(ends) == 20
    assert calls == expected
