"""Building applications for the console's tests, through the real accounts services."""

from __future__ import annotations

import itertools

from accounts import services
from accounts.models import Application, OrganizationType
from accounts.tests.factories import UserFactory
from catalog.models import ModelVariant

_counter = itertools.count(1)

TOPICS = [
    "protein folding benchmarks", "legal document summarisation", "machine translation "
    "for low-resource languages", "code generation for scientific software", "bias "
    "measurement in hiring texts", "medical question answering", "poetry and metre",
    "misinformation detection", "mathematical reasoning", "climate report analysis",
]  # fmt: skip


def unique_use_case(n: int | None = None) -> str:
    """A use case no other call returns (so no two test applications look duplicated)."""
    n = next(_counter) if n is None else n
    topic = TOPICS[n % len(TOPICS)]
    words = " ".join(f"w{n}x{i}" for i in range(40))
    return (
        f"Project {n}: we evaluate how model size affects {topic}. We measure accuracy, "
        f"calibration and failure cases on held-out data, publish code and results, and "
        f"never redistribute the weights. Study keys {words}."
    )


def clean_data(**overrides) -> dict:
    data = {
        "full_name": "Ada Lovelace",
        "affiliation": "University of Oxford",
        "organization_type": OrganizationType.ACADEMIC,
        "country": "GB",
        "position": "Research fellow",
        "orcid": "0000-0002-1825-0097",
        "web_page": "https://www.cs.ox.ac.uk/people/ada",
        "publications": "On engines, 1843.",
        "use_case": unique_use_case(),
    }
    data.update(overrides)
    return data


def submit(
    user=None,
    *slugs: str,
    email: str | None = None,
    ip: str | None = None,
    submit: bool = True,
    **fields,
) -> Application:
    """An application by `user` (a new one at ox.ac.uk by default) for these sizes."""
    if user is None:
        n = next(_counter)
        user = UserFactory(email=email or f"ada{n}@cs.ox.ac.uk")
    application = services.application_start(user=user)
    services.application_save_draft(
        application=application,
        user=user,
        data=clean_data(**fields),
        variants=list(ModelVariant.objects.filter(slug__in=slugs or ("7b",))),
    )
    if submit:
        application = services.application_submit(application=application, user=user, ip=ip)
    return application


def flag_codes(application: Application) -> set[str]:
    return set(application.review_flags.values_list("code", flat=True))
