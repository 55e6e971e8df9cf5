"""The console's writes to the model cards: a staff edit publishes a new version of a size's
card and records it in the audit log, both or neither."""

from __future__ import annotations

from django.db import transaction

from accounts.services import audit_record
from accounts.services.audit import actor_ref
from catalog.models import ModelCardVersion, ModelVariant
from catalog.services import card_version_create


def card_publish(
    *,
    variant: ModelVariant,
    editor,
    summary: str,
    metadata: list,
    body: str,
    tables: list,
    change_note: str,
    ip: str | None = None,
) -> ModelCardVersion:
    """A new version of `variant`'s card, written by `editor` (a reviewer: the caller checked),
    with its audit entry. The earlier versions stay as they were."""
    with transaction.atomic():
        card = card_version_create(
            variant=variant,
            summary=summary,
            metadata=metadata,
            body=body,
            tables=tables,
            change_note=change_note,
            author_ref=actor_ref(editor)[1],
        )
        audit_record(
            actor=editor,
            action="catalog.card_published",
            target=f"card:{variant.slug}",
            data={
                "version": card.version,
                "sha256": card.sha256,
                "change_note": card.change_note,
                "tables": [t["key"] for t in card.tables],
            },
            ip=ip,
        )
    return card
