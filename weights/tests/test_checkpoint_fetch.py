from __future__ import annotations

import hashlib

import pytest

from catalog.models import ModelVariant, WeightFile
from catalog.selectors import variant_files
from core import storage
from inference.checkpoints import checkpoint_fetch

pytestmark = pytest.mark.django_db


def test_the_worker_cache_gets_every_file_verified_and_keeps_intact_ones(
    published_7b, tmp_path, monkeypatch
):
    cache = tmp_path / "cache" / "7b"

    checkpoint_fetch(variant=published_7b, directory=cache)

    files = variant_files(published_7b)
    assert [f.path for f in files] == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    for file in files:
        assert hashlib.sha256((cache / file.path).read_bytes()).hexdigest() == file.sha256

    fetched = []
    monkeypatch.setattr(storage, "client", lambda: fetched.append(1))
    checkpoint_fetch(variant=published_7b, directory=cache)  # all intact: S3 is not asked
    assert fetched == []


def test_a_file_that_arrives_damaged_is_refused(published_7b, tmp_path):
    WeightFile.objects.filter(variant=published_7b, path="params.json").update(sha256="0" * 64)

    with pytest.raises(storage.ChecksumMismatch, match=r"params\.json"):
        checkpoint_fetch(variant=published_7b, directory=tmp_path)

    assert not (tmp_path / "params.json").exists()


def test_a_size_with_nothing_stored_says_so(db, tmp_path):
    from core.errors import NotFound

    with pytest.raises(NotFound, match="no published files"):
        checkpoint_fetch(variant=ModelVariant.objects.get(slug="65b"), directory=tmp_path)
