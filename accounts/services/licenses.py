"""License versions and their acceptance."""

from __future__ import annotations

import hashlib
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts import emails
from accounts.models import (
    Application,
    GrantStatus,
    LicenseAcceptance,
    User,
)
from accounts.selectors import (
    license_current_version,
    variants_governed_by,
)
from accounts.services.audit import audit_record, clean_ip
from catalog.models import License, LicenseVersion
from core.errors import Conflict, InvalidInput


def license_text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def license_publish_version(
    *,
    license: License,
    title: str,
    text: str,
    effective_at: datetime | None = None,
    actor=None,
) -> LicenseVersion:
    """Publish a new version. Every current grantee must accept it before further use."""
    if not text.strip() or not title.strip():
        raise InvalidInput("A license version needs a title and a text.")
    with transaction.atomic():
        License.objects.select_for_update().get(pk=license.pk)
        last = license.versions.order_by("-version").first()
        version = LicenseVersion.objects.create(
            license=license,
            version=(last.version + 1) if last else 1,
            title=title.strip(),
            text=text,
            sha256=license_text_sha256(text),
            effective_at=effective_at or timezone.now(),
        )
        audit_record(
            actor=actor,
            action="license.published",
            target=f"license:{license.slug}",
            data={"version": version.version, "sha256": version.sha256},
        )
        if last is not None:
            now = timezone.now()
            grantees = (
                User.objects.filter(
                    grants__status=GrantStatus.ACTIVE,
                    grants__ends_at__gt=now,
                    grants__variant__in=variants_governed_by(license),
                    is_active=True,
                )
                .distinct()
                .values_list("email", flat=True)
            )
            for email in grantees:
                emails.email_on_commit(
                    to=email, template="license_updated", context={"version": version}
                )
    return version


def license_accept(
    *,
    user,
    version: LicenseVersion,
    typed_name: str,
    ip: str | None = None,
    user_agent: str = "",
) -> LicenseAcceptance:
    """Record that `user` accepted `version` by typing their full name."""
    typed = " ".join((typed_name or "").split())
    if len(typed) < 2:
        raise InvalidInput(
            "Type your full name to accept the license.", extra={"field": "typed_name"}
        )
    expected = user_full_name(user)
    if expected and typed.casefold() != " ".join(expected.split()).casefold():
        raise InvalidInput(
            f"Type your full name exactly as on your application ({expected}).",
            extra={"field": "typed_name"},
        )
    current = license_current_version(version.license)
    if current is None or current.pk != version.pk:
        raise Conflict(
            "This is not the current version of the license; reload the page and read the "
            "current one.",
            code="license_outdated",
        )
    with transaction.atomic():
        existing = LicenseAcceptance.objects.filter(user=user, version=version).first()
        if existing is not None:
            return existing
        acceptance = LicenseAcceptance.objects.create(
            user=user,
            version=version,
            text_sha256=version.sha256,
            typed_name=typed,
            ip=clean_ip(ip),
            user_agent=(user_agent or "")[:1000],
        )
        audit_record(
            actor=user,
            action="license.accepted",
            target=f"license:{version.license.slug}",
            data={"version": version.version, "sha256": version.sha256},
            ip=ip,
        )
    return acceptance


def user_full_name(user) -> str:
    """The name a person must type to accept the license: their application's, else account's."""
    name = (
        Application.objects.filter(user=user)
        .exclude(full_name="")
        .order_by("-created_at", "-id")
        .values_list("full_name", flat=True)
        .first()
    )
    return name or user.get_full_name()
