"""Factories for the accounts domain. Access is always given through the real services."""

from __future__ import annotations

import functools

import factory
from allauth.account.models import EmailAddress
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group

from accounts.models import Application, Grant, OrganizationType, User
from accounts.selectors import REVIEWER_GROUP

CAST_PASSWORD = "cast-password-Heron-2024!"

USE_CASE = (
    "We study how the size of a language model changes its factual recall and its failure "
    "modes on scientific question answering. We will run the model on public benchmarks "
    "and on a new set of questions written by domain experts, compare the sizes, and "
    "publish the evaluation code and our findings; we will not redistribute the weights."
)


@functools.cache
def _cast_password_hash() -> str:
    # Hashing is slow on purpose; one hash (one salt) serves every cast member of a run.
    return make_password(CAST_PASSWORD)


class UserFactory(factory.django.DjangoModelFactory):
    """A user whose email address is verified through allauth's EmailAddress."""

    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"person{n}@uni{n}.example.edu")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    password = factory.LazyFunction(lambda: _cast_password_hash())

    @factory.post_generation
    def verified(self, create: bool, extracted: bool | None, **kwargs) -> None:
        if create:
            EmailAddress.objects.update_or_create(
                user=self,
                email=self.email,
                defaults={"verified": extracted is not False, "primary": True},
            )


class ReviewerFactory(UserFactory):
    is_staff = True
    email = factory.Sequence(lambda n: f"reviewer{n}@portal.example.org")

    @factory.post_generation
    def reviewer_group(self, create: bool, extracted, **kwargs) -> None:
        if create:
            group, _ = Group.objects.get_or_create(name=REVIEWER_GROUP)
            self.groups.add(group)


def application_fill(user: User, *slugs: str, submit: bool = True) -> Application:
    """An application for these sizes, complete, submitted unless `submit=False`."""
    from accounts import services
    from catalog.models import ModelVariant

    application = services.application_start(user=user)
    services.application_save_draft(
        application=application,
        user=user,
        data={
            "full_name": user.get_full_name() or user.email.split("@")[0],
            "affiliation": "University of Examples",
            "organization_type": OrganizationType.ACADEMIC,
            "country": "NL",
            "position": "Postdoctoral researcher",
            "orcid": "0000-0002-1825-0097",
            "web_page": "https://uni.example.edu/people/x",
            "publications": "A paper on evaluation, 2022.",
            "use_case": USE_CASE,
        },
        variants=list(ModelVariant.objects.filter(slug__in=slugs)),
    )
    if submit:
        application = services.application_submit(application=application, user=user)
    return application


def grant_access(user: User, *slugs: str, accept_license: bool = True) -> list[Grant]:
    """Approve `user` for these sizes through the real services; returns the live grants."""
    from accounts import services
    from accounts.models import ApplicationState, SizeOutcome
    from accounts.selectors import license_current_version, license_for_variant
    from catalog.models import ModelVariant

    application = application_fill(user, *slugs)
    pending = [
        d.variant
        for d in application.decisions.select_related("variant")
        if d.outcome in (SizeOutcome.PENDING, SizeOutcome.AWAITING_SECOND)
    ]
    if pending and application.state == ApplicationState.SUBMITTED:
        first, second = ReviewerFactory(), ReviewerFactory()
        services.application_approve(application=application, reviewer=first, variants=pending)
        application.refresh_from_db()
        waiting = [
            d.variant for d in application.decisions.filter(outcome=SizeOutcome.AWAITING_SECOND)
        ]
        if waiting:
            services.application_approve(application=application, reviewer=second, variants=waiting)
    if accept_license:
        versions = set()
        for variant in ModelVariant.objects.filter(slug__in=slugs):
            license = license_for_variant(variant)
            version = license_current_version(license) if license else None
            if version is not None:
                versions.add(version)
        for version in versions:
            services.license_accept(
                user=user, version=version, typed_name=services.user_full_name(user)
            )
    return list(
        Grant.objects.filter(user=user, variant__slug__in=slugs, status="active").select_related(
            "variant"
        )
    )
