"""Write the audit chain's head to S3 and the log now (beat does it periodically)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accounts.services.audit import audit_anchor_write
from core.errors import ServiceUnavailable


class Command(BaseCommand):
    help = "Anchor the audit log's head (sequence number and hash) in S3 and the log."

    def handle(self, *args, **options) -> None:
        try:
            anchor = audit_anchor_write()
        except ServiceUnavailable as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Anchored audit entry number {anchor.seq} ({anchor.hash[:16]}...).")
