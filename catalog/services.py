"""Writes of the catalog's model cards. A card changes only by a new version; the audit entry
for a staff edit is written by the caller above the catalog (`review.card_services`), in the
same transaction."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from catalog.cards import card_content_check, card_content_sha256
from catalog.models import CardVersionSeen, ModelCardVersion, ModelVariant
from catalog.selectors import card_current_versions


def card_version_create(
    *,
    variant: ModelVariant,
    summary: str,
    metadata: list,
    body: str,
    tables: list,
    change_note: str = "",
    author_ref: str = "",
) -> ModelCardVersion:
    """Publish the next version of `variant`'s card (checked first: InvalidInput lists every
    problem). Two editors saving at once get two consecutive versions, never the same one."""
    card_content_check(summary=summary, metadata=metadata, body=body, tables=tables)
    with transaction.atomic():
        # Serialise per size: the version number is read, then written.
        ModelVariant.objects.select_for_update().filter(pk=variant.pk).first()
        last = variant.card_versions.aggregate(last=Max("version"))["last"] or 0
        return ModelCardVersion.objects.create(
            variant=variant,
            version=last + 1,
            summary=summary.strip(),
            metadata=metadata,
            body=body,
            tables=tables,
            change_note=change_note.strip(),
            author_ref=author_ref,
            sha256=card_content_sha256(
                summary=summary.strip(), metadata=metadata, body=body, tables=tables
            ),
            created_at=timezone.now(),
        )


def card_versions_record_seen(
    *, application_id: int, variants: Iterable[ModelVariant], at=None
) -> list[ModelCardVersion]:
    """Keep with an application the current card version of each size it requests: the
    version the applicant was shown when they submitted. Returns those versions."""
    at = at or timezone.now()
    current = list(card_current_versions(variants).values())
    CardVersionSeen.objects.bulk_create(
        [
            CardVersionSeen(application_id=application_id, card_version=v, seen_at=at)
            for v in current
        ],
        ignore_conflicts=True,
    )
    return current
