from __future__ import annotations

from accounts.models import ApplicationState, GrantStatus
from accounts.selectors import access_check, user_is_reviewer
from catalog.models import ModelVariant


def test_the_cast_is_who_it_says(applicant, researcher, revoked_researcher, reviewer, outsider):
    seven = ModelVariant.objects.get(slug="7b")
    demo = ModelVariant.objects.get(slug="demo")
    assert applicant.applications.get().state == ApplicationState.SUBMITTED
    assert access_check(user=researcher, variant=seven, purpose="download").allowed
    assert access_check(user=researcher, variant=demo, purpose="generate").allowed
    assert revoked_researcher.grants.get().status == GrantStatus.REVOKED
    assert access_check(user=revoked_researcher, variant=seven, purpose="download").code == (
        "grant_revoked"
    )
    assert user_is_reviewer(reviewer)
    assert not user_is_reviewer(outsider)
    assert access_check(user=outsider, variant=seven, purpose="download").code == "no_grant"
