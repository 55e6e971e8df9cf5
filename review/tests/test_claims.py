"""Claims keep two reviewers off one application; they are released or taken over with a note."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import AuditEntry, SizeOutcome
from catalog.models import ModelVariant
from core.errors import Conflict, InvalidInput
from review import services
from review.models import Claim, InternalNote
from review.tests.helpers import submit

pytestmark = pytest.mark.django_db


def v(slug):
    return ModelVariant.objects.get(slug=slug)


def test_a_claimed_application_cannot_be_claimed_by_a_second_reviewer(reviewer, second_reviewer):
    application = submit()
    services.claim_take(application=application, reviewer=reviewer)
    with pytest.raises(Conflict, match="is working on this application"):
        services.claim_take(application=application, reviewer=second_reviewer)
    assert Claim.objects.get(application=application).reviewer == reviewer


def test_the_claim_holder_alone_decides(reviewer, second_reviewer):
    application = submit(None, "7b")
    services.claim_take(application=application, reviewer=reviewer)
    with pytest.raises(Conflict):
        services.review_approve(
            application=application, reviewer=second_reviewer, variants=[v("7b")]
        )
    with pytest.raises(Conflict):
        services.review_reject(application=application, reviewer=second_reviewer, reason="No.")
    with pytest.raises(Conflict):
        services.review_return(application=application, reviewer=second_reviewer, message="Fix.")
    assert application.decisions.get().outcome == SizeOutcome.PENDING


def test_acting_on_an_unclaimed_application_claims_it(reviewer):
    application = submit(None, "7b", "13b")
    services.review_approve(application=application, reviewer=reviewer, variants=[v("7b")])
    assert Claim.objects.get(application=application).reviewer == reviewer


def test_the_claim_ends_when_the_application_leaves_review(reviewer):
    application = submit(None, "7b")
    services.claim_take(application=application, reviewer=reviewer)
    services.review_approve(application=application, reviewer=reviewer, variants=[v("7b")])
    assert not Claim.objects.filter(application=application).exists()


def test_after_a_first_approval_the_claim_is_left_for_a_second_reviewer(reviewer, second_reviewer):
    application = submit(None, "33b")
    services.review_approve(application=application, reviewer=reviewer, variants=[v("33b")])
    assert application.decisions.get().outcome == SizeOutcome.AWAITING_SECOND
    assert not Claim.objects.filter(application=application).exists()
    services.review_approve(application=application, reviewer=second_reviewer, variants=[v("33b")])
    assert application.decisions.get().outcome == SizeOutcome.APPROVED


def test_release_is_for_the_holder_only(reviewer, second_reviewer):
    application = submit()
    services.claim_take(application=application, reviewer=reviewer)
    with pytest.raises(Conflict):
        services.claim_release(application=application, reviewer=second_reviewer)
    services.claim_release(application=application, reviewer=reviewer)
    assert not Claim.objects.exists()
    assert AuditEntry.objects.filter(action="review.released", actor=reviewer).exists()


def test_taking_over_needs_a_note_that_is_kept(reviewer, second_reviewer):
    application = submit()
    services.claim_take(application=application, reviewer=reviewer)
    with pytest.raises(InvalidInput):
        services.claim_take_over(application=application, reviewer=second_reviewer, note=" ")
    services.claim_take_over(
        application=application, reviewer=second_reviewer, note="Rita is on leave."
    )
    assert Claim.objects.get(application=application).reviewer == second_reviewer
    note = InternalNote.objects.get(application=application)
    assert note.author == second_reviewer and "Rita is on leave." in note.text
    entry = AuditEntry.objects.get(action="review.taken_over")
    assert entry.actor == second_reviewer and entry.data["from"] == reviewer.email


def test_claim_views(client, reviewer, second_reviewer):
    application = submit()
    kw = {"application_id": application.pk}
    client.force_login(reviewer)
    assert client.post(reverse("review:claim", kwargs=kw)).status_code == 302
    client.force_login(second_reviewer)
    response = client.post(reverse("review:claim", kwargs=kw))
    assert response.status_code == 409
    assert b"is working on this application" in response.content
    page = client.get(reverse("review:detail", kwargs=kw)).content.decode()
    assert "Take over" in page and "Approve…" not in page

    # Taking over is confirmed first.
    url = reverse("review:take_over", kwargs=kw)
    response = client.post(url, {"note": "Back from leave; I know this lab."})
    assert response.status_code == 200 and b"Confirm" in response.content
    assert Claim.objects.get(application=application).reviewer == reviewer
    response = client.post(url, {"note": "Back from leave; I know this lab.", "confirmed": "1"})
    assert response.status_code == 302
    assert Claim.objects.get(application=application).reviewer == second_reviewer
    assert client.post(reverse("review:release", kwargs=kw)).status_code == 302
    assert not Claim.objects.exists()
