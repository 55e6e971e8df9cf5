"""Recompute the audit log's hash chain and name the first broken entry."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accounts.models import AuditEntry
from accounts.selectors import audit_first_broken


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exits 1 and names the first broken entry."

    def handle(self, *args, **options) -> None:
        total = AuditEntry.objects.count()
        broken = audit_first_broken()
        if broken is not None:
            entry, why = broken
            raise CommandError(
                f"Audit chain broken at entry #{entry.pk} ({entry.action} {entry.target}, "
                f"{entry.created_at:%Y-%m-%d %H:%M:%S} UTC): {why}."
            )
        self.stdout.write(self.style.SUCCESS(f"Audit chain verified: {total} entries intact."))
