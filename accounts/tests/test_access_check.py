"""The one access selector: every reason it can say no, and the yes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone

from accounts import services
from accounts.models import Grant
from accounts.selectors import access_check, access_require, variants_accessible
from accounts.tests.factories import UserFactory, application_fill, grant_access
from catalog.models import DEFAULT_LICENSE_SLUG, License, ModelVariant
from core.errors import PermissionDenied

pytestmark = pytest.mark.django_db


def v(slug: str) -> ModelVariant:
    return ModelVariant.objects.get(slug=slug)


def publish_new_license_version():
    license = License.objects.get(slug=DEFAULT_LICENSE_SLUG)
    return services.license_publish_version(
        license=license, title="LLaMA Noncommercial Research License", text="Version two text."
    )


@pytest.mark.parametrize("purpose", ["download", "generate"])
def test_an_approved_researcher_may_use_their_sizes(researcher, purpose):
    decision = access_check(user=researcher, variant=v("7b"), purpose=purpose)
    assert (decision.allowed, decision.code) == (True, "ok")
    assert decision.grant.variant.slug == "7b"
    assert access_require(user=researcher, variant=v("7b"), purpose=purpose) == decision.grant


def test_anonymous():
    decision = access_check(user=AnonymousUser(), variant=v("7b"), purpose="download")
    assert (decision.allowed, decision.code) == (False, "anonymous")
    assert access_check(user=None, variant=v("7b"), purpose="download").code == "anonymous"


def test_inactive(researcher):
    researcher.is_active = False
    researcher.save()
    assert access_check(user=researcher, variant=v("7b"), purpose="download").code == "inactive"


def test_unverified(researcher):
    EmailAddress.objects.filter(user=researcher).update(verified=False)
    decision = access_check(user=researcher, variant=v("7b"), purpose="download")
    assert decision.code == "unverified"
    assert "Verify your email" in decision.message


def test_not_published(researcher):
    ModelVariant.objects.filter(slug="7b").update(is_published=False)
    assert access_check(user=researcher, variant=v("7b"), purpose="generate").code == (
        "not_published"
    )


def test_no_grant(outsider, researcher, applicant):
    assert access_check(user=outsider, variant=v("7b"), purpose="download").code == "no_grant"
    assert access_check(user=researcher, variant=v("13b"), purpose="download").code == "no_grant"
    # A pending application gives nothing yet.
    assert access_check(user=applicant, variant=v("7b"), purpose="download").code == "no_grant"


def test_grant_expired(researcher):
    Grant.objects.filter(user=researcher, variant__slug="7b").update(
        ends_at=timezone.now() - timedelta(minutes=1)
    )
    decision = access_check(user=researcher, variant=v("7b"), purpose="download")
    assert decision.code == "grant_expired"
    assert "expired" in decision.message


def test_grant_revoked(revoked_researcher):
    decision = access_check(user=revoked_researcher, variant=v("7b"), purpose="download")
    assert decision.code == "grant_revoked"
    assert "Shared the weights." in decision.message


def test_license_pending_after_a_new_version_then_reaccepted_without_review(researcher):
    version = publish_new_license_version()
    decision = access_check(user=researcher, variant=v("7b"), purpose="generate")
    assert decision.code == "license_pending"
    assert "/access/license/" in decision.message
    assert variants_accessible(user=researcher, purpose="generate") == []

    applications_before = researcher.applications.count()
    services.license_accept(user=researcher, version=version, typed_name="Rosa Search")
    assert access_check(user=researcher, variant=v("7b"), purpose="generate").allowed
    assert researcher.applications.count() == applications_before


def test_approved_but_license_never_accepted():
    user = UserFactory(first_name="Nia", last_name="New")
    grant_access(user, "7b", accept_license=False)
    assert access_check(user=user, variant=v("7b"), purpose="download").code == "license_pending"


def test_access_require_raises_with_the_code(outsider):
    with pytest.raises(PermissionDenied) as excinfo:
        access_require(user=outsider, variant=v("7b"), purpose="download")
    assert excinfo.value.code == "no_grant"
    assert excinfo.value.status_code == 403


def test_an_unknown_purpose_is_a_programming_error(researcher):
    with pytest.raises(ValueError):
        access_check(user=researcher, variant=v("7b"), purpose="delete")


def test_variants_accessible_lists_the_live_grants_in_catalog_order(
    researcher, revoked_researcher, outsider
):
    assert [x.slug for x in variants_accessible(user=researcher, purpose="download")] == [
        "demo",
        "7b",
    ]
    assert variants_accessible(user=revoked_researcher, purpose="download") == []
    assert variants_accessible(user=outsider, purpose="generate") == []


def test_variants_accessible_agrees_with_access_check(researcher):
    Grant.objects.filter(user=researcher, variant__slug="demo").update(
        ends_at=timezone.now() - timedelta(seconds=1)
    )
    listed = {x.slug for x in variants_accessible(user=researcher, purpose="generate")}
    checked = {
        x.slug
        for x in ModelVariant.objects.all()
        if access_check(user=researcher, variant=x, purpose="generate").allowed
    }
    assert listed == checked == {"7b"}


def test_a_returned_application_gives_no_access(reviewer):
    user = UserFactory()
    app = application_fill(user, "7b")
    services.application_return(application=app, reviewer=reviewer, message="Add a web page.")
    assert access_check(user=user, variant=v("7b"), purpose="download").code == "no_grant"
