"""Reads of the catalog that more than one app needs: which sizes exist, which are
published, and each size's published files."""

from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from catalog.models import ModelVariant, WeightFile
from core.errors import NotFound


def variant_list_published() -> QuerySet[ModelVariant]:
    return ModelVariant.objects.filter(is_published=True)


def variant_get_published(*, slug: str) -> ModelVariant:
    """The published variant with this slug (case-insensitive, '7B' or '7b'), or 404."""
    return get_object_or_404(
        ModelVariant.objects.select_related("license"), slug=slug.lower(), is_published=True
    )


def variant_get(*, size: str) -> ModelVariant:
    """A catalog variant by size or slug ('7B', '7b', 'demo'), published or not."""
    variant = ModelVariant.objects.filter(slug=size.lower()).first()
    if variant is None:
        raise NotFound(
            f"No model size {size!r}. Known sizes: "
            + ", ".join(ModelVariant.objects.values_list("size", flat=True)),
            code="unknown_size",
        )
    return variant


def variant_files(variant: ModelVariant) -> list[WeightFile]:
    """The variant's manifest: every stored file, in path order. The job worker fills its
    cache from this with `core.storage.download_file` (SHA-256 verified)."""
    return list(WeightFile.objects.filter(variant=variant).order_by("path"))


def variant_manifest(variant: ModelVariant) -> dict:
    return {
        "family": variant.family,
        "size": variant.size,
        "shard_count": variant.shard_count,
        "params": variant.params,
        "files": [
            {"path": f.path, "size": f.size, "sha256": f.sha256, "md5": f.md5}
            for f in variant_files(variant)
        ],
    }
