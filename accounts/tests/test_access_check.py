"""The one access selector: every reason it can say no, and the yes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.http import Http404
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from accounts import services
from accounts.models import Grant
from accounts.selectors import (
    access_check,
    access_require,
    access_require_published,
    variants_accessible,
)
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


def test_a_size_by_name_answers_as_its_two_reads_do(researcher, outsider):
    """`access_require_published`: what `variant_get_published` then `access_require` say."""
    variant, grant = access_require_published(user=researcher, slug="7B", purpose="download")
    assert (variant, grant) == (
        v("7b"),
        access_require(user=researcher, variant=v("7b"), purpose="download"),
    )
    with pytest.raises(Http404):
        access_require_published(user=researcher, slug="70b", purpose="download")
    v7 = v("7b")
    v7.is_published = False
    v7.save(update_fields=["is_published"])
    with pytest.raises(Http404):  # not published: as unknown, whoever asks
        access_require_published(user=researcher, slug="7b", purpose="download")
    v7.is_published = True
    v7.save(update_fields=["is_published"])
    for user, code in ((outsider, "no_grant"), (AnonymousUser(), "anonymous")):
        with pytest.raises(PermissionDenied) as refused:
            access_require_published(user=user, slug="7b", purpose="download")
        assert refused.value.code == code
    with pytest.raises(ValueError):
        access_require_published(user=researcher, slug="7b", purpose="delete")


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


# --- The one-query path agrees with the rules taken one by one ---------------------------

_hours = st.sampled_from([-24, -1, 1, 24])  # from now: well past, just past, just ahead ...
_grant_states = st.tuples(
    st.sampled_from(["active", "active", "revoked", "expired"]), _hours, _hours
)


@given(
    email=st.sampled_from(["none", "verified", "verified-other-case", "unverified"]),
    grants=st.lists(_grant_states, min_size=1, max_size=3),
    own_license=st.booleans(),
    accept_existing=st.booleans(),  # the versions the catalog already holds
    # each new version: (effective, hours from now; accepted by the user)
    versions=st.lists(st.tuples(_hours, st.booleans()), max_size=3),
)
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_one_query_allows_exactly_when_every_rule_does(
    email, grants, own_license, accept_existing, versions, db
):
    """Over generated accounts, grants and license histories, `_allowed_grant` (the one
    query access_check asks first) finds a grant exactly when the rules one by one allow,
    and the same grant; so a refusal always comes from the step-by-step reasons."""
    with transaction.atomic():  # each example starts from the same database
        _one_query_agrees(email, grants, own_license, accept_existing, versions)
        transaction.set_rollback(True)


def _one_query_agrees(email, grants, own_license, accept_existing, versions) -> None:
    from hashlib import sha256

    from accounts.models import LicenseAcceptance
    from accounts.selectors import _access_by_steps, _allowed_grant
    from catalog.models import LicenseVersion

    now = timezone.now()
    user = UserFactory(email="Mixed.Case@uni.example.edu")
    EmailAddress.objects.filter(user=user).delete()
    if email != "none":
        EmailAddress.objects.create(
            user=user,
            email=user.email.upper() if email == "verified-other-case" else user.email,
            verified=email != "unverified",
        )
    variant = v("7b")
    variant.is_published = True
    if own_license:
        license = License.objects.create(slug=f"own-{user.pk}", title="Own license")
        variant.license = license
    else:
        variant.license = None
        license = License.objects.get(slug=DEFAULT_LICENSE_SLUG)
    variant.save(update_fields=["is_published", "license"])
    existing = list(license.versions.all())
    if accept_existing:
        for version in existing:
            LicenseAcceptance.objects.create(
                user=user, version=version, text_sha256=version.sha256, typed_name="x"
            )
    start = max((version.version for version in existing), default=0)
    for i, (effective, accepted) in enumerate(versions, start=start + 1):
        version = LicenseVersion.objects.create(
            license=license,
            version=i,
            title=f"v{i}",
            text=f"text {i}",
            sha256=sha256(f"text {i}".encode()).hexdigest(),
            effective_at=now + timedelta(hours=effective),
        )
        if accepted:
            LicenseAcceptance.objects.create(
                user=user, version=version, text_sha256=version.sha256, typed_name="x"
            )
    active_seen = False
    for status, starts, ends in grants:
        if status == "active":
            if active_seen:  # at most one active grant per person and size
                continue
            active_seen = True
        Grant.objects.create(
            user=user,
            variant=variant,
            status=status,
            starts_at=now + timedelta(hours=starts),
            ends_at=now + timedelta(hours=ends),
        )

    steps = _access_by_steps(user, variant, now)
    found = _allowed_grant(user, variant, now)

    assert (found is not None) == steps.allowed, (steps.code, found)
    if found is not None:
        assert found.pk == steps.grant.pk
        assert access_check(user=user, variant=variant, purpose="download").grant.pk == found.pk
    else:
        decision = access_check(user=user, variant=variant, purpose="generate")
        assert (decision.allowed, decision.code) == (False, steps.code)
    # The links API's path reads the size by its name with the same query: the same answer.
    try:
        size, grant = access_require_published(user=user, slug="7B", purpose="download")
        by_slug = (size.pk, size.license_id, grant.pk)
    except PermissionDenied as exc:
        by_slug = exc.code
    expected = (variant.pk, variant.license_id, steps.grant.pk) if steps.allowed else steps.code
    assert by_slug == expected
