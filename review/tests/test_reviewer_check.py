"""One answer to "is this user a reviewer?" (`accounts.selectors.user_is_reviewer`), asked of
the database once per request, and the nav's console link from a context processor."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.context_processors import nav
from accounts.models import User
from accounts.selectors import user_is_reviewer, user_list_reviewers
from accounts.tests.factories import UserFactory
from review.tests.helpers import submit

pytestmark = pytest.mark.django_db


def _group_queries(queries) -> list[str]:
    """The membership lookups: "is this user in the group?" (not the queue's list of them)."""
    return [q["sql"] for q in queries if q["sql"].startswith('SELECT 1 AS "a" FROM "auth_group"')]


def test_it_asks_the_database_once_per_user_object(reviewer, staff_not_reviewer):
    for user, expected in ((reviewer, True), (staff_not_reviewer, False)):
        fresh = User.objects.get(pk=user.pk)
        with CaptureQueriesContext(connection) as queries:
            assert [user_is_reviewer(fresh) for _ in range(3)] == [expected] * 3
        assert len(queries) == 1


def test_it_needs_no_query_for_people_who_cannot_be_reviewers(
    outsider, group_member_not_staff, django_assert_num_queries
):
    superuser = UserFactory(email="root@portal.example.org", is_staff=True, is_superuser=True)
    with django_assert_num_queries(0):
        assert not user_is_reviewer(None)
        assert not user_is_reviewer(AnonymousUser())
        assert not user_is_reviewer(outsider)
        assert not user_is_reviewer(group_member_not_staff)
        assert user_is_reviewer(superuser)


def test_the_flags_are_read_fresh_though_membership_is_memoised(reviewer):
    assert user_is_reviewer(reviewer)
    reviewer.is_active = False
    assert not user_is_reviewer(reviewer)
    reviewer.is_active, reviewer.is_staff = True, False
    assert not user_is_reviewer(reviewer)


def test_a_console_page_asks_about_the_group_once(reviewer_client):
    # The access check, the nav link and the services the view calls all ask.
    application = submit(None, "7b")
    for url in (reverse("review:queue"), reverse("review:detail", args=[application.pk])):
        with CaptureQueriesContext(connection) as queries:
            response = reviewer_client.get(url)
        assert response.status_code == 200
        assert b'href="/review/"' in response.content
        assert len(_group_queries(queries)) == 1, url
    with CaptureQueriesContext(connection) as queries:
        response = reviewer_client.post(reverse("review:claim", args=[application.pk]))
    assert response.status_code == 302
    assert len(_group_queries(queries)) == 1


def test_the_nav_comes_from_a_context_processor_not_the_review_tags():
    assert (
        "accounts.context_processors.nav" in settings.TEMPLATES[0]["OPTIONS"]["context_processors"]
    )
    base = Path(settings.TEMPLATES[0]["DIRS"][0]) / "base.html"
    assert "review_tags" not in base.read_text()


def test_the_context_processor_asks_only_when_the_page_shows_the_link(
    reviewer, django_assert_num_queries
):
    request = RequestFactory().get("/")
    request.user = User.objects.get(pk=reviewer.pk)
    with django_assert_num_queries(0):
        context = nav(request)
    with django_assert_num_queries(1):
        assert context["user_is_reviewer"]() is True
        assert context["user_is_reviewer"]() is True
    anonymous = RequestFactory().get("/")
    anonymous.user = AnonymousUser()
    assert nav(anonymous)["user_is_reviewer"]() is False


def test_the_nav_links_the_console_for_every_reviewer_only(
    client, reviewer, staff_not_reviewer, group_member_not_staff
):
    superuser = UserFactory(email="root@portal.example.org", is_staff=True, is_superuser=True)
    for user, shown in (
        (reviewer, True),
        (superuser, True),
        (staff_not_reviewer, False),
        (group_member_not_staff, False),
    ):
        client.force_login(user)
        assert (b'href="/review/"' in client.get("/models/").content) is shown, user.email
    client.logout()
    assert b'href="/review/"' not in client.get("/models/").content


def test_the_list_of_reviewers_follows_the_same_rule(
    reviewer, second_reviewer, staff_not_reviewer, group_member_not_staff, outsider
):
    superuser = UserFactory(email="root@portal.example.org", is_staff=True, is_superuser=True)
    gone = UserFactory(email="gone@portal.example.org", is_staff=True, is_active=False)
    gone.groups.add(*reviewer.groups.all())
    everyone = [reviewer, second_reviewer, staff_not_reviewer, group_member_not_staff, outsider]
    expected = sorted(u.email for u in [*everyone, superuser, gone] if user_is_reviewer(u))
    assert [u.email for u in user_list_reviewers()] == expected
    assert set(expected) == {superuser.email, reviewer.email, second_reviewer.email}
