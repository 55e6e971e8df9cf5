"""Accounts as a whole."""

from __future__ import annotations

from django.db import transaction

from accounts.models import (
    User,
)
from accounts.services.audit import audit_record
from accounts.services.tokens import token_revoke_all


def user_deactivate(*, user, actor, reason: str) -> None:
    """Deactivate an account: it can no longer sign in, and its tokens die."""
    with transaction.atomic():
        User.objects.filter(pk=user.pk).update(is_active=False)
        user.is_active = False
        token_revoke_all(user=user, reason="account deactivated")
        audit_record(
            actor=actor,
            action="user.deactivated",
            target=f"user:{user.pk}",
            data={"reason": reason},
        )
