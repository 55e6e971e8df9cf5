from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services
from accounts.models import Grant, GrantStatus, LicenseAcceptance
from accounts.selectors import license_current_version
from accounts.signals import grant_revoked
from catalog.models import DEFAULT_LICENSE_SLUG, License
from core.errors import Conflict, InvalidInput

pytestmark = pytest.mark.django_db


def the_license() -> License:
    return License.objects.get(slug=DEFAULT_LICENSE_SLUG)


def test_version_one_ships_with_its_hash():
    version = license_current_version(the_license())
    assert version.version == 1
    assert version.sha256 == hashlib.sha256(version.text.encode()).hexdigest()
    assert "noncommercial" in version.text.lower()


def test_an_acceptance_records_who_what_when_and_where(outsider):
    from accounts.tests.factories import grant_access

    grant_access(outsider, "7b", accept_license=False)
    version = license_current_version(the_license())
    acceptance = services.license_accept(
        user=outsider,
        version=version,
        typed_name="  otto   outside ",
        ip="198.51.100.4",
        user_agent="Mozilla/5.0 test",
    )
    assert acceptance.text_sha256 == version.sha256
    assert acceptance.typed_name == "otto outside"
    assert acceptance.ip == "198.51.100.4"
    assert acceptance.user_agent == "Mozilla/5.0 test"
    # Accepting twice keeps the first record.
    again = services.license_accept(user=outsider, version=version, typed_name="Otto Outside")
    assert again.pk == acceptance.pk


def test_the_typed_name_must_be_the_applicants(outsider):
    from accounts.tests.factories import application_fill

    application_fill(outsider, "7b")
    version = license_current_version(the_license())
    with pytest.raises(InvalidInput):
        services.license_accept(user=outsider, version=version, typed_name="Someone Else")
    with pytest.raises(InvalidInput):
        services.license_accept(user=outsider, version=version, typed_name="")
    assert not LicenseAcceptance.objects.filter(user=outsider).exists()


def test_only_the_current_version_can_be_accepted(outsider):
    old = license_current_version(the_license())
    services.license_publish_version(license=the_license(), title="License", text="v2")
    with pytest.raises(Conflict):
        services.license_accept(user=outsider, version=old, typed_name="Otto Outside")


def test_a_new_version_emails_current_grantees(
    researcher, outsider, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        version = services.license_publish_version(
            license=the_license(), title="License", text="Version 2"
        )
    assert version.version == 2
    assert version.sha256 == hashlib.sha256(b"Version 2").hexdigest()
    assert [m.to for m in mailoutbox] == [[researcher.email]]
    assert "/access/license/" in mailoutbox[0].body


def test_revocation_sends_the_signal_after_commit(
    researcher, reviewer, mailoutbox, django_capture_on_commit_callbacks
):
    received = []

    def listener(sender, grant, **kwargs):
        received.append(grant.pk)

    grant_revoked.connect(listener)
    grant = Grant.objects.get(user=researcher, variant__slug="7b")
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            services.grant_revoke(grant=grant, actor=reviewer, reason="Breach.")
        assert received == []  # nothing before the commit
        for callback in callbacks:
            callback()
    finally:
        grant_revoked.disconnect(listener)
    assert received == [grant.pk]
    grant.refresh_from_db()
    assert grant.status == GrantStatus.REVOKED
    assert (grant.revoked_by, grant.revoke_reason) == (reviewer, "Breach.")
    assert "Breach." in mailoutbox[0].body
    with pytest.raises(services.InvalidTransition):
        services.grant_revoke(grant=grant, actor=reviewer, reason="Again.")


def test_expiry_marks_only_past_grants_once(researcher):
    Grant.objects.filter(user=researcher, variant__slug="demo").update(
        ends_at=timezone.now() - timedelta(hours=1)
    )
    assert services.grant_expire_due() == 1
    assert services.grant_expire_due() == 0
    statuses = dict(Grant.objects.filter(user=researcher).values_list("variant__slug", "status"))
    assert statuses == {"demo": "expired", "7b": "active"}


def test_expiring_soon_emails_each_grantee_once(
    researcher, mailoutbox, django_capture_on_commit_callbacks
):
    Grant.objects.filter(user=researcher, variant__slug="7b").update(
        ends_at=timezone.now() + timedelta(days=3)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert services.grant_notify_expiring(within_days=14) == 1
        assert services.grant_notify_expiring(within_days=14) == 0
    assert len(mailoutbox) == 1
    assert "7B" in mailoutbox[0].subject
