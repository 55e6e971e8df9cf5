"""Grants: access to one size for one person until a date; revocation, expiry, notices."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts import emails
from accounts.models import (
    Application,
    Grant,
    GrantStatus,
)
from accounts.selectors import (
    user_is_reviewer,
)
from accounts.services.audit import actor_ref, audit_record
from accounts.services.tokens import token_revoke_all
from accounts.services.transitions import (
    grant_move,
    size_event,
)
from accounts.signals import grant_revoked
from catalog.models import ModelVariant
from core.errors import InvalidInput, PermissionDenied


def grant_create(
    *,
    user,
    variant: ModelVariant,
    application: Application | None = None,
    ends_at: datetime | None = None,
    actor=None,
) -> Grant:
    """Give access to one size until `ends_at` (default: the size's `grant_days`).

    A person has at most one active grant per size: a new approval extends it.
    """
    now = timezone.now()
    ends_at = ends_at or now + timedelta(days=variant.grant_days)
    with transaction.atomic():
        current = (
            Grant.objects.select_for_update()
            .filter(user=user, variant=variant, status=GrantStatus.ACTIVE)
            .first()
        )
        if current is not None and current.ends_at <= now:
            grant_move(current, GrantStatus.EXPIRED, actor=None)
            current = None
        if current is not None:
            current.ends_at = max(current.ends_at, ends_at)
            current.expiry_notified_at = None
            current.save(update_fields=["ends_at", "expiry_notified_at"])
            audit_record(
                actor=actor,
                action="grant.extended",
                target=f"grant:{current.pk}",
                data={"user": user.pk, "size": variant.slug, "ends_at": current.ends_at},
            )
            return current
        grant = Grant.objects.create(
            user=user, variant=variant, application=application, starts_at=now, ends_at=ends_at
        )
        audit_record(
            actor=actor,
            action="grant.created",
            target=f"grant:{grant.pk}",
            data={"user": user.pk, "size": variant.slug, "ends_at": ends_at},
        )
    return grant


def grant_revoke(*, grant: Grant, actor, reason: str, by_owner: bool = False) -> Grant:
    """End a grant now. Links, tokens and jobs stop at once (tokens are revoked; the jobs
    app listens to `grant_revoked`).

    Reviewers revoke; `by_owner` is the grantee giving it up (withdrawing the application
    it came from)."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Give a reason for the revocation.", extra={"field": "reason"})
    if by_owner:
        if actor is None or actor.pk != grant.user_id:
            raise PermissionDenied("Only the grantee can give up their own access.")
    elif actor is not None and not user_is_reviewer(actor):
        raise PermissionDenied("Only reviewers can revoke access.")
    with transaction.atomic():
        grant.refresh_from_db(from_queryset=Grant.objects.select_for_update())
        grant.revoked_at = timezone.now()
        grant.revoked_by, _ = actor_ref(actor)
        grant.revoke_reason = reason
        grant_move(
            grant,
            GrantStatus.REVOKED,
            actor=actor,
            fields=["revoked_at", "revoked_by", "revoke_reason"],
        )
        # The reason reaches whoever next uses a token, so they learn why, not only that.
        token_revoke_all(
            user=grant.user, reason=f"access to {grant.variant} revoked: {reason}".rstrip(".")
        )
        if grant.application_id:
            size_event(
                grant.application,
                actor=actor,
                variant=grant.variant,
                public_message=f"Your access to {grant.variant} was revoked: {reason}",
            )
        transaction.on_commit(lambda: grant_revoked.send(sender=Grant, grant=grant))
        emails.email_on_commit(
            to=grant.user.email, template="grant_revoked", context={"grant": grant}
        )
    return grant


def grant_expire_due(*, now: datetime | None = None) -> int:
    """Mark grants past their end as expired. Idempotent; returns how many changed."""
    now = now or timezone.now()
    count = 0
    ids = list(
        Grant.objects.filter(status=GrantStatus.ACTIVE, ends_at__lte=now).values_list(
            "pk", flat=True
        )
    )
    for pk in ids:
        with transaction.atomic():
            # The conditional update is the claim: a concurrent run changes nothing twice.
            if Grant.objects.filter(pk=pk, status=GrantStatus.ACTIVE).update(
                status=GrantStatus.EXPIRED
            ):
                grant = Grant.objects.select_related("variant").get(pk=pk)
                audit_record(
                    actor=None,
                    action="grant.expired",
                    target=f"grant:{pk}",
                    data={"user": grant.user_id, "size": grant.variant.slug},
                )
                count += 1
    return count


def grant_notify_expiring(*, within_days: int | None = None, now: datetime | None = None) -> int:
    """Email each grantee once whose grant ends within `within_days`. Returns emails queued."""
    now = now or timezone.now()
    if within_days is None:
        within_days = int(getattr(settings, "ACCESS_GRANT_EXPIRY_NOTICE_DAYS", 14))
    due = Grant.objects.filter(
        status=GrantStatus.ACTIVE,
        ends_at__gt=now,
        ends_at__lte=now + timedelta(days=within_days),
        expiry_notified_at__isnull=True,
    ).values_list("pk", flat=True)
    count = 0
    for pk in list(due):
        with transaction.atomic():
            if Grant.objects.filter(pk=pk, expiry_notified_at__isnull=True).update(
                expiry_notified_at=now
            ):
                grant = Grant.objects.select_related("user", "variant").get(pk=pk)
                emails.email_on_commit(
                    to=grant.user.email, template="grant_expiring", context={"grant": grant}
                )
                count += 1
    return count
