"""Personal access tokens: made once, stored hashed, revoked with the access behind them."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import (
    TOKEN_PREFIX,
    AccessToken,
    TokenScope,
)
from accounts.selectors import (
    user_is_reviewer,
)
from accounts.services.audit import audit_record
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from core.rows import one_with_related

TOKEN_MAX_DAYS = 366
TOKEN_MAX_PER_USER = 20


def token_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_create(
    *,
    user,
    name: str,
    scopes: Iterable[str],
    expires_in_days: int = 90,
) -> tuple[AccessToken, str]:
    """Create a token; returns it with its key, which is shown once and never stored."""
    name = (name or "").strip()
    scopes = sorted(set(scopes))
    if not name:
        raise InvalidInput("Give the token a name you will recognise.", extra={"field": "name"})
    valid = set(TokenScope.values)
    if not scopes or not set(scopes) <= valid:
        raise InvalidInput(
            f"Choose scopes among: {', '.join(sorted(valid))}.", extra={"field": "scopes"}
        )
    if not 1 <= expires_in_days <= TOKEN_MAX_DAYS:
        raise InvalidInput(
            f"A token lives between 1 and {TOKEN_MAX_DAYS} days.", extra={"field": "expires"}
        )
    if not user.is_active:
        raise PermissionDenied("This account is deactivated.", code="inactive")
    now = timezone.now()
    live = AccessToken.objects.filter(user=user, revoked_at__isnull=True, expires_at__gt=now)
    if live.count() >= TOKEN_MAX_PER_USER:
        raise Conflict(f"You have {TOKEN_MAX_PER_USER} live tokens; revoke one first.")
    with transaction.atomic():
        for _attempt in range(5):
            key = TOKEN_PREFIX + secrets.token_urlsafe(32)
            # The display/lookup prefix is unique; 48 random bits rarely collide, but may.
            if not AccessToken.objects.filter(prefix=key[:12]).exists():
                break
        token = AccessToken.objects.create(
            user=user,
            name=name[:100],
            prefix=key[:12],
            key_hash=token_hash(key),
            scopes=scopes,
            expires_at=now + timedelta(days=expires_in_days),
        )
        audit_record(
            actor=user,
            action="token.created",
            target=f"token:{token.pk}",
            data={"prefix": token.prefix, "scopes": scopes, "expires_at": token.expires_at},
        )
    return token, key


def token_find(key: str) -> AccessToken | None:
    """The token this key belongs to (revoked or expired included), or None."""
    if not key.startswith(TOKEN_PREFIX) or len(key) < 20:
        return None
    # The token and its user in one plain query (the ORM spent ~1 ms compiling it).
    candidate = one_with_related(AccessToken, "user", "m.prefix = %s", [key[:12]])
    if candidate is None or not hmac.compare_digest(candidate.key_hash, token_hash(key)):
        return None
    return candidate


def token_touch(*, token: AccessToken) -> None:
    """Record use; written at most once a minute per token, to keep requests cheap."""
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now


def token_revoke(*, token: AccessToken, actor, reason: str = "revoked by its owner") -> AccessToken:
    if actor is None or (actor.pk != token.user_id and not user_is_reviewer(actor)):
        raise NotFound("There is no such token on your account.")
    with transaction.atomic():
        token.refresh_from_db(from_queryset=AccessToken.objects.select_for_update())
        if token.revoked_at is not None:
            raise Conflict("This token is already revoked.")
        token.revoked_at = timezone.now()
        token.revoke_reason = reason[:200]
        token.save(update_fields=["revoked_at", "revoke_reason"])
        audit_record(
            actor=actor,
            action="token.revoked",
            target=f"token:{token.pk}",
            data={"prefix": token.prefix, "reason": reason},
        )
    return token


def token_revoke_all(*, user, reason: str) -> int:
    """Revoke every live token of a user (deactivation, password change, revoked access)."""
    with transaction.atomic():
        count = AccessToken.objects.filter(user=user, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoke_reason=reason[:200]
        )
        if count:
            audit_record(
                actor=None,
                action="token.revoked_all",
                target=f"user:{user.pk}",
                data={"count": count, "reason": reason},
            )
    return count
