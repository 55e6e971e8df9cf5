from __future__ import annotations

import pytest

from catalog.models import ModelVariant
from weights.services import variant_publish
from weights.tests.checkpoints import write_checkpoint


@pytest.fixture
def published_7b(s3, tmp_path_factory, db) -> ModelVariant:
    """LLaMA 7B with a small fake checkpoint stored in the test S3 server."""
    variant = ModelVariant.objects.get(slug="7b")
    directory = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "7B", variant)
    variant_publish(variant=variant, directory=directory)
    return variant


@pytest.fixture
def published_13b(s3, tmp_path_factory, db) -> ModelVariant:
    """LLaMA 13B (two model-parallel shards), small fake files, stored in S3."""
    variant = ModelVariant.objects.get(slug="13b")
    directory = write_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "13B", variant, shard_bytes=300 * 1024
    )
    variant_publish(variant=variant, directory=directory)
    return variant


@pytest.fixture
def download_token(researcher) -> str:
    from accounts.services import token_create

    _, key = token_create(user=researcher, name="laptop", scopes=["download"])
    return key
