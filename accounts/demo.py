"""Demo accounts for `manage.py seed_demo` (never for production data)."""

from __future__ import annotations

from allauth.account.models import EmailAddress
from django.contrib.auth.models import Group
from django.db import transaction

from accounts import services
from accounts.models import ApplicationState, Grant, GrantStatus, User
from accounts.selectors import REVIEWER_GROUP, license_current_version
from catalog.models import DEFAULT_LICENSE_SLUG, License, ModelVariant

DEMO_PASSWORD = "demo-portal-password-2024"  # noqa: S105 (published demo credentials)

REVIEWER = "reviewer@example.org"
RESEARCHER = "researcher@example.org"
ADMIN = "admin@example.org"

_DEMO_USE_CASE = (
    "Demonstration account. I evaluate how a small model in the LLaMA architecture behaves "
    "through the portal's whole path: downloads with checksum verification, the HTTP API, "
    "notebooks and generation jobs, so that the portal's operators can see it working end to "
    "end before real researchers arrive."
)


def _user(email: str, first: str, last: str, **flags) -> User:
    user, created = User.objects.get_or_create(
        email=email, defaults={"first_name": first, "last_name": last, **flags}
    )
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save()
    EmailAddress.objects.update_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    return user


@transaction.atomic
def seed_demo_accounts() -> list[tuple[str, str]]:
    """Create (once) a reviewer, an admin and a researcher approved for the demo size."""
    reviewer = _user(REVIEWER, "Rita", "Reviewer", is_staff=True)
    reviewer.groups.add(Group.objects.get_or_create(name=REVIEWER_GROUP)[0])
    admin = _user(ADMIN, "Ada", "Admin", is_staff=True, is_superuser=True)
    admin.groups.add(Group.objects.get_or_create(name=REVIEWER_GROUP)[0])
    researcher = _user(RESEARCHER, "Rosa", "Researcher")

    demo = ModelVariant.objects.get(slug="demo")
    live = Grant.objects.filter(user=researcher, variant=demo, status=GrantStatus.ACTIVE)
    if not live.exists():
        application = services.application_start(user=researcher)
        if application.state == ApplicationState.DRAFT:
            services.application_save_draft(
                application=application,
                user=researcher,
                data={
                    "full_name": "Rosa Researcher",
                    "affiliation": "Example University",
                    "organization_type": "academic",
                    "country": "NL",
                    "position": "Research scientist",
                    "use_case": _DEMO_USE_CASE,
                },
                variants=[demo],
            )
            application = services.application_submit(application=application, user=researcher)
        if application.state == ApplicationState.SUBMITTED:
            services.application_approve(
                application=application, reviewer=reviewer, variants=[demo]
            )
    license = License.objects.get(slug=DEFAULT_LICENSE_SLUG)
    version = license_current_version(license)
    if version is not None:
        services.license_accept(user=researcher, version=version, typed_name="Rosa Researcher")
    _seed_waiting_applications()
    return [(REVIEWER, DEMO_PASSWORD), (RESEARCHER, DEMO_PASSWORD), (ADMIN, DEMO_PASSWORD)]


# Applicants waiting in the review queue, so the console has work to show: a clean case,
# a webmail address, and one asking for the two-reviewer sizes.
_WAITING = [
    (
        "grace.hopper@cs.example.edu",
        "Grace",
        "Hopper",
        "Example Institute of Technology",
        "academic",
        "US",
        "Associate professor",
        "https://cs.example.edu/~hopper",
        ["7b", "13b"],
        "We study how the size of a language model changes its calibration on question "
        "answering in low-resource languages. We will run the 7B and 13B models on public "
        "benchmarks we translate ourselves, measure calibration error, and publish the "
        "evaluation code and results. No model outputs will be used commercially.",
    ),
    (
        "alan.t.researcher@gmail.com",
        "Alan",
        "Turing",
        "Independent researcher",
        "other",
        "GB",
        "Independent researcher",
        "",
        ["7b"],
        "I want to reproduce published results on in-context learning with a 7B model and "
        "extend them to arithmetic tasks of growing length, to see where the model's "
        "accuracy breaks down. I will share notebooks with the community under an open "
        "license and not use the model for any product or service.",
    ),
    (
        "k.johnson@policy.example.gov",
        "Katherine",
        "Johnson",
        "Example Office of AI Policy",
        "government",
        "US",
        "Senior analyst",
        "https://policy.example.gov/staff/johnson",
        ["33b", "65b"],
        "Our office assesses risks of large language models for public-sector use. We will "
        "red-team the 33B and 65B models for misinformation and privacy leakage on "
        "controlled prompts, write a public report, and keep all weights on an air-gapped "
        "research cluster with access limited to our evaluation team.",
    ),
]


def _seed_waiting_applications() -> None:
    for email, first, last, org, kind, country, position, page, sizes, use_case in _WAITING:
        user = _user(email, first, last)
        if user.applications.exists():
            continue
        application = services.application_start(user=user)
        services.application_save_draft(
            application=application,
            user=user,
            data={
                "full_name": f"{first} {last}",
                "affiliation": org,
                "organization_type": kind,
                "country": country,
                "position": position,
                "web_page": page,
                "use_case": use_case,
            },
            variants=list(ModelVariant.objects.filter(slug__in=sizes)),
        )
        services.application_submit(application=application, user=user)
