"""Periodic tasks of the accounts domain (scheduled in settings.CELERY_BEAT_SCHEDULE).

Both are idempotent: each grant changes or is emailed at most once, however often they run.
"""

from __future__ import annotations

from celery import shared_task

from accounts import services


@shared_task(
    name="accounts.grants_expire",
    acks_late=True,
    max_retries=0,
    soft_time_limit=120,
    time_limit=180,
    queue="default",
)
def grants_expire() -> int:
    return services.grant_expire_due()


@shared_task(
    name="accounts.grants_notify_expiring",
    acks_late=True,
    max_retries=0,
    soft_time_limit=300,
    time_limit=360,
    queue="default",
)
def grants_notify_expiring() -> int:
    return services.grant_notify_expiring()


@shared_task(
    name="accounts.audit_anchor",
    acks_late=True,
    max_retries=0,
    soft_time_limit=30,
    time_limit=60,
    queue="default",
)
def audit_anchor() -> int:
    """Copy the audit chain's head outside the database (S3 and the log)."""
    return services.audit_anchor_write().seq
