"""Catalog rows for tests that need a size to look published without uploading anything."""

from __future__ import annotations

from django.utils import timezone

from catalog.models import ModelVariant, WeightFile


def file_row(slug: str, path: str = "params.json") -> WeightFile:
    """A manifest row for `slug` (no object behind it in S3): enough for the catalog to say
    the size has published files."""
    row, _ = WeightFile.objects.get_or_create(
        variant=ModelVariant.objects.get(slug=slug),
        path=path,
        defaults={
            "size": 1,
            "sha256": "0" * 64,
            "md5": "0" * 32,
            "s3_key": f"test-rows/{slug}/{path}",
            "uploaded_at": timezone.now(),
        },
    )
    return row
