"""Signal receivers: they translate framework events into calls of services."""

from __future__ import annotations

from allauth.account.signals import password_changed, password_reset
from django.contrib.auth.signals import user_login_failed
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from accounts.models import User
from accounts.services import audit_record, token_revoke_all


@receiver(pre_save, sender=User)
def _remember_credentials(sender, instance: User, update_fields=None, **kwargs) -> None:
    if instance.pk is None:
        return
    if update_fields is not None and not {"password", "is_active"} & set(update_fields):
        return  # e.g. last_login on every sign-in: nothing to compare
    old = User.objects.filter(pk=instance.pk).values("password", "is_active").first()
    instance._credentials_before = old


@receiver(post_save, sender=User)
def _kill_tokens_on_credential_change(sender, instance: User, created: bool, **kwargs) -> None:
    old = instance.__dict__.pop("_credentials_before", None)
    if created or not old:
        return
    if old["is_active"] and not instance.is_active:
        token_revoke_all(user=instance, reason="account deactivated")
    elif old["password"] != instance.password:
        token_revoke_all(user=instance, reason="password changed")


@receiver(user_login_failed)
def _audit_failed_login(sender, credentials: dict, request=None, **kwargs) -> None:
    email = str(credentials.get("email") or credentials.get("username") or "")[:254]
    audit_record(
        actor=None, action="login.failed", target=f"email:{email.lower()}", ip=_client_ip(request)
    )


def _client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") if request is not None else None


@receiver(password_changed)
@receiver(password_reset)
def _audit_password_change(sender, request=None, user=None, **kwargs) -> None:
    if user is not None:
        audit_record(
            actor=user,
            action="user.password_changed",
            target=f"user:{user.pk}",
            ip=_client_ip(request),
        )
