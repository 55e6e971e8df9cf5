"""Signal receivers: they translate other apps' news into calls of review services."""

from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import receiver

from accounts.models import Application
from accounts.signals import application_submitted
from review.services import flags_record

logger = logging.getLogger(__name__)


@receiver(application_submitted, sender=Application)
def _store_flags(sender, application: Application, flags=None, **kwargs) -> None:
    """Keep the flags the submission computed, for the queue and the detail page. Whether a
    size is approved automatically was decided by the submission itself, not here."""
    try:
        # A savepoint: a failing query must not poison the applicant's submitting transaction.
        with transaction.atomic():
            flags_record(application=application, results=flags)
    except Exception:
        logger.exception("could not store the flags of application %s", application.pk)
