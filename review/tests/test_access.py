"""Only reviewers (staff in the "reviewers" group) get into the console: 403 for anonymous
visitors, 404 for everyone else signed in, on every URL and method."""

from __future__ import annotations

import pytest
from django.urls import URLPattern, reverse

from accounts.tests.factories import grant_access
from review import urls as review_urls
from review.tests.helpers import submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def console_urls(researcher):
    application = submit()
    grant = researcher.grants.first()
    kw = {"application_id": application.pk}
    return [
        ("get", reverse("review:queue")),
        ("get", reverse("review:dashboard")),
        ("get", reverse("review:export")),
        ("get", reverse("review:export") + "?start=2026-01-01&end=2026-12-31"),
        ("get", reverse("review:detail", kwargs=kw)),
        ("post", reverse("review:bulk")),
        ("post", reverse("review:claim", kwargs=kw)),
        ("post", reverse("review:release", kwargs=kw)),
        ("post", reverse("review:take_over", kwargs=kw)),
        ("post", reverse("review:add_note", kwargs=kw)),
        ("post", reverse("review:approve", kwargs=kw)),
        ("post", reverse("review:reject", kwargs=kw)),
        ("post", reverse("review:return", kwargs=kw)),
        ("post", reverse("review:revoke", kwargs={"grant_id": grant.pk})),
    ]


def test_every_console_view_carries_the_one_access_check():
    for pattern in review_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        assert getattr(pattern.callback, "review_protected", False), pattern.name


def test_anonymous_visitors_get_403_everywhere(client, console_urls):
    for method, url in console_urls:
        response = getattr(client, method)(url)
        assert response.status_code == 403, (method, url)


@pytest.mark.parametrize(
    "who", ["outsider", "researcher", "staff_not_reviewer", "group_member_not_staff"]
)
def test_people_who_are_not_reviewers_get_404_everywhere(client, console_urls, who, request):
    client.force_login(request.getfixturevalue(who))
    for method, url in console_urls:
        response = getattr(client, method)(url, {"note": "x", "text": "x", "reason": "x"})
        assert response.status_code == 404, (who, method, url)


def test_nothing_changed_for_non_reviewers(client, outsider, console_urls):
    from accounts.models import AuditEntry

    before = AuditEntry.objects.count()
    client.force_login(outsider)
    for method, url in console_urls:
        getattr(client, method)(url, {"confirmed": "1", "reason": "x", "size": "7b"})
    assert AuditEntry.objects.count() == before


def test_reviewers_see_every_page(reviewer_client, console_urls):
    for method, url in console_urls:
        if method == "get":
            assert reviewer_client.get(url).status_code == 200, url


def test_the_nav_links_the_console_for_reviewers_only(client, reviewer, outsider):
    client.force_login(outsider)
    assert b'href="/review/"' not in client.get("/models/").content
    client.force_login(reviewer)
    assert b'href="/review/"' in client.get("/models/").content


def test_a_deactivated_reviewer_is_refused(client, reviewer):
    reviewer.is_active = False
    reviewer.save()
    client.force_login(reviewer)
    # A deactivated account has no session: Django treats it as anonymous.
    assert client.get(reverse("review:queue")).status_code in (403, 404)


def test_the_cast_still_gets_access_when_its_shared_text_is_flagged(researcher):
    from accounts.tests.factories import UserFactory
    from review.tests.helpers import flag_codes

    # Every cast member applies with the same use-case text, so the second one is flagged
    # as a duplicate and demo is not approved automatically; grant_access approves it.
    user = UserFactory()
    (grant,) = grant_access(user, "demo")
    assert "duplicate_use_case" in flag_codes(grant.application)
