"""Emails to applicants and grantees, sent after the transaction that caused them commits.

Each message is two templates: `accounts/email/<name>_subject.txt` and `<name>.txt`.
A failing mail server must not undo a decision that is already committed, so a send that
fails is logged (without the message body) and the caller goes on.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)


def email_render(*, template: str, context: dict[str, Any]) -> tuple[str, str]:
    ctx = {"site_url": settings.SITE_URL, **context}
    subject = render_to_string(f"accounts/email/{template}_subject.txt", ctx)
    subject = " ".join(subject.split())
    body = render_to_string(f"accounts/email/{template}.txt", ctx)
    return subject, body


def email_send(*, to: str, template: str, context: dict[str, Any]) -> bool:
    subject, body = email_render(template=template, context=context)
    prefix = getattr(settings, "ACCOUNT_EMAIL_SUBJECT_PREFIX", "") or ""
    try:
        send_mail(prefix + subject, body, settings.DEFAULT_FROM_EMAIL, [to])
    except Exception:
        logger.exception("could not send the %r email to user address", template)
        return False
    return True


def email_on_commit(*, to: str, template: str, context: dict[str, Any]) -> None:
    """Send once the current transaction commits (immediately outside a transaction)."""
    transaction.on_commit(lambda: email_send(to=to, template=template, context=context))
