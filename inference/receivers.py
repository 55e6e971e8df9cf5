"""Signal receivers: translate other apps' news into calls of services."""

from __future__ import annotations

from django.dispatch import receiver

from accounts.signals import grant_revoked
from inference.services import jobs_cancel_for_grant


@receiver(grant_revoked)
def _cancel_jobs_of_revoked_grant(sender, grant, **kwargs) -> None:
    jobs_cancel_for_grant(grant=grant)
