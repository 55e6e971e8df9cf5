from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from weights.models import ModelVariant


def variant_list_published() -> QuerySet[ModelVariant]:
    return ModelVariant.objects.filter(is_published=True)


def variant_get_published(*, slug: str) -> ModelVariant:
    """The published variant with this slug (case-insensitive, '7B' or '7b'), or 404."""
    return get_object_or_404(ModelVariant, slug=slug.lower(), is_published=True)
