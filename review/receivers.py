"""Signal receivers: they translate other apps' news into calls of review services."""

from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import receiver

from accounts.models import Application
from accounts.signals import application_submitted

logger = logging.getLogger(__name__)

# Returned when the flags could not be computed: any flag stops automatic approval, so an
# application is never approved unchecked because of a bug or an outage here.
FLAGS_UNAVAILABLE = "flags_unavailable"


@receiver(application_submitted, sender=Application)
def _flag_submission(sender, application: Application, **kwargs) -> list[str]:
    from review.services import flags_record

    try:
        # A savepoint: a failing query must not poison the applicant's submitting transaction.
        with transaction.atomic():
            return flags_record(application=application)
    except Exception:
        logger.exception("could not compute the flags of application %s", application.pk)
        return [FLAGS_UNAVAILABLE]
