"""The queue's filters and search, its age marker, and a query count that does not grow
with the page size or with the events, flags and notes of an application."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts import services as accounts_services
from accounts.models import Application
from accounts.tests.factories import UserFactory
from review import services
from review.tests.helpers import submit, unique_use_case

pytestmark = pytest.mark.django_db


def ids(response) -> list[int]:
    return [row.application.pk for row in response.context["rows"]]


def age(application, days: float):
    moment = timezone.now() - timedelta(days=days)
    Application.objects.filter(pk=application.pk).update(
        submitted_at=moment, last_submitted_at=moment
    )


def test_the_queue_holds_submitted_and_returned_applications_oldest_first(
    reviewer_client, reviewer
):
    newer, older, returned = submit(), submit(), submit()
    age(newer, 1)
    age(older, 3)
    age(returned, 2)
    accounts_services.application_return(application=returned, reviewer=reviewer, message="Fix.")
    decided = submit(None, "demo")  # approved automatically: not in the queue
    draft = submit(submit=False)
    response = reviewer_client.get(reverse("review:queue"))
    assert ids(response) == [older.pk, returned.pk, newer.pk]
    assert decided.pk not in ids(response) and draft.pk not in ids(response)
    newest = reviewer_client.get(reverse("review:queue"), {"order": "newest"})
    assert ids(newest) == [newer.pk, returned.pk, older.pk]
    assert ids(reviewer_client.get(reverse("review:queue"), {"state": "returned"})) == [returned.pk]


def test_filters(reviewer_client, reviewer, settings):
    settings.REVIEW_RESTRICTED_COUNTRIES = ["KP"]
    lab = submit(None, "13b", organization_type="industry_lab", country="DE")
    flagged = submit(None, "7b", country="KP")
    mine = submit(None, "7b")
    services.claim_take(application=mine, reviewer=reviewer)
    waiting = submit(None, "33b")
    services.review_approve(
        application=waiting, reviewer=reviewer, variants=list(waiting.requested_variants.all())
    )

    def get(**params):
        return ids(reviewer_client.get(reverse("review:queue"), params))

    assert get(organization_type="industry_lab") == [lab.pk]
    assert get(country="DE") == [lab.pk]
    assert get(size="13b") == [lab.pk]
    assert get(flag="restricted_country") == [flagged.pk]
    assert get(flag="any") == [flagged.pk]
    assert flagged.pk not in get(flag="none")
    assert get(assigned="me") == [mine.pk]
    assert get(assigned=str(reviewer.pk)) == [mine.pk]
    assert mine.pk not in get(assigned="none")
    assert get(state="awaiting_second") == [waiting.pk]


def test_invalid_filters_are_shown_and_ignored(reviewer_client):
    application = submit()
    response = reviewer_client.get(reverse("review:queue"), {"flag": "nonsense", "size": "7b"})
    assert response.status_code == 200
    assert ids(response) == [application.pk]
    assert b"Select a valid choice" in response.content


def test_search_over_name_email_affiliation_and_use_case(reviewer_client):
    grace = submit(
        UserFactory(email="grace@navy.example.mil"),
        full_name="Grace Hopper",
        affiliation="Naval Research Laboratory",
        web_page="",
    )
    other = submit(use_case=unique_use_case() + " We also study compilers for COBOL.")

    def search(q):
        return ids(reviewer_client.get(reverse("review:queue"), {"q": q}))

    assert search("hopper") == [grace.pk]
    assert search("navy.example") == [grace.pk]
    assert search("naval laboratory") == [grace.pk]
    assert search("cobol") == [other.pk]
    assert search("hopper cobol") == []


def test_age_filter_and_overdue_marker(reviewer_client, settings):
    settings.REVIEW_SLA_DAYS = 5
    fresh, late = submit(), submit()
    age(late, 6)
    response = reviewer_client.get(reverse("review:queue"))
    rows = {row.application.pk: row for row in response.context["rows"]}
    assert rows[late.pk].overdue and not rows[fresh.pk].overdue
    assert response.content.decode().count("overdue-marker") == 1
    assert ids(reviewer_client.get(reverse("review:queue"), {"age": "overdue"})) == [late.pk]
    assert ids(reviewer_client.get(reverse("review:queue"), {"age": "lt1"})) == [fresh.pk]


def test_filters_stay_in_the_pagination_links(reviewer_client):
    for _ in range(26):
        submit(None, "13b")
    response = reviewer_client.get(reverse("review:queue"), {"size": "13b", "q": "project"})
    assert len(response.context["rows"]) == 25
    assert "size=13b&amp;q=project&amp;page=2" in response.content.decode()
    second = reviewer_client.get(
        reverse("review:queue"), {"size": "13b", "q": "project", "page": 2}
    )
    assert len(second.context["rows"]) == 1


def _count(client, url, params=None) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url, params or {}).status_code == 200
    return len(queries)


def _busy(application, reviewer, notes: int = 3):
    """More events, notes and flags on one application."""
    for i in range(notes):
        services.note_add(application=application, author=reviewer, text=f"note {i}")
    accounts_services.application_return(application=application, reviewer=reviewer, message="x")
    accounts_services.application_save_draft(
        application=application, user=application.user, data={"country": "KP"}
    )
    accounts_services.application_resubmit(
        application=application, user=application.user, ip="203.0.113.1"
    )


def test_the_queue_runs_the_same_queries_for_two_rows_or_many(reviewer_client, reviewer, settings):
    settings.REVIEW_RESTRICTED_COUNTRIES = ["KP"]
    url = reverse("review:queue")
    for _ in range(2):
        submit(None, "7b")
    few = _count(reviewer_client, url)
    for _ in range(10):
        application = submit(None, "7b", "13b", "65b", ip="203.0.113.1")
        services.claim_take(application=application, reviewer=reviewer)
        _busy(application, reviewer, notes=1)
    many = _count(reviewer_client, url)
    assert len(reviewer_client.get(url).context["rows"]) == 12
    assert few == many
    filtered = _count(reviewer_client, url, {"flag": "any", "size": "7b", "q": "project"})
    assert filtered == few


def test_the_detail_page_runs_the_same_queries_however_long_the_file(
    reviewer_client, reviewer, settings
):
    settings.REVIEW_RESTRICTED_COUNTRIES = ["KP"]
    quiet = submit(None, "7b")
    busy = submit(None, "7b", "13b", "33b", ip="203.0.113.1")
    submit(None, "7b", ip="203.0.113.1")
    _busy(busy, reviewer, notes=5)
    services.claim_take(application=busy, reviewer=reviewer)
    assert busy.events.count() >= quiet.events.count() + 2
    assert busy.review_flags.count() >= 2
    quiet_count = _count(reviewer_client, reverse("review:detail", args=[quiet.pk]))
    busy_count = _count(reviewer_client, reverse("review:detail", args=[busy.pk]))
    assert quiet_count == busy_count


def test_the_detail_page_shows_the_whole_file(reviewer_client, reviewer, researcher):
    earlier = submit(researcher, "13b")
    accounts_services.application_reject(application=earlier, reviewer=reviewer, reason="Later.")
    current = submit(researcher, "65b", email="x")
    services.note_add(application=current, author=reviewer, text="Looked at the lab page.")
    page = reviewer_client.get(reverse("review:detail", args=[current.pk])).content.decode()
    for text in (
        current.full_name,
        current.affiliation,
        "Intended research use",
        current.use_case[:40],
        "Looked at the lab page.",
        f"#{earlier.pk}",  # earlier application and its outcome
        "Later.",
        "Rejected recently",  # the flag
        "accepted",  # license status
        "LLaMA 7B",  # the researcher's grants
        "Application received.",  # timeline
    ):
        assert text in page, text
